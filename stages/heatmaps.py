"""Stage: Gaussian heatmap targets of the validation images at each output stride the models
use (the U-Net's 1 and MAHT-Net's ``model.output_stride``), a picture of a few training
targets, and the codec's encode -> decode round-trip error (a sanity metric)."""

import argparse
import time
from pathlib import Path

import numpy as np

from mahtnet.analysis.plots import plot_targets
from mahtnet.codec import HeatmapCodec, encode_set
from mahtnet.config import load_params, to_dict
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding.reader import read_peaks
from mahtnet.errors import run_cli
from mahtnet.io import atomic_write, write_json
from mahtnet.tracking import start_run


def save_targets(path: Path, codec: HeatmapCodec, targets: np.ndarray, visible: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                val=targets,
                val_visible=visible,
                sigma=codec.sigma,
                stride=codec.stride,
                input_size=codec.input_size,
            )

    atomic_write(path, write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder for stride<s>.npz targets")
    parser.add_argument("--plot", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    strides = sorted({1, params.model.output_stride})
    codecs = [HeatmapCodec.from_params(params.preprocess, params.heatmap, s) for s in strides]
    codec = codecs[-1]
    logged = {
        "heatmap": to_dict(params.heatmap),
        "preprocess": to_dict(params.preprocess),
        "model.output_stride": params.model.output_stride,
    }
    with start_run(params.tracking, "heatmaps", logged) as run:
        t0 = time.perf_counter()
        errors = []
        for codec in codecs:
            for split in ("train", "val"):
                data = PreparedSet.load(args.prepared / f"{split}.npz")
                targets, visible = encode_set(codec, data.landmarks)
                decoded, _ = read_peaks(targets.astype(np.float32), codec, is_log=False)
                errors.append(np.linalg.norm(decoded - data.landmarks, axis=-1)[visible])
                if split == "train" and codec is codecs[-1]:
                    n = min(3, len(data))
                    plot_targets(data.images[:n], targets[:n], data.landmarks[:n], data.ids[:n], args.plot)
            # validation targets only: training re-encodes its augmented samples
            save_targets(args.out / f"stride{codec.stride}.npz", codec, targets, visible)
        err = np.concatenate(errors)
        summary = {
            "roundtrip_mean_px": float(err.mean()),
            "roundtrip_max_px": float(err.max()),
            "heatmap_height": codec.heatmap_size[0],
            "heatmap_width": codec.heatmap_size[1],
            "seconds": time.perf_counter() - t0,
        }
        write_json(args.metrics, summary)
        run.log_metrics(summary)
        run.log_artifact(args.plot)
    print(
        f"targets at strides {strides} ({codec}): round trip mean {err.mean():.4f} px, max {err.max():.4f} px"
    )


if __name__ == "__main__":
    run_cli(main)
