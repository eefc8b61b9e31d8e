"""Ensembles through the one decoder: several coarse networks (or refiners) of the same recipe
read as one backend.

Every backend of :mod:`mahtnet.decoding.backends` returns log-probability maps (a spatial
log-softmax per landmark). An ensemble returns the log of the members' **mean probability**
(``logsumexp - log M``), so the :class:`~mahtnet.decoding.reader.LandmarkReader` decodes it like
any single network: arg-max with DARK sub-pixel, shape-consistent peaks, confidence, the
refiner's patches. Averaging probabilities rather than points keeps a member's second peak in
the running (shape decoding chooses among the mixture's peaks) and is what the members'
disagreement lowers: two members torn between places give a flatter, less confident map.

Members must agree on what they read (input size, heatmap codec, landmark names); the
ensemble's card is the first member's (the one whose training the release card describes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mahtnet.decoding.backends import load_backend, load_refiner
from mahtnet.decoding.reader import Readout


def log_mean_exp(logs: Sequence[np.ndarray]) -> np.ndarray:
    """The log of the mean of ``exp(logs)`` over the members, computed stably (float32 in,
    float32 out)."""
    stack = np.stack([np.asarray(x, dtype=np.float64) for x in logs])
    top = stack.max(axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    return (np.log(np.exp(stack - top).mean(axis=0)) + top).astype(np.float32)


def _check_members(members: Sequence, what: str) -> None:
    if len(members) < 2:
        raise ValueError(f"an ensemble of {what}s needs at least two members, got {len(members)}")
    first = members[0]

    def reads(m) -> tuple:
        return m.codec.input_size, m.codec.sigma, m.codec.stride

    for m in members[1:]:
        if reads(m) != reads(first):
            raise ValueError(f"ensemble {what}s read differently ({m.codec} vs {first.codec})")
        a, b = getattr(m, "card", None), getattr(first, "card", None)
        if a is not None and b is not None and tuple(a.landmark_names) != tuple(b.landmark_names):
            raise ValueError(f"ensemble {what}s of different landmarks")


class EnsembleBackend:
    """Coarse backends averaged: ``(B, H, W)`` uint8 -> the log of the members' mean heatmap
    ``(B, K, h, w)``. :meth:`members_logs` gives each member's own maps."""

    def __init__(self, members: Sequence):
        _check_members(members, "coarse network")
        self.members = list(members)
        self.card, self.codec = self.members[0].card, self.members[0].codec

    def members_logs(self, images: np.ndarray) -> list[np.ndarray]:
        return [m(images) for m in self.members]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return log_mean_exp(self.members_logs(images))


class EnsembleRefiner:
    """Refiner backends averaged on the same patches: the log of the mean patch probability."""

    def __init__(self, members: Sequence):
        _check_members(members, "refiner")
        self.members = list(members)
        self.card, self.codec = self.members[0].card, self.members[0].codec

    def __call__(self, patches: np.ndarray, landmark: np.ndarray) -> np.ndarray:
        return log_mean_exp([m(patches, landmark) for m in self.members])


def load_ensemble(paths: Sequence, device: str = "auto", threads: int = 0) -> EnsembleBackend:
    """Coarse networks (``.onnx`` or checkpoints, mixed as needed) as one backend."""
    return EnsembleBackend([load_backend(p, device, threads) for p in paths])


def load_ensemble_refiner(paths: Sequence, device: str = "auto", threads: int = 0) -> EnsembleRefiner:
    """Refiners (``.onnx`` or checkpoints) as one refiner backend."""
    return EnsembleRefiner([load_refiner(p, device, threads) for p in paths])


class PointsEnsembleReader:
    """Several :class:`~mahtnet.decoding.reader.LandmarkReader` s of the same recipe (each its own
    coarse network and refiner, the same shape prior and decoding options) read as one: every
    variant's landmarks are the members' **mean point**, the confidence their mean. This is the
    ensemble the release ships (chosen on validation over the heatmap average:
    ``docs/ensemble_choice.md``). A clinic's conventions (``adaptation``) and the ``calibration``
    apply to the mean; the trust signals are the first member's (its shape prior) on the mean
    landmarks, plus ``members_spread_mm``: each landmark's mean distance of the members' final
    points from their mean (NaN where the spacing is unknown), the members' disagreement.

    It reads like a LandmarkReader (``read``, ``read_images``, ``read_prepared``,
    ``variants``); ``backend``, ``codec``, ``prior`` and ``refiner`` are the first member's."""

    def __init__(self, members: Sequence, calibration=None, adaptation=None):
        if len(members) < 2:
            raise ValueError(f"a points ensemble needs at least two readers, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if m.variants() != first.variants() or m.codec.input_size != first.codec.input_size:
                raise ValueError("ensemble members read differently (their variants or input size differ)")
            if tuple(m.backend.card.landmark_names) != tuple(first.backend.card.landmark_names):
                raise ValueError("ensemble members of different landmarks")
        if any(m.adaptation is not None or m.calibration is not None for m in members):
            raise ValueError("ensemble members read plain: the ensemble applies adaptation and calibration")
        self.members = list(members)
        self.backend, self.codec, self.prior, self.refiner = (
            first.backend,
            first.codec,
            first.prior,
            first.refiner,
        )
        self.batch_size, self.refine_batch_size = first.batch_size, first.refine_batch_size
        self.calibration, self.adaptation = calibration, adaptation

    def variants(self) -> list[str]:
        return self.members[0].variants() + ["adapted"] * (self.adaptation is not None)

    @property
    def num_landmarks(self) -> int:
        return self.members[0].num_landmarks

    def read(self, images, boxes, spacing, fine=None):
        return self.combine([m.read(images, boxes, spacing, fine) for m in self.members], spacing)

    def read_prepared(self, data, fine=None):
        return self.combine([m.read_prepared(data, fine) for m in self.members], list(data.spacing))

    def read_images(self, images, spacing):
        return self.combine([m.read_images(images, spacing) for m in self.members], spacing)

    def combine(self, reads: Sequence, spacing: Sequence[float | None]):
        """The members' readouts of the same images as one :class:`Readout`."""
        landmarks = {v: np.mean([r.landmarks[v] for r in reads], axis=0) for v in reads[0].landmarks}
        conf = np.mean([r.confidence for r in reads], axis=0)
        decoding = list(reads[0].decoding)
        final = np.stack([r.final for r in reads])  # (M, N, K, 2) original px
        mm = np.array([np.nan if s is None else s for s in spacing], dtype=np.float64)[:, None]
        spread = np.linalg.norm(final - final.mean(axis=0), axis=-1).mean(axis=0) * mm
        if self.adaptation is not None:  # the clinic's conventions on the mean, where the spacing is known
            adapted = landmarks[list(landmarks)[-1]].copy()
            for i, s in enumerate(spacing):
                if s is not None:
                    adapted[i] = self.adaptation.apply(adapted[i], s)
                    decoding[i] = "adapted"
            landmarks["adapted"] = adapted
        expected = None if self.calibration is None else self.calibration.expected_error(conf)
        signals = None
        if self.prior is not None:
            coarse_conf = np.mean([r.signals["coarse_confidence"] for r in reads], axis=0)
            signals = self.members[0].signals(landmarks, coarse_conf, spacing) | {"members_spread_mm": spread}
        return Readout(landmarks, conf, decoding, expected, signals)
