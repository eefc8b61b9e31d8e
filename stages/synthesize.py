"""Stage: write the synthetic cephalogram dataset (ISBI 2015 layout)."""

import argparse
import time
from pathlib import Path

from mahtnet.config import load_params, to_dict
from mahtnet.data.synthetic import generate_dataset
from mahtnet.errors import run_cli
from mahtnet.tracking import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write")
    args = parser.parse_args()
    params = load_params()
    p = params.synthetic
    with start_run(params.tracking, "synthesize", {"synthetic": to_dict(p)}) as run:
        t0 = time.perf_counter()
        generate_dataset(
            args.out,
            n_train=p.n_train,
            n_test=p.n_test,
            seed=p.seed,
            width=p.width,
            height=p.height,
            pixel_spacing_mm=p.pixel_spacing_mm,
            annotator_sd_mm=p.annotator_sd_mm,
            pose_rotation_deg=p.pose_rotation_deg,
            pose_scale=p.pose_scale,
            pose_shift_mm=p.pose_shift_mm,
        )
        seconds = time.perf_counter() - t0
        run.log_metrics({"images": p.n_train + p.n_test, "seconds": seconds})
    print(f"wrote {p.n_train} + {p.n_test} synthetic images to {args.out} in {seconds:.1f}s")


if __name__ == "__main__":
    run_cli(main)
