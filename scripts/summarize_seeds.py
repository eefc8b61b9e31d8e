"""The headline comparison over several training runs (seeds) of the same protocol.

Each ``--run NAME=DIR`` is a repository (or DVC experiment workspace) where ``dvc repro
compare`` ran with one seed; read are its ``metrics/{baseline,maht_net}.json`` (every decoding
variant), ``data/eval/*_per_image.csv`` (refined and coarse per-image errors) and
``data/eval/*_predictions.csv`` (refined landmarks). Written: mean and SD over the runs per
model and variant; per run, the paired MAHT-Net vs U-Net test (Wilcoxon on per-image MRE);
and the paired test on the seed-averaged predictions (each model's landmarks averaged over the
runs, then scored)::

    python scripts/summarize_seeds.py --run seed42=../isbi --run seed43=../seed43 \\
        --gt-from ../seed43 --out docs/isbi2015-senior/seeds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mahtnet.analysis.evaluation import read_per_image
from mahtnet.analysis.stats import compare_paired, mean_sd
from mahtnet.data.isbi import ISBI_PIXEL_SPACING_MM
from mahtnet.io import write_json

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("baseline", "maht_net")
KEYS = ("mre_mm", "sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm", "max_mm", "n_over_10mm")


def variants(run: Path, model: str) -> dict[str, dict]:
    """Each decoding variant's Test1 scores (official ground truth) of one run's model; runs
    before the per-set metrics kept them at the top level."""
    m = json.loads((run / "metrics" / f"{model}.json").read_text())
    return m["test1"]["variants"] if "test1" in m else m["variants"]


def spread(runs: dict[str, Path]) -> dict:
    """Mean, SD and per-run values of each figure, per model and decoding variant."""
    out = {}
    for model in MODELS:
        per_run = {name: variants(run, model) for name, run in runs.items()}
        for variant in next(iter(per_run.values())):
            rows = {k: [per_run[r][variant][k] for r in runs] for k in KEYS}
            out[f"{model}/{variant}"] = {k: {**mean_sd(v), "runs": v} for k, v in rows.items()}
    return out


def paired_per_run(runs: dict[str, Path]) -> dict:
    """MAHT-Net vs U-Net per run, refined and coarse (B - A, A = U-Net)."""
    out = {}
    for name, run in runs.items():
        for suffix, label in (("", "refined"), ("_coarse", "coarse")):
            _, a, names = read_per_image(run / "data" / "eval" / f"baseline{suffix}_per_image.csv")
            _, b, _ = read_per_image(run / "data" / "eval" / f"maht_net{suffix}_per_image.csv")
            res = compare_paired(a, b, n_boot=2000, landmark_names=names)
            out[f"{name}/{label}"] = {
                "mre_a": float(a.mean()),
                "mre_b": float(b.mean()),
                "diff": float(b.mean() - a.mean()),
                "p": res["wilcoxon"]["p_value"],
            }
    return out


def averaged(runs: dict[str, Path], gt_run: Path) -> dict:
    """Each model's refined landmarks averaged over the runs, scored against the ground truth
    (recovered from one run's predictions and errors), and the paired test between them."""
    errors = {}
    for model in MODELS:
        frames = [
            pd.read_csv(r / "data" / "eval" / f"{model}_predictions.csv", dtype={"image_id": str})
            for r in runs.values()
        ]
        mean_xy = np.mean([f[["x", "y"]].to_numpy() for f in frames], axis=0)
        gt = pd.read_csv(gt_run / "data" / "eval" / f"{model}_predictions.csv", dtype={"image_id": str})
        truth = ground_truth(gt_run, gt)
        err = np.linalg.norm(mean_xy - truth, axis=1) * ISBI_PIXEL_SPACING_MM
        errors[model] = err.reshape(-1, frames[0]["landmark"].nunique())
    res = compare_paired(errors["baseline"], errors["maht_net"], n_boot=2000)
    return {
        "mre_baseline": float(errors["baseline"].mean()),
        "mre_maht_net": float(errors["maht_net"].mean()),
        "sdr_2mm": {m: float((e <= 2.0).mean() * 100) for m, e in errors.items()},
        "sdr_4mm": {m: float((e <= 4.0).mean() * 100) for m, e in errors.items()},
        "max_mm": {m: float(e.max()) for m, e in errors.items()},
        "diff": float(errors["maht_net"].mean() - errors["baseline"].mean()),
        "p": res["wilcoxon"]["p_value"],
        "ci": res["bootstrap"]["mre_diff"],
    }


def ground_truth(run: Path, pred: pd.DataFrame) -> np.ndarray:
    """The ground truth of the test images in prediction order, from the dataset root in that
    run's params.yaml (the annotation files), so it needs no stored copy."""
    import yaml

    from mahtnet.data.isbi import load_landmarks

    data = yaml.safe_load((run / "params.yaml").read_text())["data"]
    root = Path(data["root"]) if Path(data["root"]).is_absolute() else run / data["root"]
    ids = list(dict.fromkeys(pred["image_id"]))
    return np.concatenate([load_landmarks(root, i, data["gt"]) for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--gt-from", type=Path, required=True, help="a run whose params name the dataset")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = {name: Path(d) for name, _, d in (r.partition("=") for r in args.run)}
    summary = {"runs": list(runs), "spread": spread(runs), "paired_per_run": paired_per_run(runs)}
    summary["seed_averaged_refined"] = averaged(runs, args.gt_from)
    write_json(args.out, summary)
    for key, v in summary["spread"].items():
        m = v["mre_mm"]
        print(f"{key:22s} MRE {m['mean']:.3f} +- {m['sd']:.3f} mm  {m['runs']}")
    for key, v in summary["paired_per_run"].items():
        print(f"{key:22s} MAHT-Net - U-Net {v['diff']:+.3f} mm, p {v['p']:.3g}")
    a = summary["seed_averaged_refined"]
    print(
        f"seed-averaged refined: U-Net {a['mre_baseline']:.3f}, "
        f"MAHT-Net {a['mre_maht_net']:.3f}, p {a['p']:.3g}"
    )


if __name__ == "__main__":
    main()
