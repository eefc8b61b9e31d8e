"""The adaptation study: how much a clinic's corrections are worth (issue "Learn a clinic's
conventions from its corrections").

From the base model's zero-shot predictions of the ISBI images (``docs/adaptation/zero_shot.json``,
written by ``scripts/adaptation_study.py predict``), per *target* (a test set and the doctor whose
conventions play the clinic's), per number of corrected images ``k`` and per random draw: adapt
on ``k`` images of the target (:mod:`mahtnet.decoding.conventions`), score the remaining images of
the same target, and pair that with the zero-shot predictions on the same remaining images.
Mean +- SD over draws. Few-shot figures: never mixed with zero-shot tables.

The default method is chosen on one target only (:data:`SELECTION_TARGET`, Test1 against the
junior doctor) and then reported on every other target; ``auto`` picks per draw by
leave-one-out inside the ``k`` images, reading nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mahtnet import metrics
from mahtnet.analysis.stats import mean_sd
from mahtnet.data.isbi import ISBI_PIXEL_SPACING_MM, load_challenge, load_doctors
from mahtnet.data.preprocess import split_train_val
from mahtnet.decoding.conventions import METHODS, choose, fit
from mahtnet.io import atomic_write

TARGETS = {  # name -> (set, ground truth)
    "test2-official": ("test2", "official"),
    "test2-junior": ("test2", "junior"),
    "test2-senior": ("test2", "senior"),
    "test1-junior": ("test1", "junior"),
    "test1-senior": ("test1", "senior"),
}
SELECTION_TARGET = "test1-junior"
KS = (1, 3, 5, 10, 20)
STUDY_METHODS = (*METHODS, "auto")
SET_IDS = {"train": range(1, 151), "test1": range(151, 301), "test2": range(301, 401)}


@dataclasses.dataclass(frozen=True)
class Target:
    ids: list[str]
    predicted: np.ndarray  # (N, K, 2) original px, zero-shot
    truth: np.ndarray  # (N, K, 2) original px, the clinic's (doctor's) landmarks


def truths(root: Path, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``(N, K, 2)`` per ground truth: official, mean, senior, junior."""
    senior, junior = (np.stack(a) for a in zip(*(load_doctors(root, i) for i in ids), strict=True))
    official = np.stack([load_challenge(root, i) for i in ids])
    return {"official": official, "mean": (senior + junior) / 2.0, "senior": senior, "junior": junior}


def target(zero_shot: dict, root: Path, name: str) -> Target:
    s, gt = TARGETS[name]
    ids = [f"{i:03d}" for i in SET_IDS[s]]
    pred = np.array([zero_shot["predictions"][i] for i in ids], dtype=np.float64)
    return Target(ids, pred, truths(root, ids)[gt])


def prior_variance(
    zero_shot: dict, root: Path, seed: int, val_fraction: float = 0.1, gt: str = "mean"
) -> np.ndarray:
    """How far one correction scatters when there is no convention, per landmark and axis (mm^2):
    the base model's residual variance around its mean residual on its own validation images (held
    out of its training: the split of ``seed``) against its training labels ``gt``, plus one
    annotator's scatter (:func:`annotator_variance`)."""
    _, val = split_train_val(len(SET_IDS["train"]), val_fraction, seed)
    ids = [f"{i:03d}" for i in np.asarray(SET_IDS["train"])[val]]
    pred = np.array([zero_shot["predictions"][i] for i in ids], dtype=np.float64)
    r = (truths(root, ids)[gt] - pred) * ISBI_PIXEL_SPACING_MM
    model = ((r - r.mean(axis=0)) ** 2).sum(axis=(0, 2)) / (2 * (len(ids) - 1))
    return model + annotator_variance(root)


def annotator_variance(root: Path) -> np.ndarray:
    """One annotator's per-landmark, per-axis scatter (mm^2) on the training images: half the
    variance of the two doctors' difference around its mean (two independent annotators of equal
    noise). A clinic's corrections carry its annotator's own noise too."""
    ids = [f"{i:03d}" for i in SET_IDS["train"]]
    t = truths(root, ids)
    diff = (t["senior"] - t["junior"]) * ISBI_PIXEL_SPACING_MM
    return ((diff - diff.mean(axis=0)) ** 2).sum(axis=(0, 2)) / (2 * (len(ids) - 1)) / 2.0


def _figures(points: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    e = metrics.radial_errors_mm(points, truth, ISBI_PIXEL_SPACING_MM)
    return {
        "mre_mm": metrics.mre(e),
        "sdr_2mm": metrics.sdr(e, 2.0),
        "sdr_4mm": metrics.sdr(e, 4.0),
        "n_over_10mm": int((e > 10.0).sum()),
    }


def adapt_points(method: str, t: Target, train: np.ndarray, test: np.ndarray, prior: np.ndarray):
    """The test images' points after adapting on the train images, and the method used."""
    spacing = ISBI_PIXEL_SPACING_MM
    used = method
    if method == "auto":
        used, _ = choose(t.predicted[train], t.truth[train], spacing, prior)
    conv = fit(used, t.predicted[train], t.truth[train], spacing, prior)
    return conv.apply(t.predicted[test], spacing), used


def run_target(
    t: Target, prior: np.ndarray, ks: Sequence[int], draws: int, seed: int, methods: Sequence[str]
) -> dict:
    """Per k and method: mean +- SD over draws of the adapted figures, the zero-shot figures on
    the same images, and their difference; which method ``auto`` chose how often."""
    rng = np.random.default_rng(seed)
    n = len(t.ids)
    out = {}
    for k in ks:
        draws_idx = [rng.permutation(n) for _ in range(draws)]
        per = {m: [] for m in methods}
        zero = []
        chosen: dict[str, int] = {}
        for perm in draws_idx:
            train, test = perm[:k], perm[k:]
            zero.append(_figures(t.predicted[test], t.truth[test]))
            for m in methods:
                pts, used = adapt_points(m, t, train, test, prior)
                per[m].append(_figures(pts, t.truth[test]))
                if m == "auto":
                    chosen[used] = chosen.get(used, 0) + 1
        row = {"zero_shot": _summary(zero), "methods": {}}
        for m in methods:
            s = _summary(per[m])
            s["mre_diff"] = mean_sd([a["mre_mm"] - z["mre_mm"] for a, z in zip(per[m], zero, strict=True)])
            s["worse_than_zero_shot"] = int(
                sum(a["mre_mm"] > z["mre_mm"] for a, z in zip(per[m], zero, strict=True))
            )
            row["methods"][m] = s
        if chosen:
            row["auto_chose"] = dict(sorted(chosen.items()))
        out[str(k)] = row
    return out


def oracle_offset(t: Target) -> dict[str, float]:
    """The best any per-landmark offset can do on this target: the mean correction of ALL its
    images applied to the same images (in-sample, so optimistic), beside zero-shot."""
    r = t.truth - t.predicted
    return {
        "zero_shot_mre_mm": _figures(t.predicted, t.truth)["mre_mm"],
        **_figures(t.predicted + r.mean(axis=0), t.truth),
    }


def _summary(rows: list[dict]) -> dict:
    return {key: mean_sd([r[key] for r in rows]) for key in rows[0]}


def select_default(results: dict, target_name: str = SELECTION_TARGET) -> dict:
    """The method with the lowest MRE averaged over every k on the selection target only."""
    per_k = results[target_name]
    methods = list(next(iter(per_k.values()))["methods"])
    score = {
        m: float(np.mean([row["methods"][m]["mre_mm"]["mean"] for row in per_k.values()])) for m in methods
    }
    best = min(score, key=score.get)
    return {"method": best, "on": target_name, "mean_mre_over_k": score}


def study(
    zero_shot: dict, root: Path, base_seed: int, ks=KS, draws: int = 50, seed: int = 0, methods=STUDY_METHODS
) -> dict:
    """Every target, k and method; ``base_seed``: the seed of the base model's run (its
    validation split gives the prior spread)."""
    prior = prior_variance(zero_shot, root, base_seed)
    results, oracle = {}, {}
    for i, name in enumerate(TARGETS):
        t = target(zero_shot, root, name)
        results[name] = run_target(t, prior, ks, draws, seed + i, methods)
        oracle[name] = oracle_offset(t)
    return {
        "base_model": zero_shot["model"],
        "draws": draws,
        "seed": seed,
        "ks": list(ks),
        "prior_variance_mm2": [round(float(v), 6) for v in prior],
        "prior_from": (
            f"the base model's validation images (seed {base_seed} split) against the mean of both "
            "doctors, plus one doctor's scatter around that mean on the training images"
        ),
        "default": select_default(results),
        "oracle_offset": oracle,
        "targets": results,
    }


def _fmt(v: dict, digits: int = 3) -> str:
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"


def pilot_section(pilot: dict | None) -> list[str]:
    """The fine-tuning pilot (``scripts/adapt_finetune_pilot.py``,
    ``docs/adaptation/finetune_pilot.json``) beside the offsets on the same draws."""
    if pilot is None:
        return []
    chosen = pilot["chosen"]["setting"]
    lines = [
        "## Fine-tuning the refiner (pilot)",
        "",
        f"`python scripts/adapt_finetune_pilot.py` (every figure: `docs/adaptation/finetune_pilot.json`): "
        f"the released refiner fine-tuned on the k images' patches with augmentation, setting `{chosen}` "
        f"chosen on {pilot['chosen']['on']} only ({pilot['chosen']['by']}); the study's own draws, "
        f"only the first few per target and k. Scope: {pilot['scope']}. It ran on the release of its day, "
        f"one network (`maht_net.onnx` sha256 {pilot['base_model']['sha256'][:12]}..., seed 42: today the "
        "first of the release's three): its zero-shot, mean and shrunk columns are that network's, not the "
        "ensemble's above.",
        "",
        "| target | k | draws | zero-shot | mean | shrunk | fine-tuned | fine-tuned + shrunk "
        "| fine-tuned - shrunk | seconds per adaptation |",
        "|" + " --- |" * 10,
    ]
    for target_name, per_k in pilot["table"][chosen].items():
        for k, t in sorted(per_k.items(), key=lambda kv: int(kv[0])):
            cells = [target_name, k, str(len(t["draws"]))]
            cells += [_fmt(t[m]) for m in ("zero_shot", "mean", "shrunk", "finetuned", "finetuned+shrunk")]
            cells += [_fmt(t["finetuned_minus_shrunk"]), _fmt(t["finetune_seconds"], 0)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(doc: dict, pilot: dict | None = None) -> str:
    default = doc["default"]["method"]
    lines = [
        "# Adaptation study: a clinic's corrections, few-shot",
        "",
        "Generated by `python scripts/adaptation_study.py run` (`docs/adaptation.json` holds every "
        "figure). **Few-shot figures**: the base model adapted on k corrected images of the target "
        "and scored on the target's other images; never compare them with zero-shot tables. The "
        f"base model: `{doc['base_model']['name']}` (sha256 {doc['base_model']['sha256'][:12]}...). "
        f"{doc['draws']} random draws per target and k; mean ± SD over draws; zero-shot on the same "
        "remaining images beside each.",
        "",
        "A target is a test set scored against one doctor's landmarks (that doctor plays the clinic "
        "whose conventions the model must learn); `test2-official` is the challenge's own ground "
        "truth. Methods (`mahtnet.decoding.conventions`): `mean` per-landmark mean correction in image "
        "axes (the plain baseline); `shrunk` that mean shrunk towards zero by its spread; "
        "`frame-*` the same in the sella-nasion frame of each image; `auto` picks per draw by "
        "leave-one-out inside the k images (k >= 3; `shrunk` below).",
        "",
        f"**Default chosen on {doc['default']['on']} only:** `{default}` (mean MRE over k: "
        + ", ".join(f"{m} {v:.3f}" for m, v in doc["default"]["mean_mre_over_k"].items())
        + " mm).",
        "",
        "**The bound of the offset methods**: the mean correction of *all* images of a target "
        "applied to the same images (in-sample, optimistic). A per-landmark mean offset, however "
        "many images it learns from, does not get below it; beating it needs a correction that "
        "depends on the image:",
        "",
        "| target | zero-shot | oracle offset | SDR 2 mm (%) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {o['zero_shot_mre_mm']:.3f} | {o['mre_mm']:.3f} | {o['sdr_2mm']:.1f} |"
            for name, o in doc["oracle_offset"].items()
        ),
        "",
        "## MRE (mm) against k",
        "",
    ]
    for name, per_k in doc["targets"].items():
        methods = list(next(iter(per_k.values()))["methods"])
        lines += [f"### {name}", "", "| k | zero-shot | " + " | ".join(methods) + " |"]
        lines.append("|" + " --- |" * (len(methods) + 2))
        for k, row in per_k.items():
            cells = [k, _fmt(row["zero_shot"]["mre_mm"])]
            cells += [_fmt(row["methods"][m]["mre_mm"]) for m in methods]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"`{default}` in detail (SDR and gross errors of the remaining images, mean over draws):",
            "",
        ]
        lines.append(
            "| k | MRE diff vs zero-shot (mm) | draws worse than zero-shot | SDR 2 mm (%) "
            "| zero-shot SDR 2 mm | SDR 4 mm (%) | > 10 mm | zero-shot > 10 mm |"
        )
        lines.append("|" + " --- |" * 8)
        for k, row in per_k.items():
            m, z = row["methods"][default], row["zero_shot"]
            cells = [
                k,
                _fmt(m["mre_diff"]),
                f"{m['worse_than_zero_shot']} / {doc['draws']}",
                _fmt(m["sdr_2mm"], 1),
                _fmt(z["sdr_2mm"], 1),
                _fmt(m["sdr_4mm"], 1),
                _fmt(m["n_over_10mm"], 1),
                _fmt(z["n_over_10mm"], 1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join([*lines, *pilot_section(pilot)])


README_START = "<!-- adaptation table: written by scripts/adaptation_study.py run -->"
README_END = "<!-- adaptation table end -->"


def readme_table(doc: dict) -> list[str]:
    """The README's short few-shot table: per target, zero-shot and the default method at each
    k (mean over draws), the plain mean offset at k = 10 and the offset methods' bound."""
    default = doc["default"]["method"]
    ks = [str(k) for k in doc["ks"]]
    head = ["target (few-shot)", "zero-shot", *(f"k = {k}" for k in ks), "plain mean, k = 10", "bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, per_k in doc["targets"].items():
        cells = [name, f"{per_k[ks[0]]['zero_shot']['mre_mm']['mean']:.3f}"]
        cells += [f"{per_k[k]['methods'][default]['mre_mm']['mean']:.3f}" for k in ks]
        cells.append(f"{per_k['10']['methods']['mean']['mre_mm']['mean']:.3f}" if "10" in per_k else "-")
        cells.append(f"{doc['oracle_offset'][name]['mre_mm']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def update_readme(readme: Path, lines: list[str]) -> None:
    """Replace what lies between the README's adaptation markers with ``lines``."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no '{README_START}' ... '{README_END}' block to rewrite")
    new = text[:start] + "\n".join([README_START, "", *lines, "", README_END]) + text[end + len(README_END) :]
    atomic_write(readme, lambda tmp: tmp.write_text(new))
