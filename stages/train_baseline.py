"""Stage: train the model of ``params.yaml`` (``model.name``: the U-Net baseline by default, or
MAHT-Net); keep the best checkpoint by validation MRE."""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mahtnet.codec import HeatmapCodec  # noqa: E402
from mahtnet.config import load_params, to_dict  # noqa: E402
from mahtnet.data.preprocess import PreparedSet  # noqa: E402
from mahtnet.io import write_json  # noqa: E402
from mahtnet.tracking import start_run  # noqa: E402
from mahtnet.train import train  # noqa: E402


def load_val_targets(path: Path, codec) -> np.ndarray:
    """Validation heatmaps from the heatmap stage, checked against the current codec."""
    if not path.is_file():
        raise FileNotFoundError(f"heatmap targets not found: {path} (run the heatmaps stage)")
    with np.load(path) as z:
        stored = (float(z["sigma"]), int(z["stride"]), tuple(int(v) for v in z["input_size"]))
        if stored != (codec.sigma, codec.stride, codec.input_size):
            raise ValueError(f"{path} was made with (sigma, stride, input) {stored}, params say {codec}")
        return z["val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--targets", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--history", required=True, type=Path, help="per-epoch CSV (DVC plot)")
    parser.add_argument("--metrics", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    train_set = PreparedSet.load(args.prepared / "train.npz")
    val_set = PreparedSet.load(args.prepared / "val.npz")
    val_targets = load_val_targets(args.targets, HeatmapCodec.from_params(params.preprocess, params.heatmap))
    with start_run(params.tracking, "train_baseline", to_dict(params)) as run:
        result = train(params, train_set, val_set, args.checkpoint, args.history, run, val_targets)
        summary = dataclasses.asdict(result)
        write_json(args.metrics, summary)
        run.log_metrics({k: v for k, v in summary.items() if k != "device"})
        run.set_tags({"checkpoint": args.checkpoint})
        run.log_artifact(args.history)
        run.log_artifact(args.metrics)
    print(
        f"best epoch {result.best_epoch}: val MRE {result.best_val_mre_mm:.3f} mm, "
        f"{result.epochs_run} epochs in {result.wall_time_s / 60:.1f} min on {result.device}"
    )


if __name__ == "__main__":
    main()
