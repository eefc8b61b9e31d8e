"""One decoding recipe: :class:`ReaderSpec` says how landmarks are read, :func:`load_reader`
loads it into a :class:`~mahtnet.decoding.reader.LandmarkReader`.

A recipe names the files (the coarse network and, optionally, a shape prior, a refiner and a
calibration) and the decoding options (test-time augmentation, peaks kept per heatmap, a pixel
spacing that wins over the images' own); it is frozen and checks its own values only.
:func:`load_reader` loads the files and runs every check that needs them together: each file
exists, a model folder's files are the ones its card lists, the shape prior and the refiner are
of the model's landmarks, a calibration was fitted for this model and on the landmarks the
reader emits. ``mahtnet predict`` and ``mahtnet serve``, the evaluate and calibrate stages,
``mahtnet benchmark`` and ``scripts/release.py`` all configure their reader this way.

Where a recipe comes from:

* :class:`ReaderSpec` itself: files given one by one (a command line: :func:`mahtnet.cli.reader_spec`);
* :meth:`ReaderSpec.from_folder`: a **model folder**, whose ``card.json`` lists its files
  (``files``: name -> ``sha256``, ``bytes``) and says in ``reader`` which file is which, with
  :class:`ReaderSpec`'s own keys (``{"model": "maht_net.onnx", "shape_prior": "shape_prior.npz",
  "refiner": "refiner.onnx"}``, and optionally ``calibration``, ``tta_shifts_px``,
  ``tta_scales``, ``candidates``);
* :meth:`ReaderSpec.release`: the released model (:mod:`mahtnet.release`), such a folder.

A recipe with ``members`` (a card's ``"members": [{"model": ..., "refiner": ...}, ...]``) is a
**points ensemble**: each member's coarse network and refiner read with the recipe's shape prior
and options, the landmarks averaged (:class:`mahtnet.decoding.ensemble.PointsEnsembleReader`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

import mahtnet.release as shipped
from mahtnet.decoding.backends import load_backend, load_refiner
from mahtnet.decoding.calibration import ErrorCalibration
from mahtnet.decoding.conventions import Convention
from mahtnet.decoding.ensemble import PointsEnsembleReader
from mahtnet.decoding.reader import LandmarkReader
from mahtnet.decoding.shape import ShapePrior
from mahtnet.decoding.tta import tta_transforms
from mahtnet.models.card import sha256, synthetic_warning

CARD_NAME = "card.json"
FILE_FIELDS = ("model", "shape_prior", "refiner", "calibration", "adaptation")
CARD_KEYS = (*FILE_FIELDS, "tta_shifts_px", "tta_scales", "candidates", "members")  # a card's "reader" block
MEMBER_FIELDS = ("model", "refiner")  # what each further member of an ensemble brings
TTA_SHIFTS_PX = (2.0,)  # --tta: the transforms screened on the ISBI validation images (docs/evaluation.md)
DECODING_NAMES = {
    "coarse": "arg-max",
    "shape": "shape-consistent",
    "refined": "refined",
    "adapted": "adapted",
}

# low_confidence below these, per decoding (the coarse heatmap's confidence, or the refiner's):
# about the 1st-5th percentile on the ISBI validation images (docs/predict.md)
LOW_CONFIDENCE = {
    "arg-max": 0.4,
    "shape-consistent": 0.4,
    "refined": 0.2,
    "adapted": 0.2,
}  # adapted: refined + offsets


@dataclasses.dataclass(frozen=True)
class Member:
    """A further member of a points ensemble: its coarse network and (with the recipe's refiner)
    its refiner; the shape prior and decoding options are the recipe's."""

    model: Path
    refiner: Path | None = None

    def __post_init__(self):
        for name in MEMBER_FIELDS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class ReaderSpec:
    """How landmarks are read.

    ``model``: the coarse network, a checkpoint (``.pt``) or its ``.onnx`` export;
    ``shape_prior``: the shape_prior stage's model (shape-consistent decoding, ``candidates``
    peaks per heatmap); ``refiner``: a train_refine checkpoint or its ``.onnx`` (coarse-to-fine);
    ``calibration``: a calibrate stage file (each landmark's expected error, mm);
    ``adaptation``: a clinic's conventions learned by ``mahtnet adapt`` (``adaptation.json``);
    ``tta_shifts_px`` / ``tta_scales``: test-time augmentation (both empty: off);
    ``pixel_spacing_mm``: mm per pixel of the images read, winning over a file's own (None: the
    file's, where it has one); ``device`` and ``threads`` (0: the runtime's default): where the
    networks run; ``card``: the ``card.json`` of the model folder the files come from;
    ``members``: further :class:`Member` s of a points ensemble (empty: one network).
    """

    model: Path
    shape_prior: Path | None = None
    refiner: Path | None = None
    calibration: Path | None = None
    adaptation: Path | None = None
    tta_shifts_px: tuple[float, ...] = ()
    tta_scales: tuple[float, ...] = ()
    candidates: int = 3
    pixel_spacing_mm: float | None = None
    device: str = "auto"
    threads: int = 0
    card: Path | None = None
    members: tuple[Member, ...] = ()

    def __post_init__(self):
        for name in (*FILE_FIELDS, "card"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "tta_shifts_px", tuple(float(s) for s in self.tta_shifts_px))
        object.__setattr__(self, "tta_scales", tuple(float(s) for s in self.tta_scales))
        self.transforms()  # TTA values: positive and finite
        spacing = self.pixel_spacing_mm
        if spacing is not None and not (spacing > 0 and math.isfinite(spacing)):
            raise ValueError(f"--pixel-spacing: must be a positive number of mm, got {spacing}")
        if not (isinstance(self.candidates, int) and self.candidates >= 1):
            raise ValueError(f"candidates: must be a whole number of at least 1, got {self.candidates!r}")
        if self.threads < 0:
            raise ValueError(f"--threads: must be at least 0, got {self.threads}")
        object.__setattr__(self, "members", tuple(self.members))
        for i, m in enumerate(self.members):
            if not isinstance(m, Member):
                raise ValueError(f"members[{i}]: not a Member (a model and a refiner), got {m!r}")
            if (m.refiner is None) != (self.refiner is None):
                raise ValueError(
                    f"members[{i}]: every member needs a refiner exactly when the recipe has one"
                )

    @classmethod
    def from_folder(cls, folder: str | Path, **options) -> ReaderSpec:
        """The recipe of a model folder: its ``card.json``'s ``reader`` block, each file named
        there one the card lists, every listed file present; ``options``: the other fields
        (``device``, ``threads``, ``pixel_spacing_mm``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model folder")
        path = folder / CARD_NAME
        card = read_card(path)
        reader, files = card.get("reader"), card.get("files")
        if not isinstance(files, dict):
            raise ValueError(f"{path}: no 'files' block (each file's sha256 and bytes)")
        if not isinstance(reader, dict) or "model" not in reader:
            raise ValueError(f"{path}: no 'reader' block naming the model file")
        unknown = sorted(set(reader) - set(CARD_KEYS))
        if unknown:
            raise ValueError(
                f"{path}: unknown reader key {', '.join(unknown)} (known: {', '.join(CARD_KEYS)})"
            )
        values = dict(reader)

        def listed(key: str, name) -> Path:
            if not isinstance(name, str) or name not in files:
                raise ValueError(f"{path}: reader.{key} {name!r} is not one of its files")
            return folder / name

        for key in set(FILE_FIELDS) & set(reader):
            values[key] = listed(key, reader[key])
        members = reader.get("members", [])
        if not isinstance(members, list) or not all(
            isinstance(m, dict) and "model" in m and set(m) <= set(MEMBER_FIELDS) for m in members
        ):
            raise ValueError(f"{path}: reader.members must be a list of {{model, refiner}} objects")
        values["members"] = tuple(
            Member(**{k: listed(f"members[{i}].{k}", v) for k, v in m.items()}) for i, m in enumerate(members)
        )
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / missing[0]}: listed in {path} but missing")
        try:
            return cls(**values, card=path, **options)
        except (TypeError, ValueError) as err:  # a reader value of the wrong kind
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def release(cls, **options) -> ReaderSpec:
        """The released model (:mod:`mahtnet.release`); a clear error where it is missing."""
        folder = shipped.RELEASE_DIR
        missing = [name for name in (*shipped.FILES, CARD_NAME) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: no released model ({', '.join(missing)} missing); give --model, or build "
                "the release with scripts/release.py build"
            )
        return cls.from_folder(folder, **options)

    def transforms(self) -> list[np.ndarray] | None:
        """The TTA transforms (:func:`mahtnet.decoding.tta.tta_transforms`); None when off."""
        if not (self.tta_shifts_px or self.tta_scales):
            return None
        return tta_transforms(self.tta_shifts_px, self.tta_scales)

    def files(self) -> dict[str, Path]:
        """The recipe's files by field (those it has; an ensemble's further members as
        ``members[i].model`` / ``.refiner``)."""
        out = {name: getattr(self, name) for name in FILE_FIELDS if getattr(self, name) is not None}
        for i, m in enumerate(self.members):
            out |= {f"members[{i}].{k}": getattr(m, k) for k in MEMBER_FIELDS if getattr(m, k) is not None}
        return out

    def describe(self) -> dict[str, Any]:
        """The recipe as its results may show it, without a path of this machine: its name (the
        card's, else the model file's), each file by name and sha256, the decoding options."""
        card = read_card(self.card) if self.card is not None else {}
        adaptation = card.get("adaptation") if self.adaptation is not None else None
        return {
            "name": card.get("name", self.model.name),
            "adaptation": None
            if adaptation is None
            else {k: adaptation.get(k) for k in ("method", "k", "created_at")},
            "files": {name: {"file": p.name, "sha256": sha256(p)} for name, p in self.files().items()},
            "tta_shifts_px": list(self.tta_shifts_px),
            "tta_scales": list(self.tta_scales),
            "candidates": self.candidates,
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "ensemble_members": 1 + len(self.members),
        }


def read_card(path: Path) -> dict[str, Any]:
    """A model folder's ``card.json`` (a JSON object); a one-line error naming it otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; a model folder holds a {CARD_NAME} that lists its files")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable card ({err})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: not a card (a JSON object)")
    return card


def load_reader(
    spec: ReaderSpec, batch_size: int = 8, warn: bool = False
) -> LandmarkReader | PointsEnsembleReader:
    """The reader of ``spec`` (``batch_size`` images per forward pass), after every check;
    ``warn``: say on stderr when the model was trained on synthetic images (for new X-rays:
    ``mahtnet predict`` and ``mahtnet serve``); with ``spec.members``, a points ensemble."""
    for name, path in spec.files().items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {name.replace('_', ' ')} not found")
    check_card(spec)
    backend = load_backend(spec.model, spec.device, spec.threads)
    warning = synthetic_warning(backend.card) if warn else None
    if warning:
        print(warning, file=sys.stderr)
    names = tuple(backend.card.landmark_names)
    prior = refiner = calibration = None
    if spec.shape_prior is not None:
        prior = ShapePrior.load(spec.shape_prior)
        if prior.num_landmarks != len(names):
            raise ValueError(
                f"{spec.shape_prior}: a shape prior of {prior.num_landmarks} landmarks, but {spec.model} "
                f"reads {len(names)}"
            )
    if spec.refiner is not None:
        refiner = load_refiner(spec.refiner, spec.device, spec.threads)
        if tuple(refiner.card.landmark_names) != names:
            raise ValueError(f"{spec.refiner}: a refiner of other landmarks than {spec.model} reads")
    if spec.calibration is not None:
        calibration = ErrorCalibration.load(spec.calibration)
        calibration.check_model(backend.card.to_dict(), spec.calibration)
    adaptation = None if spec.adaptation is None else load_convention(spec.adaptation)
    if spec.members:
        readers = [
            LandmarkReader(backend, prior, refiner, spec.transforms(), spec.candidates, None, batch_size)
        ]
        for i, m in enumerate(spec.members):
            b = load_backend(m.model, spec.device, spec.threads)
            r = None if m.refiner is None else load_refiner(m.refiner, spec.device, spec.threads)
            if tuple(b.card.landmark_names) != names or (
                r is not None and tuple(r.card.landmark_names) != names
            ):
                raise ValueError(f"members[{i}]: {m.model.name} reads other landmarks than {spec.model.name}")
            readers.append(LandmarkReader(b, prior, r, spec.transforms(), spec.candidates, None, batch_size))
        reader = PointsEnsembleReader(readers, calibration, adaptation)
    else:
        reader = LandmarkReader(
            backend,
            prior,
            refiner,
            spec.transforms(),
            spec.candidates,
            calibration,
            batch_size,
            adaptation=adaptation,
        )
    fitted = None if calibration is None else calibration.model.get("decoding")
    emitted = DECODING_NAMES[[v for v in reader.variants() if v != "adapted"][-1]]
    if fitted is not None and fitted != emitted:  # e.g. fitted on refined landmarks, used without the refiner
        raise ValueError(
            f"{spec.calibration}: fitted on {fitted} landmarks, but this run emits {emitted} ones "
            "(give predict the shape prior and refiner the calibrate stage used)"
        )
    if spec.threads and "torch" in sys.modules:  # a checkpoint's PyTorch (ONNX sessions have theirs)
        sys.modules["torch"].set_num_threads(spec.threads)
    return reader


def load_convention(path: Path) -> Convention:
    """A clinic's conventions (``mahtnet adapt``'s ``adaptation.json``); a one-line error naming
    the file otherwise."""
    try:
        return Convention.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not an adaptation file ({err})") from None


def check_card(spec: ReaderSpec) -> None:
    """The files of ``spec`` that its model folder's card lists have the card's sha256 (a file
    given instead of the folder's is not the card's business)."""
    if spec.card is None:
        return
    files = read_card(spec.card).get("files") or {}
    for path in spec.files().values():
        listed = files.get(path.name) if path.parent == spec.card.parent else None
        if listed is None:
            continue
        if not isinstance(listed, dict) or sha256(path) != listed.get("sha256"):
            raise ValueError(f"{path}: not the file {spec.card} lists (sha256 differs: damaged or replaced)")
