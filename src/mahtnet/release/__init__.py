"""The released model (``scripts/release.py`` builds and checks it): what ``mahtnet predict``
and ``mahtnet serve`` use when no ``--model`` is given. ``card.json`` says what it was trained
on, how, and its Test1 / Test2 scores, lists the files beside it with their sha256, and names
in ``reader`` which file does what: the release is a recipe,
:meth:`mahtnet.decoding.recipe.ReaderSpec.release` reads it. It is a points ensemble of three
seeds of the recommended recipe (the first, seed 42, with the shape prior; ``members``: seeds 43
and 44), chosen on validation images (``docs/ensemble_choice.md``)."""

from __future__ import annotations

from pathlib import Path

RELEASE_DIR = Path(__file__).parent
CARD = RELEASE_DIR / "card.json"
MEMBER_SEEDS = (43, 44)  # the points ensemble's further members (docs/ensemble_choice.md)
MEMBERS = tuple({"model": f"maht_net_s{s}.onnx", "refiner": f"refiner_s{s}.onnx"} for s in MEMBER_SEEDS)
READER = {  # the card's "reader" block: ReaderSpec field -> shipped file (onnxruntime only: no PyTorch)
    "model": "maht_net.onnx",
    "shape_prior": "shape_prior.npz",
    "refiner": "refiner.onnx",
    "members": [dict(m) for m in MEMBERS],
}
FILES = (*(f for f in READER.values() if isinstance(f, str)), *(f for m in MEMBERS for f in m.values()))
