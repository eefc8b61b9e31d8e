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
