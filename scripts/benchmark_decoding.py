"""Latency of the evaluation options per test image -> ``metrics/benchmark_decoding.json``.

On one ISBI-sized image (network input 320x256, fine image 800x645 at 0.3 mm/px) with the
U-Net baseline's architecture (random weights: latency does not depend on them):

- ``coarse``: forward pass + arg-max (sub-pixel) decoding, batch 1;
- ``shape``: + shape-consistent decoding (top-3 peaks, shape model of 150 synthetic shapes);
- ``refine``: + the refiner on the 19 landmark patches (64x64);
- ``tta_5`` / ``tta_9``: test-time augmentation with 5 (+/-2 px shifts) and 9 transforms;
- ``ensemble_2``: two checkpoints (two forward passes).

Medians of ``--repeats`` runs after one warm-up, and each option's ratio to ``coarse``, so that
machines (and a busy CPU) compare by ratio. Usage::

    python scripts/benchmark_decoding.py [--repeats 5] [--threads 2] [--out metrics/benchmark_decoding.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mahtnet.codec import HeatmapCodec  # noqa: E402
from mahtnet.data.preprocess import PreparedSet  # noqa: E402
from mahtnet.data.synthetic import load_shape_model, sample_landmarks  # noqa: E402
from mahtnet.inference import predict  # noqa: E402
from mahtnet.io import write_json  # noqa: E402
from mahtnet.models.unet import UNet  # noqa: E402
from mahtnet.refine import FineSet, build_refiner, patch_codec, refine_points  # noqa: E402
from mahtnet.shape_decode import ShapePrior, prepared_to_mm, shape_consistent_decode  # noqa: E402
from mahtnet.tta import predict_tta, tta_transforms  # noqa: E402

H, W, K = 320, 256, 19


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def one_image(rng: np.random.Generator) -> tuple[PreparedSet, FineSet]:
    image = rng.integers(0, 255, (1, H, W), dtype=np.uint8)
    scale = W / 1935  # letterbox of a 1935 x 2400 image at 0.1 mm/px
    box = np.array([[scale, scale, 0, 0, 1935, 2400]])
    points = rng.uniform(200, 1700, (1, K, 2))
    prepared = PreparedSet(
        np.array(["x"]), image, points * scale, points, box, np.array([0.1]), points, points, points
    )
    fine_image = rng.integers(0, 255, (1, 800, 645), dtype=np.uint8)
    fine = FineSet(
        np.array(["x"]),
        fine_image,
        np.array([[800, 645]]),
        np.array([1 / 3]),
        points,
        np.array([0.1]),
        points,
        points,
    )
    return prepared, fine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "benchmark_decoding.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    prepared, fine = one_image(rng)
    model, model_b = UNet(1, K, 16, 4).eval(), UNet(1, K, 16, 4).eval()
    refiner = build_refiner(K, 16, 3).eval()
    codec, cpu = HeatmapCodec((H, W), 2.0), torch.device("cpu")
    shape_model = load_shape_model()
    prior = ShapePrior.fit(np.stack([sample_landmarks(rng, shape_model) for _ in range(150)]))

    def shape_decode(logs, index):
        return shape_consistent_decode(logs, codec, prior, prepared_to_mm(prepared, index))[0]

    def coarse(decode=None):
        return predict(model, prepared.images, codec, "logits", cpu, 1, decode=decode)[0]

    cases = {
        "coarse": coarse,
        "shape": lambda: coarse(shape_decode),
        "refine": lambda: refine_points(
            refiner, fine, prepared.to_original(coarse()), 64, patch_codec(64, 2.0), cpu
        ),
        "tta_5": lambda: predict_tta(
            model, prepared.images, codec, "logits", cpu, tta_transforms([2], []), 1
        ),
        "tta_9": lambda: predict_tta(
            model, prepared.images, codec, "logits", cpu, tta_transforms([2, 4], []), 1
        ),
        "ensemble_2": lambda: (coarse(), predict(model_b, prepared.images, codec, "logits", cpu, 1)),
    }
    ms = {name: median_ms(fn, args.repeats) for name, fn in cases.items()}
    result = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "ms_per_image": ms,
        "ratio_to_coarse": {k: v / ms["coarse"] for k, v in ms.items()},
        "note": "refine includes its coarse pass; shape and refine are added to coarse, not alone",
    }
    write_json(args.out, result)
    for name, value in ms.items():
        print(f"{name:12s} {value:8.1f} ms  x{value / ms['coarse']:.2f}")


if __name__ == "__main__":
    main()
