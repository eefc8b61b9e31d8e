import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mahtnet.data.fine import FineSet, extract_patch, patch_codec, patch_origin, prepare_fine
from mahtnet.data.isbi import Sample
from mahtnet.decoding import TorchRefiner
from mahtnet.decoding.reader import refine_landmarks
from mahtnet.models.card import ModelCard
from mahtnet.models.factory import build_refiner
from mahtnet.models.head import landmark_output
from mahtnet.training.refiner import JitterModel, PatchDataset, refine_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def make_fine(scales, sizes, landmarks_orig, spacing=0.1, images=None) -> FineSet:
    n = len(scales)
    sizes = np.asarray(sizes, dtype=np.int64)
    if images is None:
        images = np.zeros((n, *sizes.max(axis=0)), np.uint8)
    return FineSet(
        ids=np.array([f"{i:03d}" for i in range(n)]),
        images=images,
        sizes=sizes,
        scales=np.asarray(scales, dtype=np.float64),
        landmarks_orig=np.asarray(landmarks_orig, dtype=np.float64),
        spacing=np.full(n, spacing),
        senior_orig=np.asarray(landmarks_orig, dtype=np.float64),
        junior_orig=np.asarray(landmarks_orig, dtype=np.float64),
    )


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [16, 33, 64])
def test_patch_round_trip_is_exact(size):
    rng = np.random.default_rng(size)
    scales = rng.uniform(0.2, 1.0, size=5)
    pts = rng.uniform(-50, 700, size=(5, 40, 2))  # inside, near and outside a ~600 px image
    pts[:, :4] = [[0, 0], [-0.5, -0.5], [599.5, 599.49], [-30.2, 650.7]]
    fine = make_fine(scales, [(4, 4)] * 5, pts)
    for i in range(5):
        f = fine.to_fine(i, pts[i])
        origin = patch_origin(f, size)
        assert origin.dtype.kind == "i" and origin.shape == (40, 2)
        in_patch = f - origin
        # the centre lands within half a pixel of the patch's centre pixel
        assert np.all(np.abs(in_patch - size // 2) <= 0.5 + 1e-9)
        back = fine.to_original(i, in_patch + origin)
        np.testing.assert_allclose(back, pts[i], rtol=0, atol=1e-9)
        np.testing.assert_allclose(f, (pts[i] + 0.5) * scales[i] - 0.5, rtol=0, atol=1e-9)


def test_patch_origin_rounds_halves_up():
    np.testing.assert_array_equal(patch_origin(np.array([10.5, 10.49]), 8), [7, 6])
    np.testing.assert_array_equal(patch_origin(np.array([[-0.5, -1.6]]), 9), [[-4, -6]])
    with pytest.raises(ValueError, match="finite"):
        patch_origin(np.array([np.nan, 1.0]), 8)


def _reference_patch(image, origin, size):
    pad = 8 * size
    big = np.pad(image, pad)
    x0, y0 = origin[0] + pad, origin[1] + pad
    return big[y0 : y0 + size, x0 : x0 + size]


@pytest.mark.parametrize(
    "origin", [(0, 0), (-3, 10), (25, -2), (-8, -8), (27, 17), (29, 19), (30, 5), (-20, 0), (5, 40)]
)
def test_extract_patch_places_a_bright_pixel(origin):
    h, w, size = 20, 30, 8
    image = np.zeros((h, w), np.uint8)
    bright = [(3, 17), (0, 0), (29, 19), (26, 1)]  # (x, y): interior, and on each border
    for x, y in bright:
        image[y, x] = 255
    image[5, 7] = 9
    patch = extract_patch(image, np.array(origin), size)
    assert patch.shape == (size, size) and patch.dtype == np.uint8
    expected_hits = 0
    for x, y in bright:
        px, py = x - origin[0], y - origin[1]
        if 0 <= px < size and 0 <= py < size:
            assert patch[py, px] == 255
            expected_hits += 1
    assert (patch == 255).sum() == expected_hits
    np.testing.assert_array_equal(patch, _reference_patch(image, origin, size))
    noise = np.random.default_rng(0).integers(1, 256, size=(h, w), dtype=np.uint8)  # no zeros
    np.testing.assert_array_equal(
        extract_patch(noise, np.array(origin), size), _reference_patch(noise, origin, size)
    )


# ----------------------------------------------------------------------------- prepare_fine


def _write_ramp(path, h, w):
    """Horizontal ramp ``2 x + 5`` (exact uint8 values), so the resampled intensity tells where
    each fine pixel centre lies in the original."""
    image = np.tile(2 * np.arange(w) + 5, (h, 1)).astype(np.uint8)
    assert cv2.imwrite(str(path), image)


def test_prepare_fine_sizes_scales_and_mapping(tmp_path):
    rng = np.random.default_rng(0)
    specs = [("001", 90, 100, 0.1), ("002", 60, 75, 0.1), ("003", 40, 50, 0.5), ("004", 30, 120, 0.12)]
    samples = []
    for image_id, h, w, spacing in specs:
        _write_ramp(tmp_path / f"{image_id}.png", h, w)
        lm = rng.uniform(0, [w - 1, h - 1], size=(3, 2))
        samples.append(Sample(image_id, tmp_path / f"{image_id}.png", lm, spacing, lm, lm, lm))
    fine = prepare_fine(samples, spacing_mm=0.3)

    np.testing.assert_allclose(fine.scales, [1 / 3, 1 / 3, 1.0, 0.4])
    np.testing.assert_array_equal(fine.sizes, [[30, 33], [20, 25], [40, 50], [12, 48]])
    assert fine.images.shape == (4, 40, 50) and fine.images.dtype == np.uint8
    np.testing.assert_array_equal(fine.ids, ["001", "002", "003", "004"])
    np.testing.assert_allclose(fine.spacing, [0.1, 0.1, 0.5, 0.12])
    np.testing.assert_allclose(fine.fine_spacing, [0.3, 0.3, 0.5, 0.3])
    for i, (_, h, w, _) in enumerate(specs):
        hh, ww = fine.sizes[i]
        assert np.all(fine.images[i, hh:] == 0) and np.all(fine.images[i, :, ww:] == 0)
        # every fine pixel centre (but the last, partly outside) shows the ramp value of
        # the original position the mapping assigns to it
        xs = np.arange(ww - 1, dtype=np.float64)
        orig_x = fine.to_original(i, np.stack([xs, np.zeros_like(xs)], axis=1))[:, 0]
        row = fine.image(i)[hh // 2, : ww - 1].astype(np.float64)
        assert np.abs(row - (2 * orig_x + 5)).max() <= 0.75, i
        np.testing.assert_array_equal(fine.landmarks_orig[i], samples[i].landmarks)
        p = rng.uniform(-10, [w + 10, h + 10], size=(50, 2))
        np.testing.assert_allclose(fine.to_original(i, fine.to_fine(i, p)), p, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(fine.image(2), cv2.imread(str(tmp_path / "003.png"), 0))

    path = fine.save(tmp_path / "out" / "fine.npz")
    loaded = FineSet.load(path)
    for name in ("ids", "images", "sizes", "scales", "landmarks_orig", "spacing"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fine, name))
    sub = loaded.subset([3, 1])
    np.testing.assert_array_equal(sub.ids, ["004", "002"])
    np.testing.assert_array_equal(sub.image(1), fine.image(1))

    with pytest.raises(FileNotFoundError, match="nope.npz"):
        FineSet.load(tmp_path / "nope.npz")
    old = dict(np.load(path))
    del old["scales"]
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(KeyError, match=r"old.npz lacks \['scales'\]"):
        FineSet.load(tmp_path / "old.npz")


# ----------------------------------------------------------------------------- jitter


def test_jitter_fit_and_sample():
    rng = np.random.default_rng(1)
    sd = np.array([[1.0, 2.0], [0.5, 0.1], [3.0, 3.0]])
    bias = np.array([[0.0, 0.0], [0.0, 0.3], [0.0, 0.0]])
    errors = rng.standard_normal((4000, 3, 2)) * sd + bias
    errors[:10, 0] = np.nan  # ignored
    model = JitterModel.fit(errors, scale=1.0, floor_mm=0.0)
    expected = np.sqrt(sd**2 + bias**2)  # RMS includes the bias
    np.testing.assert_allclose(model.sd_mm, expected, rtol=0.05)
    wide = JitterModel.fit(errors, scale=2.0, floor_mm=0.7)
    np.testing.assert_allclose(wide.sd_mm, np.maximum(0.7, 2 * model.sd_mm))
    assert wide.sd_mm[1, 1] == 0.7 and wide.sd_mm[0, 0] > 1.9  # the floor bites only there

    k = np.repeat([0, 1, 2], 20000)
    draws = model.sample(np.random.default_rng(2), k)
    assert draws.shape == (60000, 2)
    for j in range(3):
        d = draws[k == j]
        np.testing.assert_allclose(d.std(axis=0), model.sd_mm[j], rtol=0.03)
        assert np.all(np.abs(d.mean(axis=0)) < 0.05 * model.sd_mm[j] + 1e-3)
    again = model.sample(np.random.default_rng(2), k)
    np.testing.assert_array_equal(draws, again)

    d = json.loads(json.dumps(model.to_dict()))  # plain lists, JSON-safe
    np.testing.assert_array_equal(JitterModel.from_dict(d).sd_mm, model.sd_mm)
    with pytest.raises(ValueError):
        JitterModel(np.ones((3, 3)))


# ----------------------------------------------------------------------------- dataset


def _noise_fine(n=3, k=4, scale=1 / 3, spacing=0.1, seed=0):
    rng = np.random.default_rng(seed)
    h, w = 60, 80
    images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    lm_fine = rng.uniform([12, 12], [w - 13, h - 13], size=(n, k, 2))
    lm_orig = (lm_fine + 0.5) / scale - 0.5
    return make_fine([scale] * n, [(h, w)] * n, lm_orig, spacing=spacing, images=images)


def test_patch_dataset_items_are_consistent():
    fine = _noise_fine()
    size, sigma = 32, 2.0
    jitter = JitterModel(np.full((4, 2), 0.6))  # mm: 2 fine px at 0.3 mm/px
    ds = PatchDataset(fine, size, sigma, jitter=jitter, seed=5)
    codec = patch_codec(size, sigma)
    assert len(ds) == 12
    shifts = []
    for j in range(len(ds)):
        item = ds[j]
        i, k = divmod(j, 4)
        assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
        assert item["target"].shape == (size, size)
        assert item["landmark"].dtype == torch.long and int(item["landmark"]) == k
        assert int(item["index"]) == i
        gt, origin, shift = item["gt"].numpy(), item["origin"].numpy(), item["jitter"].numpy()
        # gt is the landmark in patch px: fine px minus the integer origin, exactly
        np.testing.assert_array_equal(gt, fine.to_fine(i, fine.landmarks_orig[i, k]) - origin)
        # the patch is centred (to rounding) on gt + jitter, so gt sits at centre - jitter
        assert np.all(np.abs(gt - (size // 2 - shift)) <= 0.5 + 1e-9)
        assert bool(item["visible"]) == bool(np.all((gt >= 0) & (gt <= size - 1)))
        np.testing.assert_array_equal(
            item["image"][0].numpy(), extract_patch(fine.image(i), origin, size) / np.float32(255)
        )
        if np.all((gt >= 1) & (gt <= size - 2)):
            decoded, _ = codec.decode(item["target"].numpy()[None])
            assert np.abs(decoded[0] - gt).max() < 0.05
        shifts.append(shift)
    assert np.abs(np.array(shifts)).max() > 0.1  # the jitter is really applied

    # reproducible per seed, different across seeds
    ds2 = PatchDataset(fine, size, sigma, jitter=jitter, seed=5)
    np.testing.assert_array_equal(ds2[7]["gt"].numpy(), ds[7]["gt"].numpy())
    ds2.set_epoch_seed(6)
    assert not np.array_equal(ds2[7]["jitter"].numpy(), ds[7]["jitter"].numpy())
    ds2.set_epoch_seed(5)
    np.testing.assert_array_equal(ds2[7]["jitter"].numpy(), ds[7]["jitter"].numpy())

    # no jitter: centred on the ground truth
    plain = PatchDataset(fine, size, sigma, jitter=None)
    for j in range(len(plain)):
        assert np.all(np.abs(plain[j]["gt"].numpy() - size // 2) <= 0.5)
        assert np.all(plain[j]["jitter"].numpy() == 0)

    # intensity augmentation changes pixels, never the geometry
    aug = PatchDataset(fine, size, sigma, jitter=jitter, brightness=0.2, contrast=0.3, seed=5)
    a, b = aug[3], ds[3]
    np.testing.assert_array_equal(a["gt"].numpy(), b["gt"].numpy())
    np.testing.assert_array_equal(a["target"].numpy(), b["target"].numpy())
    assert not torch.equal(a["image"], b["image"])
    assert float(a["image"].min()) >= 0 and float(a["image"].max()) <= 1


def _blob_fine(n=3, k=3, seed=1):
    """Fine images holding one sharp Gaussian blob per landmark (each its own image)."""
    rng = np.random.default_rng(seed)
    h, w = 90, 100
    lm_fine = rng.uniform(30, 60, size=(n * k, 1, 2))
    yy, xx = np.mgrid[:h, :w]
    images = np.stack(
        [np.round(255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))) for (x, y) in lm_fine[:, 0]]
    ).astype(np.uint8)
    return make_fine([0.5] * (n * k), [(h, w)] * (n * k), (lm_fine + 0.5) / 0.5 - 0.5, images=images)


def test_rotated_zoomed_patches_move_the_target_with_the_image():
    fine = _blob_fine()
    size, sigma = 32, 1.5
    jitter = JitterModel(np.full((1, 2), 0.4))
    plain = PatchDataset(fine, size, sigma, jitter=jitter, seed=3)
    warped = PatchDataset(fine, size, sigma, jitter=jitter, seed=3, rotate_deg=30.0, zoom=0.2)
    codec = patch_codec(size, sigma)
    moved = []
    for j in range(len(fine)):
        a, b = plain[j], warped[j]
        gt = b["gt"].numpy()
        # the blob's intensity centroid in the warped patch is where the target says
        img = b["image"][0].numpy().astype(np.float64)
        yy, xx = np.mgrid[:size, :size]
        centroid = np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()
        np.testing.assert_allclose(centroid, gt, atol=0.15)
        decoded, _ = codec.decode(b["target"].numpy()[None])
        np.testing.assert_allclose(decoded[0], gt, atol=0.05)
        # the same centre as without warping: the patch turns and zooms about it
        np.testing.assert_array_equal(a["origin"].numpy(), b["origin"].numpy())
        moved.append(np.abs(gt - a["gt"].numpy()).max())
    assert max(moved) > 0.5  # the warp really moves the landmark in the patch
    np.testing.assert_array_equal(warped[4]["image"].numpy(), warped[4]["image"].numpy())  # per-item seed
    with pytest.raises(ValueError, match="rotate_deg"):
        PatchDataset(fine, size, sigma, rotate_deg=-1.0)
    with pytest.raises(ValueError, match="zoom"):
        PatchDataset(fine, size, sigma, zoom=1.0)


def test_patch_dataset_jitter_is_in_mm():
    # 0.1 mm/px originals at scale 1/3 -> 0.3 mm per fine px: 1.5 mm sd = 5 fine px
    fine = _noise_fine(n=4, k=60, seed=3)
    ds = PatchDataset(fine, 16, 1.5, jitter=JitterModel(np.tile([[1.5, 0.6]], (60, 1))), seed=0)
    shifts = np.array([ds[j]["jitter"].numpy() for j in range(len(ds))])
    np.testing.assert_allclose(shifts.std(axis=0), [5.0, 2.0], rtol=0.12)


def test_patch_dataset_batches_into_model_and_loss():
    fine = _noise_fine(n=2, k=3)
    ds = PatchDataset(fine, 16, 1.5, jitter=JitterModel(np.full((3, 2), 0.5)))
    batch = next(iter(DataLoader(ds, batch_size=6)))
    torch.manual_seed(0)
    model = build_refiner(3, channels=4, depth=2)
    out = model(batch["image"])
    assert out.heatmaps.shape == (6, 3, 16, 16)
    loss = refine_loss(out.heatmaps, batch["landmark"], batch["target"], batch["visible"])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(1, 1, 18, 18))


# ----------------------------------------------------------------------------- loss


def test_refine_loss_uses_each_items_own_channel():
    torch.manual_seed(0)
    b, k, p = 4, 3, 8
    logits = torch.randn(b, k, p, p, requires_grad=True)
    landmark = torch.tensor([2, 0, 1, 2])
    own = logits.detach()[torch.arange(b), landmark]
    target = torch.softmax(own.reshape(b, -1), -1).reshape(b, p, p) * 7  # any scale
    visible = torch.ones(b, dtype=torch.bool)
    loss = refine_loss(logits, landmark, target, visible)
    assert abs(loss.item()) < 1e-5
    loss.backward()
    grad = logits.grad.abs().sum(dim=(-2, -1))
    other = torch.ones(b, k, dtype=torch.bool)
    other[torch.arange(b), landmark] = False
    assert float(grad[other].max()) == 0.0  # only the chosen channels get gradient

    logits = logits.detach()
    assert float(refine_loss(logits, torch.tensor([0, 1, 2, 0]), target, visible)) > 0.1
    gauss = torch.from_numpy(patch_codec(p, 1.0).encode(np.full((b, 2), 3.5))[0])
    assert float(refine_loss(logits, landmark, gauss, visible)) > 0.1
    # invisible items do not count
    wrong = target.clone()
    wrong[1] = gauss[1]
    mask = torch.tensor([True, False, True, True])
    assert abs(float(refine_loss(logits, landmark, wrong, mask))) < 1e-5
    assert float(refine_loss(logits, landmark, wrong, visible)) > 0.01


# ----------------------------------------------------------------------------- refine_landmarks


def refine_points(model, fine, coarse, size, sigma, batch_size=64):
    """A network in memory as a refiner backend (patches of ``size``, target ``sigma``) on
    ``coarse`` points: :func:`refine_landmarks`, what the reader runs."""
    names = tuple(f"L{k}" for k in range(fine.num_landmarks))
    card = ModelCard("(test)", "", "pytorch", "refiner", (size, size), sigma, 1, names, None, "refiner", 0.1)
    return refine_landmarks(TorchRefiner.from_module(model, card, "cpu"), fine, coarse, batch_size)[0]


class PeakStub(nn.Module):
    """Logits of channel ``k``: a Gaussian log-map (sigma 1.5) peaked at patch px ``peaks[k]``."""

    def __init__(self, peaks, size, as_output=False):
        super().__init__()
        self.peaks = torch.as_tensor(np.asarray(peaks), dtype=torch.float64)
        self.size = size
        self.as_output = as_output
        self.calls = []

    def forward(self, x):
        b, _, h, w = x.shape
        assert h == w == self.size
        self.calls.append(b)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
        )
        d2 = (xs - self.peaks[:, 0, None, None]) ** 2 + (ys - self.peaks[:, 1, None, None]) ** 2
        logits = (-d2 / (2 * 1.5**2)).float()[None].expand(b, -1, -1, -1)
        return landmark_output(logits, 1, 1.0) if self.as_output else logits


def test_refine_points_maps_a_known_peak_back_to_the_original():
    size = 32
    coarse = np.array(
        [
            [[100.0, 60.0], [3.0, 1000.0]],  # image 0, scale 0.5
            [[100.0, 60.0], [-40.0, 7.3]],  # image 1, scale 0.25
            [[55.5, 21.25], [0.0, 0.0]],  # image 2, scale 1
        ]
    )
    fine = make_fine([0.5, 0.25, 1.0], [(50, 60), (30, 40), (60, 70)], np.zeros((3, 2, 2)))
    peaks = np.array([[10.3, 20.6], [25.0, 4.75]])
    model = PeakStub(peaks, size, as_output=True)
    refined = refine_points(model, fine, coarse, size, 2.0, batch_size=4)
    assert model.calls == [4, 2]
    # image 0, landmark 0 by hand: fine (49.75, 29.75) -> origin (50, 30) - 16 = (34, 14);
    # patch (10.3, 20.6) -> fine (44.3, 34.6) -> original (44.8 / 0.5 - 0.5, 35.1 / 0.5 - 0.5)
    np.testing.assert_allclose(refined[0, 0], [89.1, 69.7], atol=1e-6)
    # image 1, landmark 0: fine (24.625, 14.625) -> origin (9, -1); patch (10.3, 20.6) ->
    # fine (19.3, 19.6) -> original (19.8 / 0.25 - 0.5, 20.1 / 0.25 - 0.5)
    np.testing.assert_allclose(refined[1, 0], [78.7, 79.9], atol=1e-6)
    # image 2, landmark 0 at scale 1: origin (56, 21) - 16 = (40, 5) -> (50.3, 25.6)
    np.testing.assert_allclose(refined[2, 0], [50.3, 25.6], atol=1e-6)
    for i in range(3):
        for k in range(2):
            s = fine.scales[i]
            origin = np.floor((coarse[i, k] + 0.5) * s - 0.5 + 0.5) - size // 2
            np.testing.assert_allclose(refined[i, k], (peaks[k] + origin + 0.5) / s - 0.5, atol=1e-6)
    assert model.training  # mode restored


def test_refine_points_identity_stub_returns_the_coarse_points():
    size = 16
    rng = np.random.default_rng(4)
    scales = np.array([1 / 3, 0.5])
    fine_int = rng.integers(-5, 60, size=(2, 5, 2)).astype(np.float64)  # integer fine px
    coarse = (fine_int + 0.5) / scales[:, None, None] - 0.5
    fine = make_fine(scales, [(50, 50), (50, 50)], np.zeros((2, 5, 2)))
    model = PeakStub(np.full((5, 2), size // 2, dtype=np.float64), size)
    model.eval()
    refined = refine_points(model, fine, coarse, size, 2.0, batch_size=64)
    np.testing.assert_allclose(refined, coarse, rtol=0, atol=1e-6)
    assert not model.training


class BrightStub(nn.Module):
    """Peaks every channel at the patch's brightest pixel plus a fixed sub-pixel offset."""

    offset = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def forward(self, x):
        b, _, h, w = x.shape
        idx = x.reshape(b, -1).argmax(dim=1)
        py, px = idx // w, idx % w
        centre = torch.stack([px, py], dim=1).double() + self.offset  # (B, 2)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
        )
        d2 = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2
        return (-d2 / 2.0).float()[:, None].expand(b, 3, h, w)


def test_refine_points_follows_the_image_content():
    # a bright pixel per landmark in fine px; coarse points a few px off; the refined points
    # are the bright pixels (+ the stub's offset) in original px: extraction and mapping agree
    size = 16
    bright = np.array([[[10, 12], [40, 15], [25, 40]], [[50, 5], [7, 33], [30, 30]]])
    images = np.zeros((2, 48, 64), np.uint8)
    for i in range(2):
        for x, y in bright[i]:
            images[i, y, x] = 200
    scales = np.array([0.25, 0.4])
    fine = make_fine(scales, [(48, 64), (45, 60)], np.zeros((2, 3, 2)), images=images)
    rng = np.random.default_rng(7)
    coarse_fine = bright + rng.uniform(-4, 4, size=bright.shape)
    coarse = (coarse_fine + 0.5) / scales[:, None, None] - 0.5
    refined = refine_points(BrightStub(), fine, coarse, size, 1.0, batch_size=5)
    expected = (bright + np.array([0.3, -0.2]) + 0.5) / scales[:, None, None] - 0.5
    np.testing.assert_allclose(refined, expected, atol=1e-5)


def test_refine_points_checks_shapes():
    fine = make_fine([1.0], [(20, 20)], np.zeros((1, 2, 2)))
    model = PeakStub(np.zeros((2, 2)), 16)
    with pytest.raises(ValueError, match="do not match"):
        refine_points(model, fine, np.zeros((1, 3, 2)), 16, 2.0)
