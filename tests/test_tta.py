import numpy as np
import pytest
import torch
from torch import nn

from mahtnet.codec import HeatmapCodec
from mahtnet.data.preprocess import Letterbox
from mahtnet.decoding import LandmarkReader, TorchBackend
from mahtnet.decoding.tta import (
    IDENTITY,
    about_centre,
    apply_affine,
    invert_affine,
    tta_transforms,
    warp_images,
)
from mahtnet.models.head import landmark_output

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 64, 80
CPU = torch.device("cpu")
CODEC = HeatmapCodec((H, W), sigma=2.0)


class BlobModel(nn.Module):
    """An "identity model": landmark 0's logits are the log of the image's left half, landmark
    1's of its right half, so each heatmap peaks on the bright blob in that half and the decoded
    landmark moves with the image (up to interpolation and uint8 rounding). ``bias_px`` moves
    every peak that many pixels right of its blob."""

    def __init__(self, bias_px: int = 0):
        super().__init__()
        self.bias_px = bias_px

    def forward(self, x: torch.Tensor):
        logs = torch.log(x.clamp_min(1e-3))
        half = x.shape[-1] // 2
        left, right = logs.clone(), logs.clone()
        left[..., half:] = -1e4
        right[..., :half] = -1e4
        logits = torch.cat([left, right], dim=1)
        if self.bias_px:
            logits = torch.roll(logits, self.bias_px, dims=-1)
        return landmark_output(logits, stride=1, temperature=1.0)


def blob_images(points: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """``points (N, K, 2)`` -> uint8 images ``(N, H, W)`` with a Gaussian blob (peak 255) at
    each point (sub-pixel, pixel centres at integers)."""
    ys, xs = np.mgrid[:H, :W]
    images = np.zeros((len(points), H, W))
    for i, pts in enumerate(points):
        for x, y in pts:
            images[i] = np.maximum(images[i], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return np.round(images * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    left = rng.uniform([16, 20], [26, 44], size=(6, 2))
    right = rng.uniform([54, 20], [64, 44], size=(6, 2))
    # blob tails (visible out to ~10.6 px) stay inside the image and their half of it under
    # shifts of up to 3 px, so integer shifts leave each softmax unchanged
    points = np.stack([left, right], axis=1)  # (6, 2, 2)
    return points, blob_images(points)


BOX = Letterbox(1.0, 1.0, 0, 0, W, H)  # network input = original image


def predict_tta(model, images, transforms=None, batch_size: int = 8):
    """The reader's arg-max landmarks (original px = input px here) and confidence under TTA."""
    reader = LandmarkReader(
        TorchBackend.from_module(model, "logits", CODEC, CPU), transforms=transforms, batch_size=batch_size
    )
    points, conf = reader.coarse(images, [BOX] * len(images), [None] * len(images))
    return points["coarse"], conf


def predict(model, images, batch_size: int = 8):
    return predict_tta(model, images, None, batch_size)


def run(model, images, transforms):
    """Per-transform landmarks ``(T, N, K, 2)`` and confidences ``(T, N, K)``."""
    each = [predict_tta(model, images, [t], batch_size=4) for t in transforms]
    return np.stack([c for c, _ in each]), np.stack([p for _, p in each])


# ---- transforms ---------------------------------------------------------------------------


def test_transforms_identity_first_and_count():
    ts = tta_transforms([1, 2], [0.95, 1.05])
    assert len(ts) == (1 + 4 * 2) * (1 + 2)
    assert np.array_equal(ts[0], IDENTITY)
    assert all(t.shape == (2, 3) for t in ts)
    assert len({t.tobytes() for t in ts}) == len(ts)  # all distinct
    shifts = {(t[0, 2], t[1, 2]) for t in ts if t[0, 0] == 1}
    assert shifts == {(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2)}
    assert sorted({t[0, 0] for t in ts}) == [0.95, 1.0, 1.05]
    assert all(t[0, 0] == t[1, 1] and t[0, 1] == 0 and t[1, 0] == 0 for t in ts)


def test_transforms_drop_repeats_and_unit_scale():
    assert len(tta_transforms([], [])) == 1
    assert len(tta_transforms([1, 1], [1.0, 0.9, 0.9])) == 5 * 2
    with pytest.raises(ValueError):
        tta_transforms([-1], [])
    with pytest.raises(ValueError):
        tta_transforms([], [0.0])


def test_inverse_mapping_returns_points():
    rng = np.random.default_rng(1)
    points = rng.uniform(-10, 90, size=(5, 3, 2))
    matrices = [about_centre(t, (H, W)) for t in tta_transforms([1.5, 3], [0.9, 1.1])]
    matrices.append(np.array([[0.9, 0.2, 3.0], [-0.1, 1.2, -4.0]]))
    for m in matrices:
        mapped = apply_affine(m, points)
        back = apply_affine(invert_affine(m), mapped)
        np.testing.assert_allclose(back, points, rtol=0, atol=1e-10)
        if not np.array_equal(m, IDENTITY):
            assert np.abs(mapped - points).max() > 0.1


def test_about_centre_fixes_the_image_centre():
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    m = about_centre(np.array([[1.1, 0.0, 2.0], [0.0, 1.1, -1.0]]), (H, W))
    np.testing.assert_allclose(apply_affine(m, c), c + [2.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(apply_affine(m, c + [10, 0]), c + [2.0 + 11, -1.0], atol=1e-12)


def test_warp_convention_pixel_centres_at_integers():
    """A bright pixel at ``p`` lands exactly on ``M @ [p, 1]`` (no half-pixel offset)."""
    image = np.zeros((1, H, W), np.uint8)
    image[0, 8, 6] = 255  # (x, y) = (6, 8)
    for m, (x, y) in [
        (np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), (12, 16)),
        (np.array([[2.0, 0.0, 3.0], [0.0, 2.0, -5.0]]), (15, 11)),
    ]:
        warped = warp_images(image, m)[0]
        assert warped[y, x] == 255
        assert np.unravel_index(warped.argmax(), warped.shape) == (y, x)


# ---- prediction ---------------------------------------------------------------------------


def test_identity_only_is_predict(blobs):
    _, images = blobs
    model = BlobModel()
    ref_c, ref_p = predict(model, images, batch_size=4)
    c, p = predict_tta(model, images, [IDENTITY], batch_size=4)
    assert np.array_equal(c, ref_c) and np.array_equal(p, ref_p)
    assert c.dtype == ref_c.dtype and p.dtype == ref_p.dtype


def test_identity_model_integer_shifts_change_nothing(blobs):
    points, images = blobs
    model = BlobModel()
    ref_c, ref_p = predict(model, images)
    assert np.abs(ref_c - points).max() < 0.05  # the model finds the blobs
    ts = tta_transforms([1, 3], [])
    stack_c, stack_p = run(model, images, ts)
    assert stack_c.shape == (len(ts), *ref_c.shape) and stack_p.shape == (len(ts), *ref_p.shape)
    np.testing.assert_allclose(stack_c, np.broadcast_to(ref_c, stack_c.shape), rtol=0, atol=1e-6)
    c, p = predict_tta(model, images, ts)
    np.testing.assert_allclose(c, ref_c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(p, ref_p, rtol=0, atol=1e-6)


def test_identity_model_scales_change_little(blobs):
    _, images = blobs
    model = BlobModel()
    ref_c, _ = predict(model, images)
    ts = tta_transforms([2], [0.95, 1.05])
    stack_c, stack_p = run(model, images, ts)
    err = np.abs(stack_c - ref_c)
    assert err.max() < 0.05  # cv2 bilinear (1/32 px sample grid) and uint8 rounding
    assert np.abs(stack_c.mean(axis=0) - ref_c).max() < 0.03
    c, p = predict_tta(model, images, ts, batch_size=4)
    np.testing.assert_allclose(c, stack_c.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, stack_p.mean(axis=0), rtol=0, atol=1e-12)
    assert np.abs(stack_p - stack_p[0]).max() > 1e-4  # the confidences differ across transforms


def test_constant_bias_is_kept(blobs):
    """Landmarks are mapped back through each transform, not just averaged: a model that puts
    every peak 1 px right of its blob keeps that 1 px under TTA."""
    _, images = blobs
    plain = predict(BlobModel(), images)[0]
    biased = BlobModel(bias_px=1)
    ref_c, _ = predict(biased, images)
    np.testing.assert_allclose(ref_c - plain, np.broadcast_to([1.0, 0.0], plain.shape), atol=1e-6)

    # asymmetric shifts: averaging the unmapped landmarks would be off by (1, 0.5) px
    ts = [IDENTITY, np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])]
    c, _ = predict_tta(biased, images, ts)
    np.testing.assert_allclose(c, ref_c, rtol=0, atol=1e-6)

    stack_c, _ = run(biased, images, tta_transforms([1, 2], []))
    np.testing.assert_allclose(stack_c, np.broadcast_to(ref_c, stack_c.shape), rtol=0, atol=1e-6)

    # a 1 px bias in the warped image is 1/s px in the input image
    scales = [0.9, 1.1]
    stack_c, _ = run(biased, images, tta_transforms([], scales))
    stack_plain, _ = run(BlobModel(), images, tta_transforms([], scales))
    for t, s in enumerate([1.0, *scales]):
        np.testing.assert_allclose(
            stack_c[t] - stack_plain[t], np.broadcast_to([1 / s, 0.0], plain.shape), atol=1e-6
        )


def test_rejects_bad_transforms(blobs):
    _, images = blobs
    with pytest.raises(ValueError):
        predict_tta(BlobModel(), images, [])
    with pytest.raises(ValueError):
        predict_tta(BlobModel(), images, [np.zeros((2, 3))])
