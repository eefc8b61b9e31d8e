"""Training-label protocols: ``data.gt: doctors`` draws one doctor's annotation per item."""

import numpy as np
import pytest

from mahtnet.codec import HeatmapCodec
from mahtnet.data.dataset import LandmarkDataset
from mahtnet.data.fine import fine_from_images
from mahtnet.data.preprocess import prepare_images, split_key
from mahtnet.training.refiner import PatchDataset

K = 19


def _doctors(n=4, seed=0):
    rng = np.random.default_rng(seed)
    senior = rng.uniform(20, 60, (n, K, 2))
    junior = senior + rng.normal(0, 3, (n, K, 2))  # the doctors disagree by a few px
    return senior, junior


def _prepared(n=4):
    senior, junior = _doctors(n)
    images = [np.full((80, 64), 100, np.uint8) for _ in range(n)]
    mean = list((senior + junior) / 2)
    return prepare_images([f"{i:03d}" for i in range(n)], images, mean, [0.1] * n, 40, 32, (senior, junior))


def _which_doctor(points, senior, junior):
    if np.allclose(points, senior):
        return "senior"
    assert np.allclose(points, junior), "a drawn label is neither doctor's annotation"
    return "junior"


def test_landmark_dataset_draws_one_doctor_per_item_and_epoch():
    data = _prepared()
    codec = HeatmapCodec((40, 32), sigma=1.5)
    doctors = LandmarkDataset(data, codec, doctors=True)
    senior = np.stack([data.letterbox(i).to_prepared(data.senior_orig[i]) for i in range(len(data))])
    junior = np.stack([data.letterbox(i).to_prepared(data.junior_orig[i]) for i in range(len(data))])
    seen = []
    for epoch_seed in range(8):
        doctors.set_epoch_seed(epoch_seed)
        seen.append(
            [_which_doctor(doctors[i]["landmarks"].numpy(), senior[i], junior[i]) for i in range(len(data))]
        )
    assert {"senior", "junior"} == {w for row in seen for w in row}  # both doctors are drawn
    doctors.set_epoch_seed(3)
    again = [_which_doctor(doctors[i]["landmarks"].numpy(), senior[i], junior[i]) for i in range(len(data))]
    assert again == seen[3]  # the draw is a function of (epoch seed, index)
    mean = LandmarkDataset(data, codec)  # the default protocol: the prepared labels
    np.testing.assert_allclose(mean[0]["landmarks"].numpy(), data.landmarks[0])
    with pytest.raises(ValueError, match="doctors"):
        LandmarkDataset(data, codec, targets=np.zeros((len(data), K, 40, 32)), doctors=True)


def test_patch_dataset_draws_one_doctor_per_item():
    senior, junior = _doctors(n=2)
    images = [np.full((80, 64), 100, np.uint8) for _ in range(2)]
    fine = fine_from_images(images, [0.1, 0.1], 0.1, (senior + junior) / 2, doctors=(senior, junior))
    ds = PatchDataset(fine, 16, 1.5, seed=5, doctors=True)
    drawn = set()
    for j in range(len(ds)):
        i, k = divmod(j, K)
        item = ds[j]
        gt_fine = item["gt"].numpy() + item["origin"].numpy()  # no rotation or zoom: exact
        drawn.add(_which_doctor(gt_fine, senior[i, k], junior[i, k]))
    assert drawn == {"senior", "junior"}
    plain = PatchDataset(fine, 16, 1.5, seed=5)
    np.testing.assert_allclose(plain[0]["gt"].numpy() + plain[0]["origin"].numpy(), fine.landmarks_orig[0, 0])


def test_split_key_names_test_sets():
    assert split_key("Test1Data") == "test1" and split_key("Test2Data") == "test2"
