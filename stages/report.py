"""Stage: the experiment report (``reports/report.md`` and ``reports/figures/``) from the
evaluate, compare and training stages' outputs."""

import argparse
import json
from pathlib import Path

import pandas as pd

from mahtnet.analysis.report import build_report
from mahtnet.config import load_params
from mahtnet.data.preprocess import split_key
from mahtnet.errors import run_cli
from mahtnet.paths import relative_to_repo


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"metrics not found: {path} (run the stage that writes it)")
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", required=True, nargs="+", help="evaluated models: metrics/<name>.json")
    parser.add_argument(
        "--stages", required=True, nargs="+", help="training stages: metrics/train_<stage>.json"
    )
    parser.add_argument("--robustness", type=Path, help="the robustness stage's metrics/robustness.json")
    parser.add_argument("--optimise", type=Path, help="the optimise stage's metrics/optimise.json")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics"), help="(outside the pipeline)")
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"), help="(outside the pipeline)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    metrics_dir, plots_dir = args.metrics_dir, args.plots_dir
    sets = {m: read_json(metrics_dir / f"{m}.json") for m in args.models}
    sets = {m: {k: v for k, v in blocks.items() if isinstance(v, dict)} for m, blocks in sets.items()}
    models = {m: blocks[split_key(params.data.test_split)] for m, blocks in sets.items()}
    compare = read_json(metrics_dir / "compare.json")
    training = {s: read_json(metrics_dir / f"train_{s}.json") for s in args.stages}
    per_landmark = {
        m: pd.read_csv(plots_dir / "compare" / f"per_landmark_{m}.csv") for m in args.models if m in compare
    }
    figures = {p.stem: p for p in (plots_dir / "compare").glob("*.png")}
    for m in args.models:
        for name in ("confidence", "overlay_best", "overlay_worst"):
            figures[f"{name}_{m}"] = plots_dir / m / f"{name}.png"
    for m in args.models:  # written by the evaluate stage for MAHT-Net only
        for which in ("best", "worst"):
            if (plots_dir / m / f"attention_{which}.png").is_file():
                figures[f"attention_{which}_{m}"] = plots_dir / m / f"attention_{which}.png"
    robust = read_json(args.robustness) if args.robustness else None
    if robust:
        figures["mre_vs_severity"] = plots_dir / "robustness" / "mre_vs_severity.png"
    optimise = read_json(args.optimise) if args.optimise else None
    if optimise:
        figures["mre_vs_latency"] = plots_dir / "optimise" / "mre_vs_latency.png"
    missing = [str(p) for p in figures.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"report figures not found: {missing}")
    d = params.data
    context = {
        "dataset": d.dataset,
        "root": relative_to_repo(d.root),
        "test_split": d.test_split,
        "gt": d.gt,
        "sets": sets,
        "input": f"{params.preprocess.height}x{params.preprocess.width}",
        "seed": params.seed,
        "thresholds_mm": params.evaluate.sdr_thresholds_mm,
    }
    path = build_report(models, compare, training, per_landmark, figures, args.out, context, optimise, robust)
    print(f"report: {path} ({len(figures)} figures)")


if __name__ == "__main__":
    run_cli(main)
