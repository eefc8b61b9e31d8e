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
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mahtnet.codec import HeatmapCodec
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.data.synthetic import load_shape_model, sample_landmarks
from mahtnet.decoding import LandmarkReader, TorchBackend, TorchRefiner
from mahtnet.decoding.shape import ShapePrior
from mahtnet.decoding.tta import tta_transforms
from mahtnet.io import write_json
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import ModelCard
from mahtnet.models.factory import build_refiner
from mahtnet.models.unet import UNet

ROOT = Path(__file__).resolve().parents[1]

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

    backend = TorchBackend.from_module(model, "logits", codec, cpu)
    card = ModelCard(
        "(random)", "", "pytorch", "refiner", (64, 64), 2.0, 1, tuple(LANDMARK_NAMES), None, "refiner", 0.3
    )
    refine = TorchRefiner.from_module(refiner, card, cpu)

    def read(**options):
        return LandmarkReader(backend, batch_size=1, **options).read_prepared(prepared, fine).final

    cases = {
        "coarse": read,
        "shape": lambda: read(prior=prior),
        "refine": lambda: read(refiner=refine),
        "tta_5": lambda: read(transforms=tta_transforms([2], [])),
        "tta_9": lambda: read(transforms=tta_transforms([2, 4], [])),
        "ensemble_2": lambda: (
            read(),
            LandmarkReader(TorchBackend.from_module(model_b, "logits", codec, cpu))
            .read_prepared(prepared)
            .final,
        ),
    }
    ms = {
        name: median_ms(fn, args.repeats)
        for name, fn in tqdm(cases.items(), desc="benchmark decoding", unit="option", disable=None)
    }
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
