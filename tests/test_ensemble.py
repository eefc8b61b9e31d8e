"""Ensembles through the one decoder (mahtnet.decoding.ensemble): the members' maps averaged as
probabilities, decoded by the ordinary LandmarkReader."""

import numpy as np
import pytest

from mahtnet.codec import HeatmapCodec
from mahtnet.data.preprocess import Letterbox
from mahtnet.decoding.ensemble import EnsembleBackend, EnsembleRefiner, log_mean_exp
from mahtnet.decoding.reader import LandmarkReader

H, W, K = 32, 40, 2
BOX = Letterbox(1.0, 1.0, 0, 0, W, H)


def log_gaussians(points: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """``(K, 2)`` points -> normalised log-heatmaps ``(1, K, H, W)``."""
    ys, xs = np.mgrid[:H, :W]
    maps = np.stack([-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2) for x, y in points])
    maps -= np.log(np.exp(maps).sum(axis=(-2, -1), keepdims=True))
    return maps[None].astype(np.float32)


class Fixed:
    """A coarse backend answering every image with Gaussians at ``points``."""

    card = None

    def __init__(self, points, codec=None):
        self.points = np.asarray(points, dtype=np.float64)
        self.codec = codec or HeatmapCodec((H, W), sigma=2.0)

    def __call__(self, images):
        return np.repeat(log_gaussians(self.points), len(images), axis=0)


def read(backend) -> np.ndarray:
    reader = LandmarkReader(backend)
    points, _ = reader.coarse(np.zeros((3, H, W), np.uint8), [BOX] * 3, [None] * 3)
    return points["coarse"]


def test_log_mean_exp_is_the_log_of_the_mean_probability():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4, 5)) * 30  # far apart in scale: naive exp would under/overflow
    expected = np.log((np.exp(a.astype(np.float64)) + np.exp(b)) / 2)
    assert np.allclose(log_mean_exp([a, b]), expected, atol=1e-4)
    assert np.array_equal(log_mean_exp([a, a]), a.astype(np.float32))


def test_identical_members_read_as_one():
    pts = [[10.3, 12.6], [30.2, 20.1]]
    assert np.allclose(read(EnsembleBackend([Fixed(pts), Fixed(pts)])), read(Fixed(pts)), atol=1e-6)


def test_two_members_meet_between_close_peaks_and_the_majority_wins_far_ones():
    a, b = Fixed([[10, 12], [30, 20]]), Fixed([[12, 12], [30, 20]])
    mid = read(EnsembleBackend([a, b]))
    assert np.allclose(mid[:, 0], [11, 12], atol=0.1)  # a unimodal mixture: between the two
    far = Fixed([[10, 12], [5, 5]])  # one member far away on landmark 1: the two agreeing win
    out = read(EnsembleBackend([a, a, far]))
    assert np.allclose(out[:, 1], [30, 20], atol=0.1)


def test_members_must_read_alike():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleBackend([Fixed([[1, 1], [2, 2]])])
    other = Fixed([[1, 1], [2, 2]], HeatmapCodec((H, W), sigma=3.0))
    with pytest.raises(ValueError, match="read differently"):
        EnsembleBackend([Fixed([[1, 1], [2, 2]]), other])


def test_refiners_average_their_patch_maps():
    class Patch:
        card = None
        codec = HeatmapCodec((8, 8), sigma=1.0)

        def __init__(self, value):
            self.value = value

        def __call__(self, patches, landmark):
            return np.full((len(patches), 8, 8), self.value, np.float32)

    out = EnsembleRefiner([Patch(-1.0), Patch(-3.0)])(np.zeros((2, 8, 8), np.uint8), np.array([0, 1]))
    assert out.shape == (2, 8, 8)
    assert np.allclose(out, np.log((np.exp(-1.0) + np.exp(-3.0)) / 2))
