"""End-to-end prediction benchmark: one X-ray file -> landmarks JSON, as ``mahtnet predict``
does it (read and check the file, letterbox, network, decoding, JSON document), for each model
on PyTorch and on onnxruntime, side by side in one run: the arg-max path and, for a model given
a ``--refiner`` (and the ``--shape-prior``), the headline path (shape-consistent decoding +
refiner, at ``--pixel-spacing``). Writes the section ``end_to_end_predict`` of
``metrics/benchmark.json`` (the rest of the file is kept; paths relative to the repository).

``--release`` measures the shipped release instead (file -> JSON with the image verdict, beside
its first network alone, ``--single``, and that network's arg-max path): the section
``release_predict``.

Also measured: a fresh ``python -m mahtnet predict`` process on the ONNX files (imports, model
load, one image, outputs), and whether that path imported PyTorch.

Usage (ISBI-sized checkpoints, e.g. from ``python scripts/run_profile.py isbi-mean``)::

    mahtnet benchmark --image ../shared/datasets/isbi2015/RawImage/Test1Data/151.bmp \\
        --model maht_net=data/models/stage3.pt --model unet=data/models/baseline.pt \\
        --refiner maht_net=data/models/refine_maht_net.pt --shape-prior data/models/shape_prior.npz
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mahtnet.data.images import read_xray
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.deploy.export import export_onnx, export_refiner_onnx, median_ms
from mahtnet.hardware import cpu_name
from mahtnet.io import write_json, write_text
from mahtnet.paths import relative_to_repo, repo_root
from mahtnet.predict.result import predict_xrays, to_json


def file_to_json(reader, image: Path, out: Path, spacing_mm: float | None = None, trust=None):
    """One ``mahtnet predict`` of ``image`` through ``reader`` (with ``trust``: the verdict, flags
    and bounds), its JSON written to ``out``, as a call to time."""

    def once() -> None:
        p = predict_xrays(reader, [read_xray(image)], spacing_mm, trust)[0]
        write_text(out, json.dumps(to_json(p, reader.backend.card), indent=2))

    return once


def end_to_end_ms(spec: ReaderSpec, image: Path, repeats: int, out: Path) -> float:
    """Median ms of file -> JSON for one image through ``spec``'s reader (the files loaded once,
    two warm-up runs)."""
    return median_ms(file_to_json(load_reader(spec), image, out, spec.pixel_spacing_mm), repeats)


def release_section(image: Path, repeats: int, threads: int) -> dict:
    """The shipped pipeline (:mod:`mahtnet.release`: each member's ONNX coarse network,
    shape-consistent decoding and refiner, the points averaged, the image verdict, flags and
    bounds) file -> JSON as ``mahtnet predict`` runs it, beside its first network alone
    (``--single``) and that network's arg-max path in the same run (the ratios travel between
    machines and days better than milliseconds do)."""
    import dataclasses

    from mahtnet.decoding.trust import load_trust

    spec = ReaderSpec.release(threads=threads, pixel_spacing_mm=0.1)
    reader, trust = load_reader(spec), load_trust(spec)
    first = load_reader(dataclasses.replace(spec, members=()))
    coarse = load_reader(ReaderSpec(spec.model, device="cpu", threads=threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"

        verdict = predict_xrays(reader, [read_xray(image)], spec.pixel_spacing_mm, trust)[0].verdict
        shipped_ms = median_ms(file_to_json(reader, image, out, spec.pixel_spacing_mm, trust), repeats)
        single_ms = median_ms(file_to_json(first, image, out, spec.pixel_spacing_mm, trust), repeats)
        arg_max_ms = median_ms(file_to_json(coarse, image, out), repeats)
    return {
        "image": relative_to_repo(image),
        "verdict": verdict,
        "threads": threads,
        "repeats": repeats,
        "cpu": cpu_name(),
        "networks": 1 + len(spec.members),
        "steps": "read + check file, letterbox, per network: ONNX network, shape-consistent decoding, "
        "ONNX refiner; the points averaged; image verdict, flags and bounds, JSON document written",
        "shipped_ms": shipped_ms,
        "single_ms": single_ms,
        "arg_max_ms": arg_max_ms,
        "shipped_vs_arg_max": shipped_ms / arg_max_ms,
        "shipped_vs_single": shipped_ms / single_ms,
    }


def fresh_process(onnx: Path, image: Path, out: Path, headline: list[str] = ()) -> dict:
    """Wall time of a new ``mahtnet predict`` process on the ONNX files, and whether it imported torch."""
    code = (
        "import sys, time; t = time.perf_counter(); from mahtnet.cli import main; "
        f"rc = main(['predict', {str(image)!r}, '--model', {str(onnx)!r}, *{list(headline)!r}, "
        f"'--out', {str(out)!r}, '--no-overlay']); "
        "print(rc, 'torch' in sys.modules, time.perf_counter() - t)"
    )
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rc, torch_imported, in_process = result.stdout.split()[-3:]
    return {
        "process_wall_s": wall,
        "import_and_first_image_s": float(in_process),
        "imported_torch": torch_imported == "True",
        "exit_status": int(rc),
    }


def step(bar: tqdm, what: str, measure, *args):
    """``measure(*args)``, shown as ``what`` on the progress bar, which then moves one step."""
    bar.set_postfix_str(what)
    out = measure(*args)
    bar.update()
    return out


def headline(
    args: argparse.Namespace, tmp: Path, name: str, ckpt: str, onnx: Path, refiner: str, bar: tqdm
) -> dict:
    """The shape + refiner path of one model on PyTorch and on onnxruntime (both ONNX files)."""
    refiner_onnx = export_refiner_onnx(refiner, tmp / f"refine_{name}.onnx")

    def bench(model: Path, ref: Path, out: Path) -> float:
        spec = ReaderSpec(
            model,
            args.shape_prior,
            ref,
            pixel_spacing_mm=args.pixel_spacing,
            device="cpu",
            threads=args.threads,
        )
        return end_to_end_ms(spec, args.image, args.repeats, out)

    options = ["--shape-prior", str(args.shape_prior), "--refiner", str(refiner_onnx)]
    options += ["--pixel-spacing", str(args.pixel_spacing)]
    row = {
        "refiner": relative_to_repo(refiner),
        "headline_pytorch_ms": step(
            bar, f"{name} headline PyTorch", bench, Path(ckpt), Path(refiner), tmp / "hp.json"
        ),
        "headline_onnxruntime_ms": step(
            bar, f"{name} headline onnxruntime", bench, onnx, refiner_onnx, tmp / "ho.json"
        ),
        "headline_onnx_fresh_process": step(
            bar, f"{name} headline fresh process", fresh_process, onnx, args.image, tmp / "hfresh", options
        ),
    }
    tqdm.write(
        f"{name} shape + refiner: PyTorch {row['headline_pytorch_ms']:.1f} ms, "
        f"onnxruntime {row['headline_onnxruntime_ms']:.1f} ms per image"
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT (.pt)")
    parser.add_argument(
        "--release", action="store_true", help="the shipped release instead (section release_predict)"
    )
    parser.add_argument("--refiner", action="append", default=[], help="NAME=REFINER_CHECKPOINT (.pt)")
    parser.add_argument("--shape-prior", type=Path, help="shape_prior stage model (with --refiner)")
    parser.add_argument("--pixel-spacing", type=float, default=0.1, help="mm per px (ISBI: 0.1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=repo_root() / "metrics" / "benchmark.json")
    args = parser.parse_args(argv)
    if args.release:
        section = release_section(args.image, args.repeats, args.threads)
        report = json.loads(args.out.read_text()) if args.out.is_file() else {}
        write_json(args.out, report | {"release_predict": section})
        print(f"release: {section['shipped_ms']:.1f} ms per image (arg-max {section['arg_max_ms']:.1f} ms)")
        return
    if not args.model:
        parser.error("give --model NAME=CHECKPOINT (or --release)")
    torch.set_num_threads(args.threads)
    xray = read_xray(args.image)
    section = {
        "image": relative_to_repo(args.image),
        "image_size": list(xray.pixels.shape[::-1]),
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "steps": "read + check file, letterbox, network, decoding (arg-max; headline: shape-consistent "
        "+ refiner), JSON document written",
        "models": {},
    }
    refiners = dict(item.partition("=")[::2] for item in args.refiner)

    def arg_max(model: Path) -> ReaderSpec:  # no shape prior, no refiner, no pixel spacing
        return ReaderSpec(model, device="cpu", threads=args.threads)

    models = [item.partition("=")[::2] for item in args.model]
    steps = sum(3 + 3 * (name in refiners and args.shape_prior is not None) for name, _ in models)
    bar = tqdm(total=steps, desc="benchmark", unit="step", disable=None)
    with tempfile.TemporaryDirectory() as tmp, bar:
        tmp = Path(tmp)
        for name, ckpt in models:
            onnx, pytorch = export_onnx(ckpt, tmp / f"{name}.onnx"), arg_max(Path(ckpt))
            row = {
                "checkpoint": relative_to_repo(ckpt),
                "pytorch_ms": step(
                    bar, f"{name} PyTorch", end_to_end_ms, pytorch, args.image, args.repeats, tmp / "p.json"
                ),
                "onnxruntime_ms": step(
                    bar,
                    f"{name} onnxruntime",
                    end_to_end_ms,
                    arg_max(onnx),
                    args.image,
                    args.repeats,
                    tmp / "o.json",
                ),
                "onnx_fresh_process": step(
                    bar, f"{name} fresh process", fresh_process, onnx, args.image, tmp / "fresh"
                ),
            }
            row["onnx_vs_pytorch"] = row["onnxruntime_ms"] / row["pytorch_ms"]
            if name in refiners and args.shape_prior:
                row.update(headline(args, tmp, name, ckpt, onnx, refiners[name], bar))
            section["models"][name] = row
            tqdm.write(
                f"{name}: PyTorch {row['pytorch_ms']:.1f} ms, "
                f"onnxruntime {row['onnxruntime_ms']:.1f} ms per image"
            )
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["end_to_end_predict"] = section
    write_json(args.out, report)
    print(f"-> {args.out} (end_to_end_predict)")


if __name__ == "__main__":
    main()
