"""The robustness comparison over several training runs (seeds): mean and SD over the runs of
each model's MRE increase under each perturbation and severity, and of MAHT-Net's increase
minus the U-Net's, with the number of runs in which MAHT-Net lost less.

Each ``--run NAME=FILE`` is a ``metrics/robustness.json`` written by the ``robustness`` stage
for one seed's models::

    python scripts/robustness_seeds.py --run seed42=docs/isbi2015-senior/robustness.json \\
        --run seed43=/tmp/rob43.json --run seed44=/tmp/rob44.json \\
        --out docs/isbi2015-senior/robustness_seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mahtnet.analysis.stats import mean_sd
from mahtnet.io import write_json

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("baseline", "maht_net")


def increases(result: dict, model: str) -> dict[tuple[str, float], float]:
    """``(perturbation, severity) -> MRE increase (mm)`` of one model in one run."""
    out = {}
    for name, block in result[model]["perturbations"].items():
        for row in block["rows"]:
            out[(name, row["severity"])] = row["mre_increase_mm"]
    return out


def summarise(runs: dict[str, dict]) -> dict:
    per_model = {m: {name: increases(r, m) for name, r in runs.items()} for m in MODELS}
    keys = sorted(set.intersection(*(set(v) for v in per_model["maht_net"].values())))
    rows = []
    for key in keys:
        gaps = [per_model["maht_net"][n][key] - per_model["baseline"][n][key] for n in runs]
        rows.append(
            {
                "perturbation": key[0],
                "severity": key[1],
                **{f"{m}_increase_mm": mean_sd([per_model[m][n][key] for n in runs]) for m in MODELS},
                "maht_minus_unet_mm": mean_sd(gaps),
                "runs_maht_net_loses_less": int(sum(g < 0 for g in gaps)),
            }
        )
    clean = {m: mean_sd([r[m]["clean"]["mre_mm"] for r in runs.values()]) for m in MODELS}
    return {"runs": list(runs), "clean_mre_mm": clean, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=metrics/robustness.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            sys.exit(f"--run {item!r}: expected NAME=FILE with an existing robustness.json")
        runs[name] = json.loads(Path(path).read_text())
    summary = summarise(runs)
    write_json(args.out, summary)
    print(f"{'perturbation':>10} {'severity':>8}  U-Net +mm  MAHT +mm  MAHT-U-Net (sd)  MAHT less in")
    for r in summary["rows"]:
        u, m, g = r["baseline_increase_mm"], r["maht_net_increase_mm"], r["maht_minus_unet_mm"]
        print(
            f"{r['perturbation']:>10} {r['severity']:>8g}  {u['mean']:9.3f} {m['mean']:9.3f} "
            f"{g['mean']:+8.3f} ({g['sd']:.3f})  {r['runs_maht_net_loses_less']}/{len(runs)}"
        )


if __name__ == "__main__":
    main()
