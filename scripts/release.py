"""The released model: what ``mahtnet predict`` and ``mahtnet serve`` use without ``--model``.

``build`` takes the MAHT-Net of one finished ISBI experiment (coarse network, shape prior,
refiner), exports both networks to ONNX, copies them and the shape prior into
``src/mahtnet/release/`` (so the released pipeline runs on onnxruntime without PyTorch),
scores the shipped files through ``mahtnet predict``'s own code path on Test1 and Test2
(official ground truth and mean of both doctors; ``--pixel-spacing`` 0.1 mm, the ISBI
spacing) and writes the model card ``card.json`` beside them. ``check`` scores the shipped
files again and compares every figure and checksum with the card.

    python scripts/release.py build --profile isbi-mean      # train (the profile, seed 42), then build
    python scripts/release.py build --rev isbi-mean-s42      # rebuild from a finished experiment
    python scripts/release.py check                          # the card against the shipped files

Both read the ISBI data at ``--data-root`` (default ``../shared/datasets/isbi2015``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mahtnet.data.images import read_xray
from mahtnet.data.isbi import ground_truth, list_split
from mahtnet.data.preprocess import split_key
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.io import write_json
from mahtnet.metrics import gross_errors, radial_errors_mm, summarize
from mahtnet.models.card import sha256
from mahtnet.predict.result import predict_xrays
from mahtnet.release import CARD, FILES, READER, RELEASE_DIR

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("Test1Data", "Test2Data")
ISBI_SPACING_MM = 0.1
TOLERANCE_MM = 1e-3  # floating-point kernels differ between CPUs; a figure further off is a mismatch
SOURCES = {  # shipped file <- the experiment's output
    "maht_net.onnx": "data/models/stage3.pt",
    "shape_prior.npz": "data/models/shape_prior.npz",
    "refiner.onnx": "data/models/refine_maht_net.pt",
}


def fetch(rev: str, build: Path) -> dict[str, Path]:
    """The experiment's model files, copied out of the DVC cache into ``build``."""
    import dvc.api

    build.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in SOURCES.items():
        path = build / Path(src).name
        with dvc.api.open(src, repo=str(REPO), rev=rev, mode="rb") as f, open(path, "wb") as g:
            shutil.copyfileobj(f, g)
        out[name] = path
    return out


def score(release: Path, data_root: Path) -> dict[str, dict]:
    """The shipped pipeline (ONNX coarse network, shape prior, refiner) on each test split,
    through ``mahtnet predict``'s code: scores against the official ground truth and the mean."""
    spec = ReaderSpec(**{field: release / name for field, name in READER.items()}, device="cpu", threads=2)
    reader = load_reader(spec)  # the files one by one: at build time the card is not written yet
    out = {}
    for split in SPLITS:
        samples = list_split(data_root, split, "mean", "isbi2015")
        t0, pred = time.perf_counter(), []
        for s in samples:
            p = predict_xrays(reader, [read_xray(s.image_path)], ISBI_SPACING_MM)[0]
            pred.append(p.landmarks)
        pred, spacing = np.stack(pred), np.full(len(samples), ISBI_SPACING_MM)
        block = {"images": len(samples), "seconds_per_image": (time.perf_counter() - t0) / len(samples)}
        for gt, points in (
            ("official", [s.official for s in samples]),
            ("mean", [ground_truth(s.senior, s.junior, "mean") for s in samples]),
        ):
            errors = radial_errors_mm(pred, np.stack(points), spacing)
            block[gt] = summarize(errors, (2.0, 2.5, 3.0, 4.0)) | gross_errors(errors)
            block[gt]["n_over_15mm"] = int((errors > 15.0).sum())
        out[split_key(split)] = block
        print(
            f"{split}: official {block['official']['mre_mm']:.3f} mm, mean {block['mean']['mre_mm']:.3f} mm"
        )
    return out


def experiment_record(rev: str) -> dict:
    """What the card says of the training run: its profile settings, seed, validation scores."""
    import dvc.api

    params = yaml.safe_load(dvc.api.read("params.yaml", repo=str(REPO), rev=rev))
    metrics = json.loads(dvc.api.read("metrics/maht_net.json", repo=str(REPO), rev=rev))
    return {
        "experiment": rev,
        "seed": params["seed"],
        "training_labels": params["data"]["gt"],
        "input": f"{params['preprocess']['height']}x{params['preprocess']['width']}",
        "encoder": params["model"]["encoder"],
        "epochs": [params[s]["epochs"] for s in ("stage1", "stage2", "stage3")],
        "validation": {gt: metrics["val"][gt]["mre_mm"] for gt in ("official", "mean")},
        "pipeline_scores": {
            k: {gt: metrics[k][gt]["mre_mm"] for gt in ("official", "mean")}
            for k in ("test1", "test2")
            if k in metrics
        },
    }


def train(profile: str, seed: int) -> str:
    """Run the profile's MAHT-Net as a DVC experiment (up to its evaluation); its name."""
    import subprocess

    name = f"release-{profile}-s{seed}"
    cmd = [sys.executable, "scripts/run_profile.py", profile, "-n", name, "-S", f"seed={seed}"]
    subprocess.run([*cmd, "--temp", "--target", "evaluate@maht_net"], check=True)
    return name


def build(rev: str, data_root: Path) -> None:
    from mahtnet.deploy.export import export_onnx, export_refiner_onnx

    build_dir = Path("data/release_build")  # relative: the ONNX metadata records this path
    files = fetch(rev, build_dir)
    RELEASE_DIR.mkdir(parents=True, exist_ok=True)
    export_onnx(files["maht_net.onnx"], RELEASE_DIR / "maht_net.onnx")
    export_refiner_onnx(files["refiner.onnx"], RELEASE_DIR / "refiner.onnx")
    shutil.copyfile(files["shape_prior.npz"], RELEASE_DIR / "shape_prior.npz")
    card = {
        "name": "MAHT-Net, ISBI 2015 release",
        "intended_use": (
            "research on cephalometric landmark detection; not a medical device, not for diagnosis. "
            "Trained on 150 lateral cephalograms of one hospital (ISBI 2015): expect larger errors on "
            "other scanners and populations, and check every landmark (mahtnet serve's review page)."
        ),
        "data_terms": (
            "ISBI 2015 challenge data (Wang et al., Medical Image Analysis 31, 2016), released by the "
            "organisers for research use; cite the paper when reporting results."
        ),
        "pipeline": (
            "ONNX coarse network + shape-consistent decoding + ONNX refiner (onnxruntime, no PyTorch); "
            "the last two need the pixel spacing (DICOM, or --pixel-spacing)"
        ),
        "training": experiment_record(rev),
        "reader": READER,  # the recipe: ReaderSpec.release() reads it
        "files": {
            name: {"sha256": sha256(RELEASE_DIR / name), "bytes": (RELEASE_DIR / name).stat().st_size}
            for name in FILES
        },
        "scores": score(RELEASE_DIR, data_root),
        "scored_with": f"scripts/release.py (mahtnet predict's code, --pixel-spacing {ISBI_SPACING_MM})",
    }
    print(
        "next: python scripts/adaptation_study.py predict && python scripts/adaptation_study.py card "
        "(the new model's prior spread of corrections, which mahtnet adapt reads from the card)"
    )
    write_json(CARD, card)
    total = sum(f["bytes"] for f in card["files"].values()) / 2**20
    print(f"released {', '.join(FILES)} ({total:.1f} MiB) and {CARD}")


def check(data_root: Path) -> int:
    """0 when every checksum and figure of the card holds for the shipped files."""
    card = json.loads(CARD.read_text())
    problems = [
        f"{name}: sha256 differs from the card" for name in FILES
        if sha256(RELEASE_DIR / name) != card["files"][name]["sha256"]
    ]  # fmt: skip
    now = score(RELEASE_DIR, data_root)
    for split, block in card["scores"].items():
        for gt in ("official", "mean"):
            for key, value in block[gt].items():
                if abs(now[split][gt][key] - value) > (TOLERANCE_MM if key.endswith("mm") else 0.01):
                    problems.append(f"{split}.{gt}.{key}: card {value}, shipped files {now[split][gt][key]}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    print("the card holds for the shipped files" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="the release from a finished ISBI experiment")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--rev", help="the DVC experiment (or commit) whose MAHT-Net is released")
    source.add_argument("--profile", help="train this profile first (profiles.yaml), then release it")
    b.add_argument("--seed", type=int, default=42, help="with --profile")
    c = sub.add_parser("check", help="the card against the shipped files")
    for p in (b, c):
        p.add_argument("--data-root", type=Path, default=Path("../shared/datasets/isbi2015"))
    args = parser.parse_args()
    args.data_root = args.data_root.resolve()
    os.chdir(REPO)  # the build folder and the paths recorded in the ONNX metadata are relative to it
    if args.command == "build":
        build(args.rev or train(args.profile, args.seed), args.data_root)
    else:
        sys.exit(check(args.data_root))


if __name__ == "__main__":
    main()
