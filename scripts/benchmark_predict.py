"""End-to-end prediction benchmark: one X-ray file -> landmarks JSON, as ``mahtnet predict``
does it (read and check the file, letterbox, network, arg-max decoding, JSON document), for
each model on PyTorch and on onnxruntime, side by side in one run. Writes the section
``end_to_end_predict`` of ``metrics/benchmark.json`` (the rest of the file is kept).

Also measured: a fresh ``python -m mahtnet predict`` process on the ONNX model (imports, model
load, one image, outputs), and whether that path imported PyTorch.

Usage (ISBI-sized checkpoints, e.g. from ``python scripts/run_profile.py isbi-senior``)::

    python scripts/benchmark_predict.py --image ../shared/datasets/isbi2015/RawImage/Test1Data/151.bmp \\
        --model maht_net=data/models/stage3.pt --model unet=data/models/baseline.pt [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from mahtnet.data.images import read_xray  # noqa: E402
from mahtnet.export import export_onnx, median_ms  # noqa: E402
from mahtnet.io import write_json, write_text  # noqa: E402
from mahtnet.predict import load_backend, predict_xrays, to_json  # noqa: E402


def end_to_end_ms(model: Path, image: Path, threads: int, repeats: int, out: Path) -> float:
    """Median ms of file -> JSON for one image (the model loaded once, two warm-up runs)."""
    backend = load_backend(model, "cpu", threads)

    def once() -> None:
        p = predict_xrays(backend, [read_xray(image)])[0]
        write_text(out, json.dumps(to_json(p, backend.card), indent=2))

    return median_ms(once, repeats)


def fresh_process(onnx: Path, image: Path, out: Path) -> dict:
    """Wall time of a new ``mahtnet predict`` process on the ONNX model, and whether it imported torch."""
    code = (
        "import sys, time; t = time.perf_counter(); from mahtnet.cli import main; "
        f"rc = main(['predict', {str(image)!r}, '--model', {str(onnx)!r}, "
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--model", required=True, action="append", help="NAME=CHECKPOINT (.pt)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "benchmark.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xray = read_xray(args.image)
    section = {
        "image": str(args.image),
        "image_size": list(xray.pixels.shape[::-1]),
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "steps": "read + check file, letterbox, network, arg-max decoding, JSON document written",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for item in args.model:
            name, _, ckpt = item.partition("=")
            onnx = export_onnx(ckpt, tmp / f"{name}.onnx")
            row = {
                "checkpoint": ckpt,
                "pytorch_ms": end_to_end_ms(
                    Path(ckpt), args.image, args.threads, args.repeats, tmp / "p.json"
                ),
                "onnxruntime_ms": end_to_end_ms(onnx, args.image, args.threads, args.repeats, tmp / "o.json"),
                "onnx_fresh_process": fresh_process(onnx, args.image, tmp / "fresh"),
            }
            row["onnx_vs_pytorch"] = row["onnxruntime_ms"] / row["pytorch_ms"]
            section["models"][name] = row
            print(
                f"{name}: PyTorch {row['pytorch_ms']:.1f} ms, "
                f"onnxruntime {row['onnxruntime_ms']:.1f} ms per image"
            )
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["end_to_end_predict"] = section
    write_json(args.out, report)
    print(f"-> {args.out} (end_to_end_predict)")


if __name__ == "__main__":
    main()
