"""Stage: letterbox the dataset to the network input size and carve the validation split.

Writes ``train.npz``, ``val.npz`` (from the training split) and ``test.npz`` under ``--out``.
"""

import argparse
import time
from pathlib import Path

from mahtnet.config import load_params, to_dict
from mahtnet.data.preprocess import prepare, prepare_splits
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    d, pp = params.data, params.preprocess
    logged = {"data": to_dict(d), "preprocess": to_dict(pp), "seed": params.seed}
    with start_run(params.tracking, "preprocess", logged) as run:
        t0 = time.perf_counter()
        sets = prepare_splits(d, params.seed, lambda samples: prepare(samples, pp.height, pp.width))
        for name, data in sets.items():
            data.save(args.out / f"{name}.npz")
        summary = {f"{name}_images": len(data) for name, data in sets.items()}
        summary["seconds"] = time.perf_counter() - t0
        write_json(args.out / "summary.json", {**summary, "val_ids": sets["val"].ids.tolist()})
        run.log_metrics(summary)
    print(f"prepared {summary} at {pp.height}x{pp.width} into {args.out}")


if __name__ == "__main__":
    run_cli(main)
