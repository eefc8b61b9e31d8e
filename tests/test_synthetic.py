"""Tests for the deterministic synthetic cephalogram generator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mahtnet.data import synthetic
from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

W, H, SPACING = 192, 240, 1.0  # small images (same mm field of view as 384x480 @ 0.5 mm)
POSE = dict(pose_rotation_deg=5.0, pose_scale=0.05, pose_shift_mm=8.0)


def _sample(seed: int, width: int = W, height: int = H, spacing: float = SPACING):
    return synthetic.generate_sample(seed, width, height, spacing, **POSE)


def _dataset_kwargs(seed: int = 3) -> dict:
    return dict(
        n_train=3,
        n_test=2,
        seed=seed,
        width=W,
        height=H,
        pixel_spacing_mm=SPACING,
        annotator_sd_mm=0.3,
        **POSE,
    )


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_shape_model_loads():
    model = synthetic.load_shape_model()
    assert model["mean_shape_mm"].shape == (NUM_LANDMARKS, 2)
    assert list(model["landmark_names"]) == list(LANDMARK_NAMES)
    m = len(model["variances"])
    assert m >= 1 and model["modes"].shape == (m, 2 * NUM_LANDMARKS)
    assert np.all(model["variances"] > 0)
    assert np.all(np.diff(model["variances"]) <= 0)
    np.testing.assert_allclose(model["mean_shape_mm"].mean(axis=0), 0.0, atol=1e-3)
    assert "001-150" in model["provenance"]["images_used"]
    # face looks right: nasion in front of sella
    assert model["mean_shape_mm"][1, 0] > model["mean_shape_mm"][0, 0]


def test_sample_landmarks_clip_and_centre():
    model = synthetic.load_shape_model()
    rng = np.random.default_rng(0)
    shapes = np.stack([synthetic.sample_landmarks(rng, model) for _ in range(50)])
    assert shapes.shape == (50, NUM_LANDMARKS, 2)
    np.testing.assert_allclose(shapes.mean(axis=1), 0.0, atol=1e-9)
    # clipped at 2.5 sd: bounded deviation from the mean shape
    bound = 2.5 * np.sqrt(model["variances"]).sum()
    assert np.abs(shapes - model["mean_shape_mm"]).max() <= bound + 1e-6
    zero = synthetic.sample_landmarks(np.random.default_rng(1), model, mode_sd_clip=0.0)
    np.testing.assert_allclose(zero, model["mean_shape_mm"], atol=1e-3)


def test_deterministic_by_seed():
    img_a, lm_a = _sample(11)
    img_b, lm_b = _sample(11)
    img_c, lm_c = _sample(12)
    assert np.array_equal(img_a, img_b) and np.array_equal(lm_a, lm_b)
    assert not np.array_equal(img_a, img_c)
    assert not np.allclose(lm_a, lm_c)


@pytest.mark.parametrize("seed", range(6))
def test_image_and_landmarks(seed):
    img, lm = _sample(seed)
    assert img.dtype == np.uint8 and img.shape == (H, W)
    assert lm.shape == (NUM_LANDMARKS, 2) and np.isfinite(lm).all()
    assert img.std() > 10
    margin = 0.08 * np.array([W, H])
    assert np.all(lm >= margin - 1e-6) and np.all(lm <= np.array([W, H]) - 1 - margin + 1e-6)
    # face to the right: nasion in front of sella, porion behind orbitale
    assert lm[1, 0] > lm[0, 0] and lm[2, 0] > lm[3, 0]


def test_structures_visible_at_landmarks():
    """Bone brighter than air, and the landmarks sit on edges (learnable structures)."""
    img, lm = _sample(5, 384, 480, 0.5)
    f = img.astype(np.float32)
    air = f[:12, -12:]  # top-right corner is in front of the forehead: air
    s = np.round(lm[0]).astype(int)
    sella_ring = f[s[1] - 14 : s[1] + 15, s[0] - 14 : s[0] + 15]
    assert sella_ring.max() > air.mean() + 60
    u1 = np.round(lm[11]).astype(int)  # upper incisor crown just above its tip
    tooth = f[u1[1] - 6 : u1[1] - 1, u1[0] - 2 : u1[0] + 3]
    assert tooth.mean() > air.mean() + 60
    gy, gx = np.gradient(cv2.GaussianBlur(f, (0, 0), 1.0))
    mag = np.hypot(gx, gy)
    ij = np.round(lm).astype(int)
    at_lm = [mag[y - 2 : y + 3, x - 2 : x + 3].max() for x, y in ij]
    assert np.median(at_lm) > 2.0 * mag.mean()
    assert sum(v > mag.mean() for v in at_lm) >= 17


def test_generate_dataset_layout_and_reproducible(tmp_path):
    out = tmp_path / "synth"
    synthetic.generate_dataset(out, **_dataset_kwargs())
    train = sorted((out / "RawImage" / "TrainingData").glob("*.png"))
    test = sorted((out / "RawImage" / "Test1Data").glob("*.png"))
    assert [p.stem for p in train] == ["001", "002", "003"]
    assert [p.stem for p in test] == ["004", "005"]
    for doctor in ("400_senior", "400_junior"):
        anns = sorted((out / "AnnotationsByMD" / doctor).glob("*.txt"))
        assert [p.stem for p in anns] == ["001", "002", "003", "004", "005"]
        for p in anns:
            lines = p.read_text().splitlines()
            assert len(lines) == NUM_LANDMARKS
            xy = np.array([[float(v) for v in ln.split(",")] for ln in lines])
            assert np.all(xy > 0) and np.all(xy < [W, H])
    meta = (out / "dataset.yaml").read_text()
    assert "synthetic" in meta and "pixel_spacing_mm" in meta
    senior = np.loadtxt(out / "AnnotationsByMD/400_senior/001.txt", delimiter=",")
    junior = np.loadtxt(out / "AnnotationsByMD/400_junior/001.txt", delimiter=",")
    _, truth = _sample(synthetic._sample_seed(3, 1))
    assert not np.allclose(senior, junior)
    assert np.abs((senior + junior) / 2 - truth).max() < 5 * 0.3 / SPACING

    digest = _tree_digest(out)
    synthetic.generate_dataset(out, **_dataset_kwargs())  # overwrite in place
    assert _tree_digest(out) == digest
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temp dirs left behind
    other = tmp_path / "other"
    synthetic.generate_dataset(other, **_dataset_kwargs(seed=4))
    assert _tree_digest(other) != digest


def test_samples_do_not_depend_on_n_train(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthetic.generate_dataset(a, **{**_dataset_kwargs(), "n_train": 1, "n_test": 0})
    synthetic.generate_dataset(b, **_dataset_kwargs())
    rel = "RawImage/TrainingData/001.png"
    assert (a / rel).read_bytes() == (b / rel).read_bytes()
