"""Stage: the images of every split at the refinement resolution (``refine.spacing_mm``),
with the same validation split as ``preprocess`` (the same ``prepare_splits``): ``train.npz``,
``val.npz``, ``test.npz`` (:class:`mahtnet.training.refiner.FineSet`) under ``--out``, for the
refinement stage and evaluation."""

import argparse
import time
from pathlib import Path

from mahtnet.config import load_params, to_dict
from mahtnet.data.fine import prepare_fine
from mahtnet.data.preprocess import prepare_splits
from mahtnet.errors import run_cli
from mahtnet.tracking import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    d, spacing = params.data, params.refine.spacing_mm
    logged = {"data": to_dict(d), "refine.spacing_mm": spacing, "seed": params.seed}
    with start_run(params.tracking, "prepare_fine", logged) as run:
        t0 = time.perf_counter()
        sets = prepare_splits(d, params.seed, lambda samples: prepare_fine(samples, spacing))
        for name, data in sets.items():
            data.save(args.out / f"{name}.npz")
        sizes = {name: tuple(data.images.shape) for name, data in sets.items()}
        run.log_metrics({f"{name}_images": len(data) for name, data in sets.items()})
    print(f"fine images at {spacing} mm/px: {sizes} in {time.perf_counter() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
