"""The released model: what ``mahtnet predict`` and ``mahtnet serve`` use without ``--model``.

``build`` takes the MAHT-Net of one finished ISBI experiment (coarse network, shape prior,
refiner) and, for a points ensemble, the coarse networks and refiners of further experiments of
the same recipe and validation split (``--members``: the release ships seeds 42, 43 and 44,
``docs/ensemble_choice.md``), exports the networks to ONNX, copies them and the shape prior into
``src/mahtnet/release/`` (so the released pipeline runs on onnxruntime without PyTorch),
scores the shipped files through ``mahtnet predict``'s own code path on Test1 and Test2
(official ground truth and mean of both doctors; ``--pixel-spacing`` 0.1 mm, the ISBI
spacing) and writes the model card ``card.json`` beside them. ``check`` scores the shipped
files again and compares every figure and checksum with the card.

    python scripts/release.py build --profile isbi-mean      # train (the profile, seed 42), then build
    python scripts/release.py build --rev isbi-mean-s42 \
        --members isbi-mean-s43-split42 isbi-mean-s44-split42   # rebuild from finished experiments
    python scripts/release.py build --shipped \
        --members isbi-mean-s43-split42 isbi-mean-s44-split42   # keep the shipped first network
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
from mahtnet.decoding.recipe import Member, ReaderSpec, load_reader
from mahtnet.io import write_json
from mahtnet.metrics import gross_errors, radial_errors_mm, summarize
from mahtnet.models.card import sha256
from mahtnet.predict.result import predict_xrays
from mahtnet.release import CARD, FILES, MEMBER_SEEDS, MEMBERS, READER, RELEASE_DIR

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("Test1Data", "Test2Data")
ISBI_SPACING_MM = 0.1
TOLERANCE_MM = 1e-3  # floating-point kernels differ between CPUs; a figure further off is a mismatch
SOURCES = {  # shipped file <- the experiment's output
    "maht_net.onnx": "data/models/stage3.pt",
    "shape_prior.npz": "data/models/shape_prior.npz",
    "refiner.onnx": "data/models/refine_maht_net.pt",
}


def fetch(rev: str, build: Path, names=tuple(SOURCES)) -> dict[str, Path]:
    """The experiment's model files (``names`` of :data:`SOURCES`), copied out of the DVC cache
    into ``build``."""
    import dvc.api

    build.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        src = SOURCES[name]
        path = build / Path(src).name
        with dvc.api.open(src, repo=str(REPO), rev=rev, mode="rb") as f, open(path, "wb") as g:
            shutil.copyfileobj(f, g)
        out[name] = path
    return out


def score(release: Path, data_root: Path) -> dict[str, dict]:
    """The shipped pipeline (ONNX coarse network, shape prior, refiner) on each test split,
    through ``mahtnet predict``'s code: scores against the official ground truth and the mean."""
    files = {field: release / name for field, name in READER.items() if field != "members"}
    members = tuple(Member(**{k: release / v for k, v in m.items()}) for m in MEMBERS)
    spec = ReaderSpec(**files, members=members, device="cpu", threads=2)
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
    """What the card says of a training run: its profile settings, seed, validation scores."""
    import dvc.api

    params = yaml.safe_load(dvc.api.read("params.yaml", repo=str(REPO), rev=rev))
    metrics = json.loads(dvc.api.read("metrics/maht_net.json", repo=str(REPO), rev=rev))
    return {
        "experiment": rev,
        "seed": params["seed"],
        "split_seed": params["seed"]
        if params["data"].get("split_seed") is None
        else params["data"]["split_seed"],
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


def build(rev: str | None, members: list[str], data_root: Path) -> None:
    """The release from experiment ``rev`` and the further ``members``; ``rev`` None: keep the
    shipped first network, shape prior and training record (its experiment may be gone)."""
    from mahtnet.deploy.export import export_onnx, export_refiner_onnx

    if len(members) != len(MEMBERS):
        sys.exit(f"--members: the release ships {len(MEMBERS)} further members (seeds {MEMBER_SEEDS})")
    build_dir = Path("data/release_build")  # relative: the ONNX metadata records this path
    if rev is None:
        first = json.loads(CARD.read_text())["training"]
        first.setdefault("split_seed", first["seed"])  # recorded before split_seed existed: the seed's split
    else:
        files = fetch(rev, build_dir)
        RELEASE_DIR.mkdir(parents=True, exist_ok=True)
        export_onnx(files["maht_net.onnx"], RELEASE_DIR / "maht_net.onnx")
        export_refiner_onnx(files["refiner.onnx"], RELEASE_DIR / "refiner.onnx")
        shutil.copyfile(files["shape_prior.npz"], RELEASE_DIR / "shape_prior.npz")
        first = experiment_record(rev)
    first_split = first["split_seed"]
    records = []
    for member, shipped, seed in zip(members, MEMBERS, MEMBER_SEEDS, strict=True):
        record = experiment_record(member)
        if record["seed"] != seed or record["split_seed"] != first_split:
            sys.exit(
                f"--members {member}: seed {record['seed']}, split seed {record['split_seed']}; the release "
                f"ships seed {seed} on the first network's validation split (split seed {first_split})"
            )
        got = fetch(member, build_dir / member, ("maht_net.onnx", "refiner.onnx"))
        export_onnx(got["maht_net.onnx"], RELEASE_DIR / shipped["model"])
        export_refiner_onnx(got["refiner.onnx"], RELEASE_DIR / shipped["refiner"])
        records.append(record)
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
            f"a points ensemble of {1 + len(MEMBERS)} seeds, each an ONNX coarse network + shape-consistent "
            "decoding + an ONNX refiner, the landmarks averaged (onnxruntime, no PyTorch); the last two "
            "steps need the pixel spacing (DICOM, or --pixel-spacing); chosen on the validation images "
            "over one network and the heatmap average (docs/ensemble_choice.md); --single reads the first "
            "only"
        ),
        "training": first,
        "members": records,
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
    source.add_argument(
        "--shipped", action="store_true", help="keep the shipped first network; only (re)build the members"
    )
    b.add_argument("--seed", type=int, default=42, help="with --profile")
    b.add_argument(
        "--members",
        nargs="+",
        required=True,
        help="the experiments of the ensemble's further members (seeds 43, 44; the --rev's validation split)",
    )
    c = sub.add_parser("check", help="the card against the shipped files")
    for p in (b, c):
        p.add_argument("--data-root", type=Path, default=Path("../shared/datasets/isbi2015"))
    args = parser.parse_args()
    args.data_root = args.data_root.resolve()
    os.chdir(REPO)  # the build folder and the paths recorded in the ONNX metadata are relative to it
    if args.command == "build":
        rev = None if args.shipped else args.rev or train(args.profile, args.seed)
        build(rev, args.members, args.data_root)
    else:
        sys.exit(check(args.data_root))


if __name__ == "__main__":
    main()
