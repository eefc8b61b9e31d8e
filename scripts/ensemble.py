"""Ensembles of the recommended recipe's seeds (issue 42, item 4): single models against their
ensemble, through the one decoder, on the ISBI images.

    python scripts/ensemble.py members              # collect each seed's files -> data/ensemble/seed<N>/
    python scripts/ensemble.py read                 # every reader on validation + Test1 + Test2
                                                    #   -> docs/ensemble/readings.json
    python scripts/ensemble.py onnx                 # every member on onnxruntime vs the readings
                                                    #   -> docs/ensemble/onnx_parity.json
    python scripts/ensemble.py table                # -> docs/ensemble.json, docs/ensemble.md

**Members.** Seed 42 is the release (:mod:`mahtnet.release`, ONNX); the others are DVC
experiments of the ``isbi-mean`` profile run to ``evaluate@maht_net`` with another seed
(``python scripts/run_profile.py isbi-mean --queue --target evaluate@maht_net -S seed=43 -n
isbi-mean-s43-ens``): their coarse network, refiner and shape prior are read from the DVC cache
by the hashes in the experiment's ``dvc.lock``.

**Readers.** Each member alone (its own shape prior and refiner: the shipped pipeline), and two
ensembles: ``heatmaps`` (the members' coarse heatmaps and refiner patch maps averaged as
probabilities, :mod:`mahtnet.decoding.ensemble`, decoded once with the release's shape prior)
and ``points`` (the members' final landmarks averaged).

**What is compared, and on what.** A seed's validation images are carved from the training
images by that seed, so each member was trained on most of the others' validation images: an
ensemble has no held-out validation set here, and this study reports the test sets (read once,
scored against the mean of both doctors and the official files), paired per image against
each single member. Choosing to ship an ensemble needs members that share one validation split
(same split, other initialisation); it is not made from these figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from mahtnet.analysis.stats import mean_sd, paired_differences, signed_rank_test
from mahtnet.data.images import read_xray
from mahtnet.data.isbi import ISBI_PIXEL_SPACING_MM
from mahtnet.data.preprocess import split_train_val
from mahtnet.decoding.ensemble import EnsembleBackend, EnsembleRefiner
from mahtnet.decoding.reader import LandmarkReader
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.decoding.shape import ShapePrior
from mahtnet.errors import run_cli
from mahtnet.io import write_json, write_text
from mahtnet.metrics import radial_errors_mm
from mahtnet.studies.reference import figures, ground_truths

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"
WORK = REPO / "data/ensemble"
READINGS = REPO / "docs/ensemble/readings.json"
ONNX_PARITY = REPO / "docs/ensemble/onnx_parity.json"
SETS = {"test1": ("Test1Data", range(151, 301)), "test2": ("Test2Data", range(301, 401))}
TRAIN_IDS = [f"{i:03d}" for i in range(1, 151)]
SEEDS = (42, 43, 44)
EXPERIMENT = "isbi-mean-s{seed}-ens"
FILES = {  # member file -> (stage in dvc.lock, its output path)
    "model.pt": ("train_stage3", "data/models/stage3.pt"),
    "refiner.pt": ("train_refine@maht_net", "data/models/refine_maht_net.pt"),
    "shape_prior.npz": ("shape_prior", "data/models/shape_prior.npz"),
}
ENSEMBLES = ("heatmaps", "points")
GTS = ("mean", "official")


def val_ids(seed: int) -> list[str]:
    _, val = split_train_val(len(TRAIN_IDS), 0.1, seed)
    return [TRAIN_IDS[i] for i in val]


def image_path(image_id: str) -> Path:
    i = int(image_id)
    folder = "TrainingData" if i <= 150 else next(f for f, r in SETS.values() if i in r)
    return ROOT / "RawImage" / folder / f"{image_id}.jpg"


# ------------------------------------------------------------------------------------ members


def experiment_lock(name: str) -> dict:
    """The ``dvc.lock`` of the DVC experiment ``name`` (its git ref under ``refs/exps``)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    ref = next((r for r in refs if r.rsplit("/", 1)[-1] == name), None)
    if ref is None:
        raise FileNotFoundError(f"no DVC experiment named {name} (dvc exp list)")
    text = subprocess.run(
        ["git", "show", f"{ref}:dvc.lock"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return yaml.safe_load(text.stdout)


def cached(lock: dict, stage: str, path: str) -> Path:
    out = next(o for o in lock["stages"][stage]["outs"] if o["path"] == path)
    md5 = out["md5"]
    file = REPO / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    if not file.is_file():
        raise FileNotFoundError(f"{path} of stage {stage} (md5 {md5}) is not in the DVC cache")
    return file


def collect(seed: int) -> Path:
    """Copy seed ``seed``'s experiment files out of the DVC cache into ``data/ensemble/seed<N>``."""
    lock = experiment_lock(EXPERIMENT.format(seed=seed))
    folder = WORK / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (stage, path) in FILES.items():
        shutil.copyfile(cached(lock, stage, path), folder / name)
    return folder


def member_spec(seed: int) -> ReaderSpec:
    if seed == 42:
        return ReaderSpec.release(threads=2)
    folder = WORK / f"seed{seed}"
    return ReaderSpec(
        folder / "model.pt", folder / "shape_prior.npz", folder / "refiner.pt", threads=2, device="cpu"
    )


# ------------------------------------------------------------------------------------ reading


def heatmap_ensemble(members: list[LandmarkReader]) -> LandmarkReader:
    """The members' coarse networks and refiners averaged, decoded once with the release's shape
    prior and the first member's (the release's) number of candidates."""
    return LandmarkReader(
        EnsembleBackend([r.backend for r in members]),
        ShapePrior.load(ReaderSpec.release().shape_prior),
        EnsembleRefiner([r.refiner for r in members]),
        candidates=members[0].candidates,
    )


def readers() -> dict[str, LandmarkReader]:
    singles = {f"seed{s}": load_reader(member_spec(s)) for s in SEEDS}
    return singles | {"heatmaps": heatmap_ensemble(list(singles.values()))}


def onnx_parity(n_images: int = 20) -> dict:
    """The heatmap ensemble with every member on onnxruntime (seeds 43 and 44 exported here, seed
    42 the release's ONNX files) against the recorded readings (seed 42 ONNX, seeds 43/44
    PyTorch) on the first ``n_images`` of Test1: the largest and mean landmark difference (mm)."""
    from mahtnet.deploy.export import export_onnx, export_refiner_onnx

    onnx = {}
    for s in SEEDS[1:]:
        folder = WORK / f"seed{s}"
        model = export_onnx(folder / "model.pt", folder / "model.onnx")
        refiner = export_refiner_onnx(folder / "refiner.pt", folder / "refiner.onnx")
        onnx[s] = ReaderSpec(model, folder / "shape_prior.npz", refiner, threads=2, device="cpu")
    members = [load_reader(ReaderSpec.release(threads=2))] + [load_reader(spec) for spec in onnx.values()]
    reader = heatmap_ensemble(members)
    recorded = json.loads(READINGS.read_text())["images"]
    ids = [f"{i:03d}" for i in SETS["test1"][1]][:n_images]
    diff = []
    for image_id in tqdm(ids, desc="onnx ensemble", unit="image", disable=None):
        pixels = read_xray(image_path(image_id)).pixels
        points = reader.read_images([pixels], [ISBI_PIXEL_SPACING_MM]).final[0]
        diff.append(np.linalg.norm(points - np.array(recorded[image_id]["heatmaps"]), axis=-1))
    d = np.stack(diff) * ISBI_PIXEL_SPACING_MM
    return {
        "images": len(ids),
        "backends": "every member on onnxruntime vs the recorded readings (seeds 43, 44 on PyTorch)",
        "max_mm": float(d.max()),
        "mean_mm": float(d.mean()),
        "landmarks_over_0.1mm": int((d > 0.1).sum()),
    }


def read_with(rs: dict[str, LandmarkReader], ids: list[str], out: Path, desc: str = "ensemble") -> dict:
    """Every reader of ``rs`` on the ISBI images ``ids``: final landmarks (original px) -> ``out``."""
    doc = {"spacing_mm": ISBI_PIXEL_SPACING_MM, "readers": list(rs), "images": {}}
    for image_id in tqdm(ids, desc=desc, unit="image", disable=None):
        pixels = read_xray(image_path(image_id)).pixels
        doc["images"][image_id] = {
            name: np.round(r.read_images([pixels], [ISBI_PIXEL_SPACING_MM]).final[0], 3).tolist()
            for name, r in rs.items()
        }
    write_json(out, doc)
    return doc


def read(out: Path) -> None:
    ids = sorted({i for s in SEEDS for i in val_ids(s)}) + [f"{i:03d}" for _, r in SETS.values() for i in r]
    read_with(readers(), ids, out)


# ------------------------------------------------------------------------------------ table


def predictions(doc: dict, ids: list[str]) -> dict[str, np.ndarray]:
    """``(N, K, 2)`` original px per reader, with the points ensemble (the singles' mean)."""
    pred = {name: np.array([doc["images"][i][name] for i in ids]) for name in doc["readers"]}
    pred["points"] = np.mean([pred[f"seed{s}"] for s in SEEDS], axis=0)
    return pred


def members_spread_mm(members: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``(N, K)``: the members' ``(S, N, K, 2)`` mean distance from their mean landmark (mm)."""
    return np.linalg.norm(members - members.mean(axis=0), axis=-1).mean(axis=0) * spacing_mm


def spread_mm(doc: dict, ids: list[str]) -> np.ndarray:
    """``(N, K)``: the seeds' spread (:func:`members_spread_mm`) on the images ``ids``."""
    members = np.stack([np.array([doc["images"][i][f"seed{s}"] for i in ids]) for s in SEEDS])
    return members_spread_mm(members, doc["spacing_mm"])


def flag_figures(flags: np.ndarray, err: np.ndarray) -> dict:
    """The share of landmarks ``flags`` marks and how many errors above 4 and 10 mm it holds."""
    return {
        "flag_rate": float(flags.mean()),
        **{
            f"over_{t}mm": {"n": int((err > t).sum()), "flagged": int(((err > t) & flags).sum())}
            for t in (4, 10)
        },
    }


def catch(spread: np.ndarray, err: np.ndarray, rate: float = 0.05) -> dict:
    """How many errors above 4 and 10 mm the ``rate`` largest spreads hold (a ranking figure:
    the threshold is the test set's own quantile, so it says what the signal could do, not
    what a fitted flag does)."""
    return flag_figures(spread >= np.quantile(spread, 1.0 - rate), err)


def scores(doc: dict, ids: list[str]) -> tuple[dict, dict, dict]:
    """Every reader of ``doc`` (and the points ensemble) on the images ``ids`` against both
    ground truths, the singles' mean +- SD, and each ensemble minus each single paired per
    image; also the errors ``{gt: {reader: (N, K)}}`` and predictions it was made from."""
    gts, pred = ground_truths(ROOT, ids), predictions(doc, ids)
    err = {gt: {k: radial_errors_mm(p, gts[gt], doc["spacing_mm"]) for k, p in pred.items()} for gt in GTS}
    block = {"images": len(ids), "scores": {}, "paired": {}, "single_mean": {}}
    for gt in GTS:
        block["scores"][gt] = {k: figures(e) for k, e in err[gt].items()}
        singles = [err[gt][f"seed{s}"] for s in SEEDS]
        block["single_mean"][gt] = {
            "mre_mm": mean_sd([float(e.mean()) for e in singles]),
            "sdr_2mm": mean_sd([float((e <= 2.0).mean() * 100) for e in singles]),
        }
        for ens in ENSEMBLES:
            tests = {}
            for s, e in zip(SEEDS, singles, strict=True):
                d = paired_differences(e, err[gt][ens])  # ensemble minus single, per image
                tests[f"seed{s}"] = {"mre_diff": float(d.mean()), **signed_rank_test(d)}
            block["paired"][f"{ens}.{gt}"] = tests
    return block, err, pred


def table(doc: dict) -> dict:
    out = {"readers": [f"seed{s}" for s in SEEDS] + list(ENSEMBLES), "validation": {}, "sets": {}}
    for s in SEEDS:  # each member on its own held-out images
        ids = val_ids(s)
        gts = ground_truths(ROOT, ids)
        pred = predictions(doc, ids)[f"seed{s}"]
        out["validation"][f"seed{s}"] = {
            gt: figures(radial_errors_mm(pred, gts[gt], doc["spacing_mm"])) for gt in GTS
        }
    for name, (_, r) in SETS.items():
        ids = [f"{i:03d}" for i in r]
        block, err, _ = scores(doc, ids)
        block["spread_flags"] = catch(spread_mm(doc, ids), err["mean"]["heatmaps"])
        out["sets"][name] = block
    return out


def markdown(t: dict) -> str:
    lines = [
        "# Ensembles of the recommended recipe's seeds",
        "",
        "Generated by `python scripts/ensemble.py table` from `docs/ensemble/readings.json` "
        "(`scripts/ensemble.py read`). Members: the `isbi-mean` recipe, seeds 42 (the release), 43 "
        "and 44, each the shipped pipeline (coarse network, shape-consistent decoding, refiner; "
        "onnxruntime / PyTorch on the CPU). Ensembles: **heatmaps**, the members' coarse heatmaps and "
        "refiner maps averaged as probabilities and decoded once (`mahtnet.decoding.ensemble`); "
        "**points**, the members' final landmarks averaged. MRE in mm, SDR 2 mm in %.",
        "",
    ]
    for name, block in t["sets"].items():
        lines += [f"## {name.capitalize()} ({block['images']} images)", ""]
        lines += [
            "| reader | MRE, mean GT | SDR 2 mm, mean | MRE, official GT | SDR 2 mm, official | max, mean |"
        ]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for r in t["readers"]:
            m, o = block["scores"]["mean"][r], block["scores"]["official"][r]
            lines.append(
                f"| {r} | {m['mre_mm']:.3f} | {m['sdr_2mm']:.1f} | {o['mre_mm']:.3f} | {o['sdr_2mm']:.1f} "
                f"| {m['max_mm']:.1f} |"
            )
        sm, so = block["single_mean"]["mean"], block["single_mean"]["official"]
        lines.append(
            f"| single, mean +- SD of 3 | {sm['mre_mm']['mean']:.3f} +- {sm['mre_mm']['sd']:.3f} "
            f"| {sm['sdr_2mm']['mean']:.1f} | {so['mre_mm']['mean']:.3f} +- {so['mre_mm']['sd']:.3f} "
            f"| {so['sdr_2mm']['mean']:.1f} | |"
        )
        lines += [
            "",
            "Ensemble minus each single model, per-image MRE (mm; negative: the ensemble closer), "
            "two-sided Wilcoxon p:",
            "",
        ]
        lines += ["| ensemble, GT | " + " | ".join(f"vs seed {s}" for s in SEEDS) + " |"]
        lines += ["| --- |" + " --- |" * len(SEEDS)]
        for key, tests in block["paired"].items():
            cells = [f"{v['mre_diff']:+.3f} (p {v['p_value']:.2g})" for v in tests.values()]
            lines.append(f"| {key.replace('.', ', ')} | " + " | ".join(cells) + " |")
        f = block["spread_flags"]
        lines += [
            "",
            f"Members' disagreement as a flag (the {f['flag_rate']:.1%} of landmarks where the three seeds' "
            "final points spread most, a ranking on this set, not a fitted threshold): "
            f"{f['over_4mm']['flagged']} of {f['over_4mm']['n']} errors above 4 mm and "
            f"{f['over_10mm']['flagged']} of {f['over_10mm']['n']} above 10 mm of the heatmap ensemble "
            "(mean GT).",
            "",
        ]
    lines += ["## Validation (each member on its own held-out images)", ""]
    lines += ["| member | MRE, mean GT | MRE, official GT |", "| --- | --- | --- |"]
    for r, v in t["validation"].items():
        lines.append(f"| {r} | {v['mean']['mre_mm']:.3f} | {v['official']['mre_mm']:.3f} |")
    lines += [
        "",
        "No ensemble row: each member was trained on most of the others' validation images (a seed "
        "draws its own split), so no held-out set exists for the ensemble, and shipping it is not "
        "decided from the test sets above. `data.split_seed` (params.yaml) now gives members one "
        "split: members trained with `-S data.split_seed=42` can be chosen on validation.",
        "",
    ]
    if "onnx_parity" in t:
        o = t["onnx_parity"]
        lines += [
            "## On onnxruntime",
            "",
            f"The heatmap ensemble with every member on onnxruntime (`python scripts/ensemble.py onnx`), "
            f"against the readings above (seeds 43 and 44 read on PyTorch), first {o['images']} Test1 "
            f"images: largest landmark difference {o['max_mm']:.4f} mm, mean {o['mean_mm']:.5f} mm "
            f"({o['landmarks_over_0.1mm']} landmarks differ by more than 0.1 mm).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("members", "read", "onnx", "table"))
    args = parser.parse_args()
    if args.step == "members":
        for s in SEEDS[1:]:
            print(f"seed {s}: {collect(s).relative_to(REPO)}")
    elif args.step == "read":
        read(READINGS)
    elif args.step == "onnx":
        parity = onnx_parity()
        write_json(ONNX_PARITY, parity)
        print(parity)
    else:
        t = table(json.loads(READINGS.read_text()))
        if ONNX_PARITY.is_file():
            t["onnx_parity"] = json.loads(ONNX_PARITY.read_text())
        write_json(REPO / "docs/ensemble.json", t)
        write_text(REPO / "docs/ensemble.md", markdown(t))
        print((REPO / "docs/ensemble.md").read_text())


if __name__ == "__main__":
    run_cli(main)
