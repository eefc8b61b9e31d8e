"""The experiment report: a Markdown page (``reports/report.md``) with its figures, written
from the pipeline's metrics and plots, so ``dvc repro`` regenerates it."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mahtnet.clinical import MEASUREMENTS
from mahtnet.io import write_text

GROUND_TRUTHS = (
    ("official", "official"),
    ("mean", "mean of both doctors"),
    ("senior", "senior doctor"),
    ("junior", "junior doctor"),
)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; floats with 2-3 decimals."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _sdr(m: dict, thresholds: Sequence[float]) -> str:
    return " / ".join(f"{m[f'sdr_{t:g}mm']:.1f}" for t in thresholds)


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(ci, scale: float = 1.0, fmt: str = "+.3f") -> str:
    if not ci or ci[0] is None:
        return "-"
    return f"[{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"


def decoding_section(models: dict[str, dict], pairs: dict[str, dict], thresholds) -> list[str]:
    """Coarse vs shape-consistent vs refined landmarks of each model, and the paired tests of
    what each step buys (the compare stage's ``pairs``)."""
    rows = []
    for model, m in models.items():
        for variant, v in m.get("variants", {}).items():
            rows.append(
                [model, variant, v["mre_mm"], v["sd_mm"], _sdr(v, thresholds), v["max_mm"], v["n_over_10mm"]]
                + [v.get("n_switched", "-")]
            )
    if not rows:
        return []
    head = [
        "model",
        "decoding",
        "MRE (mm)",
        "SD",
        _sdr_head(thresholds),
        "max (mm)",
        "> 10 mm",
        "peaks switched",
    ]
    md = [
        "## Decoding and refinement",
        "",
        "`coarse`: arg-max of the heatmaps (sub-pixel); `shape`: the top heatmap peaks chosen to fit a "
        "shape model of the training annotations; `refined`: the refinement network on "
        "fine-resolution patches around those landmarks. Against the configured ground truth.",
        "",
        table(head, rows),
        "",
    ]
    if pairs:
        md += [
            table(
                ["comparison (B vs A)", "MRE A", "MRE B", "B - A (mm)", "95 % CI", "Wilcoxon p", "p (Holm)"],
                [
                    [
                        f"{c['variant']} vs {c['reference']}",
                        c["mre_a"],
                        c["mre_b"],
                        c["mre_diff"],
                        _ci((c.get("bootstrap") or {}).get("mre_diff")),
                        _p(c["wilcoxon"]["p_value"]),
                        _p(c["wilcoxon"].get("p_holm_pairs")),
                    ]
                    for c in pairs.values()
                ],
            ),
            "",
        ]
    return md


def tradeoff_section(rows: dict[str, dict]) -> list[str]:
    """The deployment trade-off table of the optimise stage (first row: the full model)."""
    lines = [
        "## Deployment trade-off",
        "",
        "The full model, its INT8 file, pruned and smaller models on the same test images (arg-max "
        "decoding through onnxruntime; latency of the network at batch 1; peak memory of a fresh "
        "onnxruntime process). Settings: `docs/optimise.md`.",
        "",
    ]
    body = [
        [
            name,
            r["mre_mm"],
            None if "mre_diff_mm" not in r else f"{r['mre_diff_mm']:+.3f} ({_p(r['wilcoxon_p'])})",
            r["sdr_2mm"],
            r["parameters"] / 1e6,
            r["onnx_mb"],
            f"{r['onnxruntime_1_threads_ms']:.1f} / {r['onnxruntime_2_threads_ms']:.1f}",
            r.get("onnxruntime_peak_rss_mb"),
        ]
        for name, r in rows.items()
    ]
    head = ["variant", "MRE (mm)", "vs full (p)", "SDR 2 mm (%)", "params (M)", "ONNX MB"]
    lines += [table([*head, "onnxruntime 1 / 2 threads (ms)", "peak memory (MB)"], body), ""]
    return lines


def robustness_section(results: dict[str, dict]) -> list[str]:
    """Clean MRE and the MRE at each perturbation's strongest severity, per model."""
    names = list(results)
    first = results[names[0]]["perturbations"]
    rows = [["clean", "", *(results[m]["clean"]["mre_mm"] for m in names)]]
    for p, v in first.items():
        last = v["rows"][-1]["severity"]
        rows.append(
            [p, f"{last:g} ({v['meaning']})", *(
                f"{results[m]['perturbations'][p]['rows'][-1]['mre_mm']:.3f} "
                f"(p {_p(results[m]['perturbations'][p]['rows'][-1]['wilcoxon_p'])})" for m in names
            )]
        )  # fmt: skip
    return [
        "## Robustness",
        "",
        "Test MRE (mm) with the original images perturbed before preprocessing, at the strongest "
        "(last listed) severity of each perturbation (all: `metrics/robustness.json`); p: paired "
        "Wilcoxon against the clean images.",
        "",
        table(["perturbation", "severity", *names], rows),
        "",
    ]


def literature_section(models: dict[str, dict], context: dict) -> list[str]:
    """Published ISBI 2015 results beside this run's models (only where the protocol matches:
    ISBI data, Test1 and Test2), each model once per ground truth (official, mean of both
    doctors): a published row compares with the row of its own ground truth only."""
    from mahtnet.analysis.literature import HEADER, comparison_rows

    if (context["dataset"], context["test_split"]) != ("isbi2015", "Test1Data"):
        return []
    keys = ("sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm")
    ours = [
        {
            "name": f"this run: {m}",
            "input": context["input"],
            "hardware": context.get("hardware", "this machine"),
            "ground_truth": gt,
            **{
                split: {"mre_mm": sets[split][gt]["mre_mm"], "sdr": [sets[split][gt][k] for k in keys]}
                for split in ("test1", "test2")
                if split in sets and gt in sets[split]
            },
            "note": f"trained on {context['gt']} labels, seed {context['seed']}, one run",
        }
        for m, sets in context["sets"].items()
        for gt in ("official", "mean")
    ]
    return [
        "## Published results (same protocol)",
        "",
        "Figures as published (`src/mahtnet/data/literature.yaml`, with citations, where each was "
        "read and the ground truth it was scored against: compare a row only with ours of the same "
        "ground truth); this run's models at the bottom, once per ground truth.",
        "",
        table(HEADER, comparison_rows(ours)),
        "",
    ]


def _figure(figures: dict[str, Path], name: str, caption: str) -> str:
    """A figure with its caption, or an empty line where ``name`` was not drawn."""
    return f"![{caption}](figures/{name}.png)\n\n*{caption}*\n" if name in figures else ""


def _copy_figures(figures: dict[str, Path], out: Path) -> None:
    fig_dir = out.parent / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, src in figures.items():
        shutil.copyfile(src, fig_dir / f"{name}.png")


def _sdr_head(thresholds) -> str:
    return "SDR " + " / ".join(f"{t:g}" for t in thresholds) + " mm (%)"


def _header(context: dict, images) -> list[str]:
    """The title and the run's data, input size and seed."""
    return [
        "# MAHT-Net experiment report",
        "",
        f"Generated by the `report` stage from the pipeline's metrics. Data: **{context['dataset']}** "
        f"(`{context['root']}`), test split `{context['test_split']}` ({images} images), "
        f"network input {context['input']}, seed {context['seed']}. Errors are radial distances at the "
        "original image resolution; SDR is the share of landmarks within the radius. Model selection "
        "used only a validation split of the training images.",
        "",
    ]


def sets_section(sets: dict[str, dict[str, dict]]) -> list[str]:
    """Every evaluated set (validation, each test split) of each model against the official
    ground truth and the mean of both doctors."""
    rows = []
    for model, blocks in sets.items():
        for name, b in blocks.items():
            o, m = b["official"], b["mean"]
            rows.append(
                [model, name, b["images"], o["mre_mm"], o["sdr_2mm"], o["max_mm"], m["mre_mm"], m["sdr_2mm"]]
            )
    head = [
        "model",
        "set",
        "images",
        "MRE official (mm)",
        "SDR 2 mm (%)",
        "max (mm)",
        "MRE mean (mm)",
        "SDR 2 mm (%)",
    ]
    return ["## Every evaluated set", "", table(head, rows), ""]


def _results_section(models: dict[str, dict], thresholds) -> list[str]:
    """Each model against each ground truth, and the doctors against each other."""
    rows = []
    for model, m in models.items():
        for gt, label in GROUND_TRUTHS:
            g = m["by_gt"][gt]
            rows.append([model, label, g["mre_mm"], g["sd_mm"], g["median_mm"], _sdr(g, thresholds)])
    inter = list(models.values())[0]["by_gt"]["inter_observer"]
    rows.append(
        [
            "senior vs junior doctor",
            "(inter-observer)",
            inter["mre_mm"],
            inter["sd_mm"],
            inter["median_mm"],
            _sdr(inter, thresholds),
        ]
    )
    head = ["model", "ground truth", "MRE (mm)", "SD", "median", _sdr_head(thresholds)]
    return ["## Results", "", table(head, rows), ""]


def _difference_table(c: dict) -> str:
    """MRE, relative MRE and SDR differences of one comparison with their bootstrap CIs."""
    boot = c.get("bootstrap") or {}
    rel = c["relative_mre_change"]
    return table(
        ["quantity", "value", "95 % bootstrap CI"],
        [
            ["MRE difference (mm)", c["mre_diff"], _ci(boot.get("mre_diff"))],
            [
                "relative MRE change (%)",
                None if rel is None else 100 * rel,
                _ci(boot.get("relative_mre_change"), 100, "+.1f"),
            ],
            *[
                [
                    f"SDR {k.removeprefix('sdr_')} difference (points)",
                    v,
                    _ci(boot.get("sdr_diff", {}).get(k), 1, "+.1f"),
                ]
                for k, v in c["sdr_diff"].items()
            ],
        ],
    )


def _tests_sentence(c: dict) -> str:
    """The paired tests, effect sizes and significant landmarks of one comparison."""
    return (
        f"Wilcoxon signed-rank test on per-image MRE: p = {_p(c['wilcoxon']['p_value'])} "
        f"(paired t-test p = {_p(c['ttest']['p_value'])}); effect size: matched-pairs rank-biserial "
        f"r = {c['effect_size']['rank_biserial']:.3f}, Cohen's d_z = "
        f"{_num(c['effect_size']['cohens_dz'])}. "
        f"Landmarks with a significant difference after Holm correction (alpha {c['alpha']}): "
        f"{', '.join(c['significant_landmarks']) or 'none'}."
    )


def _per_landmark_table(pl: pd.DataFrame, ref: str, model: str) -> list[str]:
    return [
        table(
            ["landmark", f"{ref} MRE", f"{model} MRE", "difference", "p (Wilcoxon)", "p (Holm)"],
            [
                [r.landmark, r.mre_a, r.mre_b, r.mre_diff, _p(r.p_value), _p(r.p_holm)]
                for r in pl.itertuples()
            ],
        ),
        "",
    ]


def _comparison_section(
    compare: dict, per_landmark: dict[str, pd.DataFrame], figures: dict[str, Path]
) -> list[str]:
    """Each compared model against the reference: differences, tests, per-landmark table, figures."""
    ref = compare["reference"]
    md = ["## Statistical comparison", ""]
    for model, c in ((k, v) for k, v in compare.items() if isinstance(v, dict) and k != "pairs"):
        md += [
            f"**{model} vs {ref}** on {c['images']} paired test images (differences {model} - {ref}):",
            "",
            _difference_table(c),
            "",
            _tests_sentence(c),
            "",
        ]
        if model in per_landmark:
            md += _per_landmark_table(per_landmark[model], ref, model)
        md.append(_figure(figures, f"paired_mre_{model}", f"Per-image MRE, {model} against {ref}"))
    md.append(_figure(figures, "per_landmark_mre", "MRE per landmark (mm)"))
    md.append(_figure(figures, "sdr_curves", "Success detection rate against the radius"))
    return md


def _clinical_section(models: dict[str, dict]) -> list[str]:
    """Classification accuracy of the ISBI 2015 measurements per model, and the doctors'."""
    names = list(models)
    inter = models[names[0]]["clinical"]["inter_observer"]
    rows = [
        [k, *(models[m]["clinical"]["accuracy"][k] for m in names), inter[k]] for k in (*MEASUREMENTS, "mean")
    ]
    return [
        "## Clinical measurements (ISBI 2015 task 2)",
        "",
        "Classification accuracy (%) of the eight measurements computed from the predicted landmarks "
        "against those from the ground-truth landmarks; the doctors' agreement (senior vs junior "
        "landmarks) for reference. Definitions and class thresholds: `src/mahtnet/clinical.py`.",
        "",
        table(["measurement", *names, "senior vs junior"], rows),
        "",
    ]


def _confidence_section(models: dict[str, dict], figures: dict[str, Path]) -> list[str]:
    """Spearman correlation of heatmap-peak confidence and radial error, with the scatter plots."""
    md = [
        "## Confidence and error",
        "",
        ", ".join(
            f"{m}: Spearman rho {c['confidence']['spearman_rho']:.3f} (p {_p(c['confidence']['p_value'])})"
            for m, c in models.items()
        )
        + " between the heatmap-peak confidence and the radial error (negative: confident "
        "predictions are more accurate).",
        "",
    ]
    return md + [_figure(figures, f"confidence_{m}", f"{m}: radial error against confidence") for m in models]


def _overlays_section(names: Sequence[str], figures: dict[str, Path]) -> list[str]:
    """The best and worst test image of each model, and MAHT-Net's attention maps on them."""
    md = ["## Best and worst test images", ""]
    for m in names:
        for which in ("best", "worst"):
            caption = f"{m}: {which} test image (green: ground truth, red: prediction)"
            md.append(_figure(figures, f"overlay_{which}_{m}", caption))
    attention = [
        f"attention_{w}_{m}" for m in names for w in ("best", "worst") if f"attention_{w}_{m}" in figures
    ]
    if attention:
        md += [
            "## Where MAHT-Net looks",
            "",
            "On the same images: the attention each stride-32 token receives in the last transformer "
            "block, the decoder's attention gates, and the last block's attention from the token under "
            "a few landmarks (at their ground-truth position). `src/mahtnet/analysis/explain.py`.",
            "",
        ]
        md += [_figure(figures, name, name.replace("_", " ")) for name in attention]
    return md


def _training_section(training: dict[str, dict]) -> list[str]:
    """Epochs, best and written validation MRE, early stopping and time of each training stage."""
    rows = [
        [
            stage,
            t["epochs_run"],
            t["best_epoch"],
            t["best_val_mre_mm"],
            t.get("output_val_mre_mm", t["best_val_mre_mm"]),
            "yes" if t.get("averaged") else "no",
            t.get("stop_reason") or ("yes" if t.get("stopped_early") else "-"),
            t["wall_time_s"] / 60,
            t.get("trainable_parameters", t.get("parameters")),
        ]
        for stage, t in training.items()
    ]
    head = ["stage", "epochs run", "best epoch", "best val MRE", "written val MRE", "averaged", "early stop"]
    return ["## Training", "", table([*head, "minutes", "trainable params"], rows), ""]


def build_report(
    models: dict[str, dict],
    compare: dict,
    training: dict[str, dict],
    per_landmark: dict[str, pd.DataFrame],
    figures: dict[str, Path],
    out: Path,
    context: dict,
    optimise: dict[str, dict] | None = None,
    robust: dict[str, dict] | None = None,
) -> Path:
    """Write ``out`` (Markdown) and copy ``figures`` (``{name: png}``) into ``out``'s
    ``figures/`` folder. ``models``: evaluate-stage metrics per model (reference first);
    ``compare``: the compare stage's JSON; ``training``: train-stage metrics per stage;
    ``per_landmark``: the compare stage's per-landmark table per compared model;
    ``optimise``: the optimise stage's trade-off rows, if any; ``robust``: the robustness
    stage's results, if any."""
    _copy_figures(figures, out)
    thresholds = context["thresholds_mm"]
    md = _header(context, models[list(models)[0]]["images"])
    md += _results_section(models, thresholds)
    md += sets_section(context["sets"])
    md += literature_section(models, context)
    md += decoding_section(models, compare.get("pairs", {}), thresholds)
    md += _comparison_section(compare, per_landmark, figures)
    md += _clinical_section(models)
    md += _confidence_section(models, figures)
    md += _overlays_section(list(models), figures)
    if robust:
        md += robustness_section(robust)
        md.append(_figure(figures, "mre_vs_severity", "Test MRE against perturbation severity"))
    if optimise:
        md += tradeoff_section(optimise)
        md.append(_figure(figures, "mre_vs_latency", "Test MRE against onnxruntime latency (1 thread)"))
    md += _training_section(training)
    return write_text(out, "\n".join(md) + "\n")
