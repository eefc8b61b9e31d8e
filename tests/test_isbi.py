import cv2
import numpy as np
import pytest

from mahtnet.data.isbi import DataError, list_split, load_landmarks, read_annotation, read_image


def test_isbi_loader_on_shared_data(isbi_root):
    senior = load_landmarks(isbi_root, "001", "senior")
    assert senior.shape == (19, 2)
    assert tuple(senior[0]) == (835, 996)  # image 001, senior, landmark 1 (sella)
    junior = load_landmarks(isbi_root, "001", "junior")
    np.testing.assert_allclose(load_landmarks(isbi_root, "001", "mean"), (senior + junior) / 2)
    train = list_split(isbi_root, "TrainingData", "mean")
    assert len(train) == 150 and train[0].image_id == "001" and train[-1].image_id == "150"
    assert train[0].pixel_spacing_mm == 0.1
    image = read_image(train[0].image_path)
    assert image.shape == (2400, 1935) and image.dtype == np.uint8


def test_missing_split_is_a_clear_error(tmp_path):
    root = _layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'Test2Data' not found.*present: TrainingData"):
        list_split(root, "Test2Data", "mean")


def test_challenge_ground_truth_on_shared_data(isbi_root):
    """The official ground truth (400_challenge) is the senior doctor's on 001-300 and on Test2
    differs from it in landmark 16 (soft-tissue pogonion) only; it is what is scored."""
    for image_id in ("001", "151", "300"):
        np.testing.assert_array_equal(
            load_landmarks(isbi_root, image_id, "challenge"), load_landmarks(isbi_root, image_id, "senior")
        )
    test2 = list_split(isbi_root, "Test2Data", "senior")
    assert len(test2) == 100 and test2[0].image_id == "301" and test2[-1].image_id == "400"
    differs = np.stack([np.any(s.official != s.senior, axis=1) for s in test2])  # (100, 19)
    assert differs[:, 15].any() and not np.delete(differs, 15, axis=1).any()
    np.testing.assert_array_equal(test2[0].official, load_landmarks(isbi_root, "301", "challenge"))
    doctors = list_split(isbi_root, "Test2Data", "doctors")
    np.testing.assert_allclose(doctors[0].landmarks, (doctors[0].senior + doctors[0].junior) / 2)


def test_missing_challenge_folder_is_named(tmp_path):
    root = _layout(tmp_path)
    cv2.imwrite(str(root / "RawImage" / "TrainingData" / "001.png"), np.zeros((40, 40), np.uint8))
    with pytest.raises(FileNotFoundError, match="400_challenge"):
        list_split(root, "TrainingData", "mean", dataset="isbi2015")
    with pytest.raises(FileNotFoundError, match="400_challenge"):
        load_landmarks(root, "001", "challenge")
    with pytest.raises(KeyError, match="unknown ground truth 'chief'"):
        list_split(root, "TrainingData", "chief", dataset="isbi2015")


def _layout(tmp_path, n_lines=19):
    (tmp_path / "RawImage" / "TrainingData").mkdir(parents=True)
    for who in ("senior", "junior"):
        d = tmp_path / "AnnotationsByMD" / f"400_{who}"
        d.mkdir(parents=True)
        (d / "001.txt").write_text("\n".join(f"{i},{2 * i}" for i in range(n_lines)) + "\n")
    return tmp_path


def test_annotation_extra_lines_are_ignored(tmp_path):
    root = _layout(tmp_path, n_lines=24)
    pts = read_annotation(root / "AnnotationsByMD" / "400_senior" / "001.txt")
    assert pts.shape == (19, 2) and tuple(pts[18]) == (18, 36)


def test_annotation_wrong_line_count_names_file(tmp_path):
    root = _layout(tmp_path, n_lines=18)
    path = root / "AnnotationsByMD" / "400_senior" / "001.txt"
    with pytest.raises(DataError, match=r"001\.txt.*18 landmark lines, expected 19"):
        read_annotation(path)


def test_annotation_garbage_and_nan(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("1,2\n" * 5 + "x;y\n" + "1,2\n" * 13)
    with pytest.raises(DataError, match=r"a\.txt:6"):
        read_annotation(path)
    path.write_text("1,2\n" * 5 + "nan,2\n" + "1,2\n" * 13)
    with pytest.raises(DataError, match="non-finite"):
        read_annotation(path)


def test_missing_and_corrupt_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(bad)


def test_missing_annotation_names_file(tmp_path):
    root = _layout(tmp_path)
    (root / "RawImage" / "TrainingData" / "002.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="002.txt"):
        list_split(root, "TrainingData", "mean", dataset="isbi2015")


def test_cross_validation_folds_are_list_file_splits(isbi_root):
    """``cv4/setN/{train,val}`` (the dataset's 4-fold split of all 400 images) read as splits:
    300 + 100 images from the three RawImage folders, the folds' validation sets a partition."""
    from mahtnet.data.preprocess import split_key

    seen = []
    for n in range(1, 5):
        train = list_split(isbi_root, f"cv4/set{n}/train", "mean")
        val = list_split(isbi_root, f"cv4/set{n}/val", "mean")
        assert (len(train), len(val)) == (300, 100)
        ids = [s.image_id for s in train]
        assert ids == sorted(ids) and not set(ids) & {s.image_id for s in val}
        assert {s.image_path.parent.name for s in train} == {"TrainingData", "Test1Data", "Test2Data"}
        seen += [s.image_id for s in val]
    assert sorted(seen) == [f"{i:03d}" for i in range(1, 401)]
    np.testing.assert_allclose(val[0].landmarks, load_landmarks(isbi_root, val[0].image_id, "mean"))
    assert split_key("cv4/set3/val") == "cv4-set3-val" and split_key("Test2Data") == "test2"


def test_a_list_file_split_names_what_is_wrong(tmp_path):
    root = _layout(tmp_path)
    cv2.imwrite(str(root / "RawImage" / "TrainingData" / "001.png"), np.zeros((40, 40), np.uint8))
    (root / "folds").mkdir()
    (root / "folds" / "a.txt").write_text("001\n002\n")
    with pytest.raises(DataError, match=r"folds/a.txt: image 002 not found .*\(1 missing\)"):
        list_split(root, "folds/a", "mean", dataset="isbi2015")
    (root / "folds" / "b.txt").write_text("001\n001\n")
    with pytest.raises(DataError, match="folds/b.txt: repeated image ids"):
        list_split(root, "folds/b", "mean", dataset="isbi2015")
    (root / "folds" / "c.txt").write_text("\n")
    with pytest.raises(DataError, match="folds/c.txt: no image ids"):
        list_split(root, "folds/c", "mean", dataset="isbi2015")
    with pytest.raises(FileNotFoundError, match="split 'folds/d' not found"):
        list_split(root, "folds/d", "mean", dataset="isbi2015")


def test_split_seed_keeps_one_validation_split_across_seeds(isbi_root):
    """data.split_seed: None draws the held-out images with the run's seed (each seed its own
    split, as before); a fixed value gives every seed the same split (ensemble members)."""
    import dataclasses

    from mahtnet.config import DataParams
    from mahtnet.data.preprocess import prepare_splits

    class Listed(list):
        def subset(self, index):
            return Listed(self[i] for i in index)

    def val_ids(split_seed, seed):
        d = DataParams("isbi2015", str(isbi_root), "mean", "TrainingData", "Test1Data", [], 0.1, split_seed)
        return [s.image_id for s in prepare_splits(d, seed, Listed)["val"]]

    assert len(val_ids(None, 43)) == 15 and val_ids(None, 43) != val_ids(None, 44)
    assert val_ids(42, 43) == val_ids(42, 44) == val_ids(None, 42)
    assert [f.name for f in dataclasses.fields(DataParams)][-1] == "split_seed"
