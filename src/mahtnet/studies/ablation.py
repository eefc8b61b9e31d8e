"""The ablation study of MAHT-Net: its variants' settings, and the table, forest plot and
resolution section built from the finished runs' snapshots (``docs/ablation/runs/``).

The variants are the model registry's (:mod:`mahtnet.models.variants`, tag ``ablation``), the
loss recipes and input sizes below. Each snapshot holds one run's scores and per-image MREs on
validation, Test1 and Test2 against the official ground truth and the mean of both doctors.
A variant is compared with the reference (the full model) per seed, paired per image, and over
seeds; a difference is reported only when it exceeds the reference's seed-to-seed SD, its 95 %
interval excludes zero and the pooled Wilcoxon p < 0.05. ``scripts/ablations.py`` queues the runs,
snapshots them and writes ``docs/ablation.md`` with this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.stats

from mahtnet.analysis.stats import bootstrap_ci, mean_sd
from mahtnet.hardware import cpu_name
from mahtnet.models.variants import MAHT_NET_STAGES, VARIANTS, get_variant, variants_tagged
from mahtnet.studies import snapshots
from mahtnet.studies.snapshots import GTS, SETS, errors, paired_over_seeds, scores

VARIANT_READ = "shape"  # the coarse network with shape decoding
REFERENCE = "maht_net"
UNRECORDED = "not recorded (snapshots before 2026-12-03)"


def _loss(**weights: float) -> dict[str, object]:
    """The same loss weights in all three MAHT-Net stages (other terms 0)."""
    terms = ("softmax_ce", "mse", "l1_coords", "wing", "adaptive_wing", "ssim", "focal")
    full = {t: weights.get(t, 0.0) for t in terms}
    return {f"{s}.loss_weights.{t}": v for s in MAHT_NET_STAGES for t, v in full.items()}


LOSSES: dict[str, dict[str, object]] = {  # loss recipes (not model variants); loss.output stays logits
    "loss-mse": _loss(mse=1.0),
    "loss-softmax-wing": _loss(softmax_ce=1.0, wing=0.1),
    "loss-softmax-l1": _loss(softmax_ce=1.0, l1_coords=0.1),
    "loss-adaptive-wing": _loss(adaptive_wing=1.0),
    "loss-softmax-ssim": _loss(softmax_ce=1.0, ssim=1.0),
    "loss-focal": _loss(focal=1.0),
    "loss-uncertainty": {**_loss(softmax_ce=1.0, wing=0.1),
                         **{f"{s}.uncertainty_weighting": True for s in MAHT_NET_STAGES}},
    "sigma-curriculum": {"heatmap.sigma_start": 6.0, "heatmap.anneal_fraction": 0.5},
}  # fmt: skip


INPUT_SIZES: dict[str, dict[str, object]] = {  # the resolution hypothesis: the coarse input only
    "input-512x416": {"preprocess.height": 512, "preprocess.width": 416},
}
RESOLUTION_READ = "refined"  # the resolution study's pipelines train the full refiner


def settings_of(name: str) -> dict[str, object]:
    if name in LOSSES:
        return LOSSES[name]
    if name in INPUT_SIZES:
        return INPUT_SIZES[name]
    return get_variant(name).settings


def ablation_names() -> list[str]:
    return [v.name for v in variants_tagged("ablation") if v.name != REFERENCE]


def record(rev: str, variant: str, repo: Path) -> dict:
    """The run's snapshot (:func:`mahtnet.studies.snapshots.record` of MAHT-Net) with its
    variant, parameters and training minutes, and the CPU of this checkout (a queued run ends in
    the checkout that queued it, so it ran here)."""
    out = snapshots.record(rev, REFERENCE, repo)
    read = snapshots.reader(rev, repo)
    stages = [json.loads(read(f"metrics/train_{s}.json")) for s in MAHT_NET_STAGES]
    return out | {
        "variant": variant,
        "parameters": int(stages[-1]["parameters"]),
        "training_minutes": sum(s["wall_time_s"] for s in stages) / 60.0,
        "settings": settings_of(variant) if variant != REFERENCE else {},
        "host": cpu_name(),
    }


def load(folder: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for p in sorted(folder.glob("*.json")):
        r = json.loads(p.read_text())
        runs.setdefault(r["variant"], {})[r["seed"]] = r
    if REFERENCE not in runs:
        raise FileNotFoundError(f"no reference snapshot ({REFERENCE}-seed*.json) in {folder}")
    order = [REFERENCE, *VARIANTS, *INPUT_SIZES]  # the reference first, the input sizes last
    return dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def figure(r: dict, s: str, gt: str, key: str, read: str = VARIANT_READ) -> float:
    block = scores(r, s, gt, read)
    return 100.0 - block["sdr_4mm"] if key == "over_4mm" else block[key]


def compare(
    ref: dict[int, dict], var: dict[int, dict], s: str, gt: str, read: str = VARIANT_READ
) -> dict | None:
    """Variant - reference on per-image MRE (decoding variant ``read``): per common seed and
    pooled; the reference's seed SD. The verdict is a difference ("better" / "worse") only when
    the mean over seeds exceeds the reference's seed-to-seed SD, its 95 % interval excludes zero
    and the pooled Wilcoxon test gives p < 0.05; otherwise "no difference"."""

    def by_seed(runs: dict[int, dict]) -> dict:
        return {k: errors(r, s, f"{read}.{gt}") for k, r in runs.items() if s in r["per_image"]}

    res = paired_over_seeds(by_seed(ref), by_seed(var))
    if res is None:
        return None
    means = res["diffs"].mean(axis=1)
    ref_mre = [figure(ref[k], s, gt, "mre_mm", read) for k in ref]
    ref_sd = float(np.std(ref_mre, ddof=1)) if len(ref) > 1 else None
    if len(means) > 1:
        lo, hi = scipy.stats.t.interval(0.95, len(means) - 1, means.mean(), scipy.stats.sem(means))
        ci = (float(lo), float(hi))  # Student t over seeds
    else:  # one seed: a bootstrap over images
        ci = tuple(float(v) for v in bootstrap_ci(res["diffs"][0]))
    pooled_p = res["pooled_p"]
    small = ref_sd is None or abs(means.mean()) < ref_sd
    spans_zero = ci[0] <= 0 <= ci[1]
    verdict = (
        "no difference"
        if small or spans_zero or pooled_p >= 0.05
        else ("worse" if means.mean() > 0 else "better")
    )
    return {"seeds": res["seeds"], "per_seed": res["per_seed"], "mre_diff": float(means.mean()), "ci95": ci,
            "pooled_p": pooled_p, "reference_seed_sd": ref_sd, "verdict": verdict}  # fmt: skip


def train_peak_mb(memory: dict | None, size: list[int]) -> float | None:
    """Peak training memory (MB) at ``size`` and the largest batch ``scripts/profile_memory.py``
    measured (its ``metrics/memory_resolution.json``), or None."""
    cases = [c for c in (memory or {}).get("cases", []) if list(c["input"]) == list(size)]
    return max(cases, key=lambda c: c["batch"])["train_peak_mb"] if cases else None


def compute(var: dict[int, dict], measured: dict | None) -> dict:
    """A variant's cost: its runs' training wall minutes (mean, SD and median over seeds: a run
    that shared the CPU with another job is slow, and the median resists it) and the figures
    :func:`measure_latency` took in one process (``latency_ms``, ``train_step_ms``; None until
    measured)."""
    minutes = [r["training_minutes"] for r in var.values()]
    measured = measured or {}
    return {
        "training_minutes": mean_sd(minutes) | {"median": float(np.median(minutes))},
        "hosts": sorted({r.get("host") or UNRECORDED for r in var.values()}),
        "latency_ms": measured.get("predict_ms"),
        "train_step_ms": measured.get("train_step_ms"),
    }


def _gains(c: dict) -> bool:
    """Whether a comparison's variant beats the reference by more than the reference's seed SD."""
    return c["reference_seed_sd"] is not None and c["mre_diff"] < -c["reference_seed_sd"]


def resolution(
    runs: dict[str, dict[int, dict]], latency: dict[str, dict], memory: dict | None, coarse: dict[str, dict]
) -> dict:
    """The resolution hypothesis: each input-size variant against the reference (the profile's
    own runs), read with the refiner (both train it fully), with its compute; and the decision
    the issue asks for: more seeds only if validation (mean of both doctors) improves by more
    than the reference's seed-to-seed SD. Beside it, the coarse network's comparison, taken from
    the main table's rows (``coarse``, by variant) rather than computed again."""
    ref = runs[REFERENCE]
    rows = []
    for name in [REFERENCE, *(n for n in INPUT_SIZES if n in runs)]:
        var = runs[name]
        first = next(iter(var.values()))["params"]
        size = [int(first["preprocess.height"]), int(first["preprocess.width"])]
        row = {"variant": name, "input": size, "seeds": sorted(var), **compute(var, latency.get(name)),
               "train_peak_mb": train_peak_mb(memory, size)}  # fmt: skip
        for s in SETS:
            for gt in GTS:
                have = [r for r in var.values() if s in r["scores"]]
                if have:
                    row[f"{s}.{gt}"] = {
                        read: mean_sd([figure(r, s, gt, "mre_mm", read) for r in have])
                        for read in (VARIANT_READ, RESOLUTION_READ)
                    }
                    if name != REFERENCE:
                        row[f"{s}.{gt}"]["vs_reference"] = compare(ref, var, s, gt, RESOLUTION_READ)
                        row[f"{s}.{gt}"]["vs_reference_coarse"] = coarse[name][f"{s}.{gt}"]["vs_reference"]
        if name != REFERENCE:
            val = row["val.mean"]
            row["decision"] = (
                "with the refiner, beats the reference on validation by more than its seed SD: run more seeds"
                if _gains(val["vs_reference"])
                else "with the refiner, no gain on validation beyond the reference's seed SD"
            )
            coarse = "the coarse network alone (shape decoding)"
            row["coarse"] = (
                f"{coarse} beats the reference on validation by more than its seed SD"
                if _gains(val["vs_reference_coarse"])
                else f"{coarse} gains nothing on validation beyond the reference's seed SD"
            )
        rows.append(row)
    return {"read": RESOLUTION_READ, "rows": rows}


def build_table(
    runs: dict[str, dict[int, dict]], latency: dict[str, dict], memory: dict | None = None
) -> dict:
    ref = runs[REFERENCE]
    rows = []
    for name, var in runs.items():
        row = {
            "variant": name,
            "what": VARIANTS[name].what if name in VARIANTS else name,
            "seeds": sorted(var),
        }
        row["parameters"] = next(iter(var.values()))["parameters"]
        row |= compute(var, latency.get(name))
        for s in SETS:
            for gt in GTS:
                have = [r for r in var.values() if s in r["scores"]]
                if not have:
                    continue
                keys = ("mre_mm", "sdr_2mm", "sdr_4mm", "over_4mm", "max_mm")
                row[f"{s}.{gt}"] = {k: mean_sd([figure(r, s, gt, k) for r in have]) for k in keys}
                if name != REFERENCE:
                    row[f"{s}.{gt}"]["vs_reference"] = compare(ref, var, s, gt)
        rows.append(row)
    table = {"read": VARIANT_READ, "reference": REFERENCE, "rows": rows}
    if any(n in runs for n in INPUT_SIZES):
        table["resolution"] = resolution(runs, latency, memory, {r["variant"]: r for r in rows})
    return table


def _ms(v: dict | None, n: int = 1, digits: int = 3) -> str:
    """``mean +- SD`` of a :func:`mean_sd` figure over ``n`` seeds (the mean alone for one)."""
    if v is None:
        return "-"
    return f"{v['mean']:.{digits}f}" + (f" +- {v['sd']:.{digits}f}" if n > 1 else "")


def _num(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


DETAIL = (("mre_mm", "MRE", 3), ("sdr_2mm", "SDR 2 mm (%)", 1), ("sdr_4mm", "SDR 4 mm (%)", 1),
          ("over_4mm", "beyond 4 mm (%)", 1), ("max_mm", "largest (mm)", 1))  # fmt: skip


def markdown(table: dict) -> str:
    lines = [
        "# Ablation study (ISBI)",
        "",
        "Generated by `python scripts/ablations.py table` from the run snapshots in `docs/ablation/runs/`"
        " (`docs/ablation.json` holds every figure). Coarse network with shape decoding; MRE in mm,"
        " mean +- SD over seeds; the difference is variant minus full model, paired per image"
        " (Wilcoxon per seed and pooled); a difference is reported only when it exceeds the full"
        " model's seed-to-seed SD, its 95 % interval excludes zero and the pooled p < 0.05."
        " Nothing was chosen on Test1 or Test2. Cost: training wall minutes of"
        " the three MAHT-Net stages (median over seeds; runs shared the 2-core CPU unevenly, so"
        " compare the columns measured in one process: one end-to-end training step at the profile's"
        " batch and one prediction at batch 1, `--latency`).",
        "",
        "| variant | seeds | params (M) | train wall (min) | train step (ms) | predict (ms) | "
        "val, mean GT | Test1, official | Test2, official | Test2, mean GT | "
        "Test2 vs full (95 % CI) | verdict (Test2, official) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table["rows"]:
        n = len(r["seeds"])
        cmp = (r.get("test2.official") or {}).get("vs_reference")
        mre = [
            _ms((r.get(k) or {}).get("mre_mm"), n)
            for k in ("val.mean", "test1.official", "test2.official", "test2.mean")
        ]
        lines.append(
            f"| {r['variant']} | {','.join(map(str, r['seeds']))} | {r['parameters'] / 1e6:.2f} | "
            f"{r['training_minutes']['median']:.0f} | {_num(r['train_step_ms'])} | {_num(r['latency_ms'])} | "
            f"{' | '.join(mre)} | {_ci(cmp)} | {'-' if cmp is None else cmp['verdict']} |"
        )
    keys = [f"{s}.{gt}" for s in SETS for gt in GTS]
    lines += ["", "The CPUs the runs trained on (training minutes compare only within one):", ""]
    lines += _hosts(table)
    lines += [
        "",
        "![forest plot](figures/ablation_forest.png)",
        "",
        "## Every set and ground truth",
        "",
        "Variant minus full model, MRE (mm, 95 % CI over seeds; one seed: a bootstrap over images)"
        " and the verdict:",
        "",
        f"| variant | {' | '.join(keys)} |",
        f"| --- |{' --- |' * len(keys)}",
    ]
    for r in (r for r in table["rows"] if r["variant"] != REFERENCE):
        cells = []
        for k in keys:
            c = (r.get(k) or {}).get("vs_reference")
            cells.append("-" if c is None else f"{_ci(c)} {c['verdict']}")
        lines.append(f"| {r['variant']} | {' | '.join(cells)} |")
    lines += ["", "The figures (mean +- SD over seeds):", "",
              f"| variant | set | ground truth | {' | '.join(h for _, h, _ in DETAIL)} |",
              f"| --- | --- | --- |{' --- |' * len(DETAIL)}"]  # fmt: skip
    for r in table["rows"]:
        n = len(r["seeds"])
        for k in keys:
            if k in r:
                s, gt = k.split(".")
                cells = [_ms(r[k][key], n, d) for key, _, d in DETAIL]
                lines.append(f"| {r['variant']} | {s} | {gt} | {' | '.join(cells)} |")
    lines.append("")
    if "resolution" in table:
        lines += resolution_markdown(table["resolution"])
    return "\n".join(lines)


def _hosts(table: dict) -> list[str]:
    """One line per CPU: the variants with a run trained on it."""
    hosts = sorted({h for r in table["rows"] for h in r["hosts"]})
    return [f"- {h}: {', '.join(r['variant'] for r in table['rows'] if h in r['hosts'])}" for h in hosts]


def _ci(c: dict | None) -> str:
    """A comparison's difference and 95 % interval, or "-"."""
    return "-" if c is None else f"{c['mre_diff']:+.3f} ({c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f})"


def _diff(c: dict | None) -> str:
    """:func:`_ci` with the p value per seed and the verdict."""
    if c is None:
        return "-"
    p = ", ".join(f"{k}: {v['p']:.2g}" for k, v in c["per_seed"].items())
    return f"{_ci(c)}; p {p}; {c['verdict']}"


def resolution_markdown(res: dict) -> list[str]:
    """The resolution section of ``docs/ablation.md``."""
    lines = [
        "## The resolution hypothesis",
        "",
        "The coarse network's input size, everything else equal (the profile's own runs are the"
        " reference; both train the refiner fully). MRE in mm with the refiner (the coarse network"
        " with shape decoding alone in brackets); training wall minutes are the three MAHT-Net stages'"
        " (median over seeds) on this project's 2-core CPU, the step and prediction times are"
        " measured in one process (`--latency`); peak memory is one training step's resident set"
        " at the profile's batch (`scripts/profile_memory.py`, `metrics/memory_resolution.json`).",
        "",
        "| input | seeds | train wall (min) | train step (ms) | peak train memory (MB) | predict (ms) | "
        "val, mean GT | Test1, official | Test1, mean | Test2, official | Test2, mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        n = len(r["seeds"])
        cells = []
        for key in ("val.mean", "test1.official", "test1.mean", "test2.official", "test2.mean"):
            fig = r.get(key) or {}
            cells.append(f"{_ms(fig.get(RESOLUTION_READ), n)} ({_ms(fig.get(VARIANT_READ), n)})")
        lines.append(
            f"| {r['input'][0]}x{r['input'][1]} | {','.join(map(str, r['seeds']))} | "
            f"{r['training_minutes']['median']:.0f} | {_num(r['train_step_ms'])} | "
            f"{_num(r['train_peak_mb'])} | {_num(r['latency_ms'])} | {' | '.join(cells)} |"
        )
    lines += ["", "Difference from the reference (mm, 95 % CI; Wilcoxon per seed), with the refiner and for"
              " the coarse network with shape decoding alone:", ""]  # fmt: skip
    for r in res["rows"][1:]:
        lines.append(f"- **{r['input'][0]}x{r['input'][1]}**: {r['decision']}; {r['coarse']}.")
        for key in ("val.mean", "test1.official", "test1.mean", "test2.official", "test2.mean"):
            fig = r.get(key) or {}
            lines.append(
                f"  - {key}: with the refiner {_diff(fig.get('vs_reference'))};"
                f" coarse {_diff(fig.get('vs_reference_coarse'))}"
            )
    return [*lines, ""]


def forest(table: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r["variant"] != REFERENCE]
    fig, axes = plt.subplots(1, len(SETS), figsize=(4 * len(SETS), 0.5 * len(rows) + 1.5), sharey=True)
    for ax, s in zip(axes, SETS, strict=True):
        for j, gt in enumerate(GTS):
            for i, r in enumerate(rows):
                c = (r.get(f"{s}.{gt}") or {}).get("vs_reference")
                if c is None:
                    continue
                y = i + (j - 0.5) * 0.25
                err = [[c["mre_diff"] - c["ci95"][0]], [c["ci95"][1] - c["mre_diff"]]]
                mark = "o" if gt == "official" else "s"
                ax.errorbar(c["mre_diff"], y, xerr=err, fmt=mark, color=f"C{j}", label=gt if i == 0 else None)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(s)
        ax.set_xlabel("MRE difference from the full model (mm)")
    axes[0].set_yticks(range(len(rows)), [r["variant"] for r in rows])
    axes[0].invert_yaxis()  # top to bottom in the table's order
    axes[-1].legend(title="ground truth", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
