"""The released model (``scripts/release.py`` builds and checks it): what ``mahtnet predict``
and ``mahtnet serve`` use when no ``--model`` is given. ``card.json`` says what it was trained
on, how, and its Test1 / Test2 scores, lists the files beside it with their sha256, and names
in ``reader`` which file does what: the release is a recipe,
:meth:`mahtnet.decoding.recipe.ReaderSpec.release` reads it."""

from __future__ import annotations

from pathlib import Path

RELEASE_DIR = Path(__file__).parent
CARD = RELEASE_DIR / "card.json"
READER = {  # the card's "reader" block: ReaderSpec field -> shipped file (onnxruntime only: no PyTorch)
    "model": "maht_net.onnx",
    "shape_prior": "shape_prior.npz",
    "refiner": "refiner.onnx",
}
FILES = tuple(READER.values())
