import numpy as np
import pytest

from mahtnet.codec import HeatmapCodec
from mahtnet.decoding.shape import (
    ShapePrior,
    choose_peaks,
    fit_prior_from_prepared,
    prepared_to_mm,
    shape_consistent_decode,
    top_k_peaks,
)

K = 19
SPACING = 0.5  # mm per network-input px in the decode tests


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _similar(shape: np.ndarray, rng: np.random.Generator, angle: float, scale: float) -> np.ndarray:
    """``shape (K, 2)`` rotated by up to ``angle``, scaled by up to ``scale``, translated."""
    r = _rotation(rng.uniform(-angle, angle)) * rng.uniform(1 / scale, scale)
    return shape @ r.T + rng.uniform(-5, 5, size=2)


@pytest.fixture(scope="module")
def population():
    """A mean shape in mm (a 60 x 60 mm skull-like cloud), 4 smooth modes, a sampler."""
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 60, size=(K, 2))
    modes = rng.normal(size=(4, K, 2))
    modes /= np.linalg.norm(modes.reshape(4, -1), axis=1)[:, None, None]

    def sample(n: int, angle: float = 0.15, scale: float = 1.08) -> np.ndarray:
        b = rng.normal(size=(n, 4)) * np.array([8.0, 6.0, 4.0, 3.0])
        shapes = mean + np.einsum("nm,mkd->nkd", b, modes) + rng.normal(scale=0.2, size=(n, K, 2))
        return np.stack([_similar(s, rng, angle, scale) for s in shapes])

    return sample


@pytest.fixture(scope="module")
def prior(population) -> ShapePrior:
    return ShapePrior.fit(population(40))


def test_fit_removes_pose_and_predict_reproduces_a_shape(population, prior):
    train = population(40, angle=np.pi, scale=1.3)  # large random poses
    model = ShapePrior.fit(train)
    assert 4 <= len(model.modes) <= 12  # 4 true modes, plus a little noise
    assert np.all(model.residual_sd >= 1.0) and np.all(np.isfinite(model.residual_sd))
    rng = np.random.default_rng(1)
    moved = _similar(train[3], rng, np.pi, 1.3)
    assert np.abs(model.predict(moved) - moved).max() < 0.6  # noise SD 0.2 mm
    # the mean alone (no modes) cannot: the shape variation is real
    assert np.abs(ShapePrior.fit(train, n_modes=1).predict(moved) - moved).max() > 2.0


def test_loo_predict_ignores_the_landmark_itself(population, prior):
    shape = population(1)[0]
    broken = shape.copy()
    broken[0] += [30.0, 0.0]
    pred = prior.loo_predict(broken, np.ones(K))
    assert np.linalg.norm(pred[0] - shape[0]) < 3.0  # predicted from the 18 others
    with pytest.raises(ValueError, match="expected points"):
        prior.loo_predict(shape[:5], np.ones(5))


def test_save_load_round_trip_and_errors(prior, tmp_path):
    path = prior.save(tmp_path / "sub" / "prior.npz")
    loaded = ShapePrior.load(path)
    for key in ("mean", "modes", "variances", "residual_sd"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(prior, key))
    assert loaded.noise_var == prior.noise_var
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ShapePrior.load(missing)
    np.savez(tmp_path / "bad.npz", mean=prior.mean)
    with pytest.raises(KeyError, match="bad.npz.*modes"):
        ShapePrior.load(tmp_path / "bad.npz")


def test_top_k_peaks_order_and_sub_pixel():
    codec = HeatmapCodec((48, 64), sigma=1.5)
    a, b = np.array([[12.3, 20.6]]), np.array([[45.7, 30.2]])
    hm = codec.encode(a)[0] + 0.5 * codec.encode(b)[0]  # (1, 48, 64)
    coords, scores = top_k_peaks(np.log(np.maximum(hm, 1e-10)), k=3, min_distance=4)
    assert coords.shape == (1, 3, 2) and scores.shape == (1, 3)
    np.testing.assert_allclose(coords[0, 0], a[0], atol=0.05)
    np.testing.assert_allclose(coords[0, 1], b[0], atol=0.05)
    assert scores[0, 0] == pytest.approx(0.0, abs=0.15)  # log values at the integer peaks
    assert scores[0, 1] == pytest.approx(np.log(0.5), abs=0.15)
    assert scores[0, 2] == -np.inf  # padded: only two maxima, the log floor is flat
    np.testing.assert_array_equal(coords[0, 2], coords[0, 0])


def test_top_k_peaks_float32_maps_give_the_float64_peaks():
    """A network's float32 log-heatmaps are searched in float32 (faster): the same peaks and
    scores as the same maps in float64, ties, flat floors, -inf and NaN included."""
    rng = np.random.default_rng(0)
    maps = np.log(np.clip(rng.random((19, 48, 40)) ** 8, 1e-4, None)).astype(np.float32)
    maps[0] = np.round(maps[0])  # ties and plateaus
    maps[1, 5, 5], maps[2] = np.nan, -np.inf
    for k, dist in ((3, 6), (1, 1), (5, 3)):
        c32, s32 = top_k_peaks(maps, k, dist)
        c64, s64 = top_k_peaks(maps.astype(np.float64), k, dist)
        assert np.array_equal(c32, c64) and np.array_equal(s32, s64)


def test_choose_peaks_keeps_a_plausible_arg_max(population, prior):
    truth = population(1)[0]
    cands = np.stack([truth, truth + 40.0], axis=1)  # (K, 2, 2): second peaks far away
    scores = np.tile([0.0, -0.5], (K, 1))
    cands[4, 0] += [1.5, 0.0]  # top-1 1.5 mm off, runner-up exactly right and nearly as high
    cands[4, 1] = truth[4]
    index, chosen = choose_peaks(cands, scores, prior)
    np.testing.assert_array_equal(index, 0)
    np.testing.assert_array_equal(chosen, cands[:, 0])


def _case(population, codec: HeatmapCodec, wrong: int | None):
    """Log-heatmaps ``(1, K, h, w)`` of a fresh shape (input px) and the true input px; the
    ``wrong`` landmark gets a higher bump 30 mm away from its lower true bump."""
    truth_mm = population(1)[0]
    truth = (truth_mm - truth_mm.mean(axis=0)) / SPACING + np.array(codec.input_size[::-1]) / 2
    hm = codec.encode(truth)[0]
    if wrong is not None:
        miss = truth[wrong] + np.array([30.0, 0.0]) / SPACING * np.sign(80 - truth[wrong, 0])
        hm[wrong] = 0.6 * hm[wrong] + codec.encode(miss[None])[0][0]
    return np.log(np.maximum(hm, 1e-10))[None], truth


def test_decode_repairs_a_gross_miss_and_leaves_the_rest(population, prior):
    codec = HeatmapCodec((160, 160), sigma=1.5, stride=2)
    logs, truth = _case(population, codec, wrong=0)
    plain, _ = codec.decode(logs, is_log=True)
    assert np.linalg.norm(plain[0, 0] - truth[0]) * SPACING > 25  # the arg-max is the miss
    coords, switched = shape_consistent_decode(logs, codec, prior, lambda p: p * SPACING)
    np.testing.assert_array_equal(switched[0], np.arange(K) == 0)
    assert np.linalg.norm(coords[0, 0] - truth[0]) < 0.5
    np.testing.assert_allclose(coords[0, 1:], plain[0, 1:], atol=1e-9)


def test_decode_changes_nothing_with_single_correct_peaks(population, prior):
    codec = HeatmapCodec((160, 160), sigma=1.5, stride=2)
    logs, truth = _case(population, codec, wrong=None)
    plain, _ = codec.decode(logs, is_log=True)
    coords, switched = shape_consistent_decode(logs, codec, prior, lambda p: p * SPACING)
    assert not switched.any()
    np.testing.assert_allclose(coords, plain, atol=1e-9)
    assert np.abs(coords[0] - truth).max() < 0.1


def test_prepared_helpers(population):
    from types import SimpleNamespace

    from mahtnet.data.preprocess import Letterbox

    shapes = population(12) / 0.1  # original px at 0.1 mm/px
    box = Letterbox(0.5, 0.5, 3, 0, 1000, 1200).as_array()
    prepared = SimpleNamespace(
        landmarks_orig=shapes,
        spacing=np.full(12, 0.1),
        letterbox=lambda i: Letterbox.from_array(box),
    )
    model = fit_prior_from_prepared(prepared)
    assert model.mean.shape == (K, 2)
    to_mm = prepared_to_mm(prepared, [2, 5])
    inp = np.stack([Letterbox.from_array(box).to_prepared(shapes[i]) for i in (2, 5)])
    np.testing.assert_allclose(to_mm(inp), shapes[[2, 5]] * 0.1, atol=1e-9)
