import numpy as np
import pytest

from mahtnet.codec import HeatmapCodec, encode_set


@pytest.mark.parametrize("sigma,stride", [(1.5, 1), (2.0, 1), (3.0, 1), (2.0, 2), (1.0, 4)])
def test_round_trip_is_sub_pixel(sigma, stride):
    codec = HeatmapCodec((96, 80), sigma=sigma, stride=stride)
    rng = np.random.default_rng(0)
    points = rng.uniform([8, 8], [71, 87], size=(19, 2))  # (x, y) input px, sub-pixel
    heatmaps, visible = codec.encode(points)
    assert heatmaps.shape == (19, 96 // stride, 80 // stride)
    assert visible.all()
    decoded, peak = codec.decode(heatmaps)
    assert np.abs(decoded - points).max() < 0.05
    assert np.all(peak > 0.5)


def test_round_trip_float16_targets():
    codec = HeatmapCodec((64, 64), sigma=2.0)
    points = np.array([[10.3, 20.7], [33.49, 40.51], [50.0, 12.25]])
    targets, _ = encode_set(codec, points[None])
    assert targets.dtype == np.float16
    decoded, _ = codec.decode(targets.astype(np.float32))
    assert np.abs(decoded[0] - points).max() < 0.05


def test_decode_is_not_integer_argmax():
    codec = HeatmapCodec((32, 32), sigma=2.0)
    heatmaps, _ = codec.encode(np.array([[10.4, 17.6]]))
    decoded, _ = codec.decode(heatmaps)
    assert decoded[0, 0] == pytest.approx(10.4, abs=0.02)
    assert decoded[0, 1] == pytest.approx(17.6, abs=0.02)


def test_decode_log_input_and_batch_shape():
    codec = HeatmapCodec((40, 32), sigma=2.0)
    pts = np.array([[[5.5, 6.25], [20.0, 30.75]], [[12.1, 3.9], [25.5, 33.3]]])  # (N=2, K=2, 2)
    hm = np.stack([codec.encode(p)[0] for p in pts])
    logs = np.log(np.maximum(hm, 1e-30)) + 3.0  # log-heatmap up to a constant (as log-softmax)
    decoded, _ = codec.decode(logs, is_log=True)
    assert decoded.shape == (2, 2, 2)
    assert np.abs(decoded - pts).max() < 0.05


def test_visibility_for_points_outside():
    codec = HeatmapCodec((32, 32), sigma=2.0)
    _, visible = codec.encode(np.array([[-3.0, 5.0], [5.0, 5.0], [5.0, 40.0]]))
    assert visible.tolist() == [False, True, False]


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec((32, 32), sigma=0)
    with pytest.raises(ValueError, match="divisible"):
        HeatmapCodec((30, 32), sigma=2, stride=4)
    with pytest.raises(ValueError, match="non-finite"):
        HeatmapCodec((32, 32), sigma=2).encode(np.array([[np.nan, 1.0]]))
