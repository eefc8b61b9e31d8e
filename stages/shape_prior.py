"""Stage: the statistical shape model of the training annotations (Procrustes + PCA, in mm)
that shape-consistent decoding scores heatmap peaks with (:mod:`mahtnet.decoding.shape`)."""

import argparse
import time
from pathlib import Path

from mahtnet.config import load_params
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding.shape import fit_prior_from_prepared
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.tracking import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, type=Path, help="training split (train.npz)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    with start_run(params.tracking, "shape_prior", {"prepared": str(args.prepared)}) as run:
        t0 = time.perf_counter()
        train = PreparedSet.load(args.prepared)
        prior = fit_prior_from_prepared(train)
        prior.save(args.out)
        summary = {
            "shapes": len(train),
            "modes": int(prior.modes.shape[0]),
            "residual_sd_mm": dict(zip(LANDMARK_NAMES, map(float, prior.residual_sd), strict=True)),
            "seconds": time.perf_counter() - t0,
        }
        write_json(args.metrics, summary)
        run.log_metrics({"shapes": summary["shapes"], "modes": summary["modes"]})
        run.log_artifact(args.metrics)
    print(f"shape prior from {len(train)} training shapes: {summary['modes']} modes -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
