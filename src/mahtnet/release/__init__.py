"""The released model (``scripts/release.py`` builds and checks it): what ``mahtnet predict``
and ``mahtnet serve`` use when no ``--model`` is given. ``card.json`` says what it was trained
on, how, and its Test1 / Test2 scores; the files it lists sit beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

RELEASE_DIR = Path(__file__).parent
CARD = RELEASE_DIR / "card.json"
FILES = ("maht_net.onnx", "shape_prior.npz", "refiner.onnx")  # onnxruntime only: no PyTorch


def use_release(args: argparse.Namespace) -> None:
    """Without ``--model``: the released coarse network, and its shape prior and refiner unless
    the command names its own. A missing release is a clear error."""
    if args.model is not None:
        return
    missing = [name for name in FILES if not (RELEASE_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{RELEASE_DIR}: no released model ({', '.join(missing)} missing); give --model, or build "
            "the release with scripts/release.py build"
        )
    args.model = RELEASE_DIR / "maht_net.onnx"
    args.shape_prior = args.shape_prior or RELEASE_DIR / "shape_prior.npz"
    args.refiner = args.refiner or RELEASE_DIR / "refiner.onnx"
