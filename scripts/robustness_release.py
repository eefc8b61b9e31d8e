"""Robustness of what ships (issue 43, item 4): the released pipeline (each network's ONNX coarse
network, shape-consistent decoding, refiner, the points averaged; :mod:`mahtnet.release`) on the
ISBI Test1 and Test2 images under the robustness stage's perturbations (``robustness`` in
``params.yaml``, the same functions: :func:`mahtnet.analysis.robustness.perturb`), each image
paired with its clean reading. Also counted: how many perturbed images the release's image verdict refuses
(``mahtnet predict`` would answer them with no landmarks); every image is read anyway (forced)
so that its error is measured.

    python scripts/robustness_release.py            # -> docs/robustness_release.json, .md
    python scripts/robustness_release.py --limit 5  # a quick look (5 images per set)

Errors against the mean of both doctors (the release's training labels) and the official
files; the landmarks move with a geometric perturbation, and a zoom changes the pixel spacing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from mahtnet.analysis.robustness import PERTURBATIONS, perturb
from mahtnet.analysis.stats import signed_rank_test
from mahtnet.data.images import read_xray
from mahtnet.data.isbi import ISBI_PIXEL_SPACING_MM
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.decoding.trust import load_trust, read_checked
from mahtnet.errors import run_cli
from mahtnet.io import write_json, write_text
from mahtnet.studies.reference import ground_truths

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"
SETS = {"test1": ("Test1Data", range(151, 301)), "test2": ("Test2Data", range(301, 401))}
GTS = ("mean", "official")
OUT = REPO / "docs/robustness_release"


def severities() -> tuple[dict[str, list[float]], int]:
    p = yaml.safe_load((REPO / "params.yaml").read_text())["robustness"]
    return {name: [float(v) for v in p[field]] for name, (field, _) in PERTURBATIONS.items()}, int(p["seed"])


def errors_mm(pred: np.ndarray, truth: np.ndarray, spacing: float) -> np.ndarray:
    return np.linalg.norm(pred - truth, axis=-1) * spacing


def run(limit: int | None) -> dict:
    spec = ReaderSpec.release(threads=2)
    reader, trust = load_reader(spec), load_trust(spec)

    def read(pixels, spacing):
        return reader.read_images([pixels], [spacing])

    levels, seed = severities()
    out = {
        "model": spec.describe()["name"],
        "pipeline": (
            f"{1 + len(spec.members)} networks, each ONNX coarse network + shape-consistent decoding "
            "+ refiner, the points averaged; onnxruntime, 2 threads"
            if spec.members
            else "ONNX coarse network + shape-consistent decoding + refiner, onnxruntime, 2 threads"
        ),
        "files_sha256": {k: v["sha256"] for k, v in spec.describe()["files"].items()},
        "severities": levels,
        "sets": {},
    }
    for s, (folder, ids_range) in SETS.items():
        ids = [f"{i:03d}" for i in ids_range][:limit]
        truths = ground_truths(ROOT, ids)
        images = [read_xray(ROOT / "RawImage" / folder / f"{i}.jpg").pixels for i in ids]
        k = truths["mean"].shape[1]
        clean = np.stack([read(im, ISBI_PIXEL_SPACING_MM).final[0] for im in tqdm(images, desc=f"{s} clean")])
        clean_err = {gt: errors_mm(clean, truths[gt], ISBI_PIXEL_SPACING_MM) for gt in GTS}
        block = {
            "images": len(ids),
            "clean": {gt: _figures(e) for gt, e in clean_err.items()},
            "perturbed": {},
        }
        for name, values in levels.items():
            for severity in values:
                rng = np.random.default_rng([seed, list(PERTURBATIONS).index(name), values.index(severity)])
                err = {gt: [] for gt in GTS}
                verdicts: dict[str, int] = {}
                for im, i in tqdm(
                    zip(images, range(len(ids)), strict=True),
                    desc=f"{s} {name} {severity:g}",
                    total=len(ids),
                    disable=None,
                    leave=False,
                ):
                    both = np.concatenate([truths[gt][i] for gt in GTS])  # (2K, 2): one transform for both
                    px, moved, spacing = perturb(name, severity, im, both, ISBI_PIXEL_SPACING_MM, rng)
                    c = read_checked(read, trust, px, spacing, force=True)
                    verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
                    for j, gt in enumerate(GTS):
                        err[gt].append(errors_mm(c.readout.final[0], moved[j * k : (j + 1) * k], spacing))
                row = {"verdicts": verdicts}
                for gt in GTS:
                    e = np.stack(err[gt])
                    d = e.mean(axis=1) - clean_err[gt].mean(axis=1)  # perturbed minus clean, per image
                    row[gt] = _figures(e) | {"mre_diff_mm": float(d.mean()), **signed_rank_test(d)}
                block["perturbed"][f"{name} {severity:g}"] = row
        out["sets"][s] = block
    return out


def _figures(e: np.ndarray) -> dict:
    return {
        "mre_mm": float(e.mean()),
        "sdr_2mm": float((e <= 2.0).mean() * 100),
        "n_over_10mm": int((e > 10.0).sum()),
        "max_mm": float(e.max()),
    }


def markdown(r: dict) -> str:
    lines = [
        "# Robustness of the released pipeline",
        "",
        f"Generated by `python scripts/robustness_release.py`. Model: {r['model']} ({r['pipeline']}). "
        "Each ISBI test image perturbed before reading (the robustness stage's perturbations and "
        "severities, `params.yaml` `robustness`), scored against the mean of both doctors and the "
        "official files, paired per image with its clean reading (perturbed minus clean, two-sided "
        "Wilcoxon p). *Refused*: images the release's verdict would refuse (`rotated`, "
        "`not_a_lateral_cephalogram`, `too_small`); they are read anyway here so their error counts.",
        "",
    ]
    for s, b in r["sets"].items():
        cm, co = b["clean"]["mean"], b["clean"]["official"]
        lines += [
            f"## {s.capitalize()} ({b['images']} images)",
            "",
            f"Clean: MRE {cm['mre_mm']:.3f} mm (mean GT), {co['mre_mm']:.3f} mm (official); "
            f"SDR 2 mm {cm['sdr_2mm']:.1f} / {co['sdr_2mm']:.1f} %.",
            "",
            "| perturbation | MRE, mean GT | change | p | SDR 2 mm, mean | MRE, official | change "
            "| > 10 mm | refused |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in b["perturbed"].items():
            m, o = row["mean"], row["official"]
            refused = sum(
                n
                for v, n in row["verdicts"].items()
                if v in ("rotated", "not_a_lateral_cephalogram", "too_small")
            )
            lines.append(
                f"| {name} | {m['mre_mm']:.3f} | {m['mre_diff_mm']:+.3f} | {m['p_value']:.2g} "
                f"| {m['sdr_2mm']:.1f} | {o['mre_mm']:.3f} | {o['mre_diff_mm']:+.3f} "
                f"| {m['n_over_10mm']} | {refused} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    parser.add_argument("--out", type=Path, default=OUT, help="output stem (.json and .md)")
    args = parser.parse_args()
    r = run(args.limit)
    write_json(args.out.with_suffix(".json"), r)
    write_text(args.out.with_suffix(".md"), markdown(r))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_cli(main)
