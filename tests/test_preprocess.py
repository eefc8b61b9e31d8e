import numpy as np
import pytest

from mahtnet.data.preprocess import PreparedSet, fit_letterbox, letterbox_image, split_train_val


@pytest.mark.parametrize("orig", [(2400, 1935), (480, 384), (300, 500), (64, 64)])
def test_mapping_round_trip_is_exact(orig):
    box = fit_letterbox(*orig, height=320, width=256)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, [orig[1] - 1, orig[0] - 1], size=(19, 2))
    back = box.to_original(box.to_prepared(pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)


@pytest.mark.parametrize("shape", [(400, 300), (2400, 1935), (100, 80)])
def test_letterbox_moves_a_blob_where_the_mapping_says(shape):
    h, w = shape
    centre = np.array([w * 0.43 + 0.3, h * 0.61 + 0.7])  # (x, y), sub-pixel
    yy, xx = np.mgrid[0:h, 0:w]
    sd = max(h, w) / 40
    image = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sd**2)) * 60000
    out, box = letterbox_image(image.astype(np.float32), 160, 128)
    assert out.shape == (160, 128)
    ys, xs = np.mgrid[0:160, 0:128]
    centroid = np.array([(xs * out).sum(), (ys * out).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, box.to_prepared(centre), atol=0.05)


def test_letterbox_pads_and_keeps_aspect():
    box = fit_letterbox(2400, 1935, 320, 256)
    assert box.pad_x == 0 and box.pad_y <= 1  # 1935 x 2400 is a little wider than 4:5
    assert abs(box.scale_x - box.scale_y) < 0.001
    wide = fit_letterbox(100, 400, 160, 128)
    assert wide.pad_y > 0 and wide.pad_x == 0


def test_prepared_set_save_load(tmp_path):
    n = 3
    data = PreparedSet(
        ids=np.array(["001", "002", "003"]),
        images=np.zeros((n, 16, 16), np.uint8),
        landmarks=np.ones((n, 19, 2)),
        landmarks_orig=np.ones((n, 19, 2)) * 2,
        boxes=np.tile([0.5, 0.5, 0, 0, 32, 32], (n, 1)).astype(float),
        spacing=np.full(n, 0.1),
        senior_orig=np.ones((n, 19, 2)) * 1.5,
        junior_orig=np.ones((n, 19, 2)) * 2.5,
        official_orig=np.ones((n, 19, 2)) * 3.0,
    )
    path = data.save(tmp_path / "x.npz")
    loaded = PreparedSet.load(path)
    np.testing.assert_array_equal(loaded.ids, data.ids)
    np.testing.assert_allclose(loaded.to_original(loaded.landmarks), np.full((n, 19, 2), 2.5))
    assert len(loaded.subset([0, 2])) == 2
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        PreparedSet.load(tmp_path / "nope.npz")
    old = dict(np.load(path))
    del old["senior_orig"]
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(KeyError, match=r"old.npz lacks \['senior_orig'\].*re-run the preprocess stage"):
        PreparedSet.load(tmp_path / "old.npz")


def test_split_is_deterministic_and_disjoint():
    a_train, a_val = split_train_val(150, 0.1, seed=42)
    b_train, b_val = split_train_val(150, 0.1, seed=42)
    np.testing.assert_array_equal(a_val, b_val)
    assert len(a_val) == 15 and len(a_train) == 135
    assert not set(a_train) & set(a_val)
