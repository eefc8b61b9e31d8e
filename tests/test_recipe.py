"""The decoding recipe: :class:`ReaderSpec` is frozen and checks its own values, a model folder
(card.json + files) is a recipe with one-line errors naming the file at fault, and
:func:`load_reader` checks the files together (with a tiny untrained U-Net: the plumbing, not
accuracy)."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
from conftest import tiny_refiner_checkpoint, tiny_unet_checkpoint

from mahtnet.cli import main
from mahtnet.decoding.recipe import TTA_SHIFTS_PX, ReaderSpec, load_reader
from mahtnet.decoding.shape import ShapePrior
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import sha256

K = len(LANDMARK_NAMES)


def _prior(k: int = K, seed: int = 0) -> ShapePrior:
    from mahtnet.data.synthetic import load_shape_model, sample_landmarks

    rng = np.random.default_rng(seed)
    return ShapePrior.fit(np.stack([sample_landmarks(rng, load_shape_model())[:k] for _ in range(30)]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A model folder: a checkpoint and a shape prior, listed by card.json with their sha256."""
    root = tmp_path_factory.mktemp("model")
    tiny_unet_checkpoint(root / "unet.pt", (64, 48))
    _prior().save(root / "shape_prior.npz")
    write_card(root, {"model": "unet.pt", "shape_prior": "shape_prior.npz"})
    return root


def write_card(root, reader, **more) -> None:
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in root.iterdir() if p.is_file()}
    files.pop("card.json", None)
    card = {"name": "tiny test model", "reader": reader, "files": files, **more}
    (root / "card.json").write_text(json.dumps(card))


def copy_folder(folder, to):
    to.mkdir()
    for p in folder.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_spec_is_frozen_and_checks_its_own_values(tmp_path):
    spec = ReaderSpec(str(tmp_path / "m.pt"), tta_shifts_px=[2])
    assert spec.model == tmp_path / "m.pt" and spec.tta_shifts_px == (2.0,) and spec.card is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model = tmp_path / "other.pt"
    assert ReaderSpec("m.pt").transforms() is None  # TTA off
    assert len(ReaderSpec("m.pt", tta_shifts_px=TTA_SHIFTS_PX).transforms()) == 1 + 4 * len(TTA_SHIFTS_PX)
    with pytest.raises(ValueError, match="--pixel-spacing: must be a positive number"):
        ReaderSpec("m.pt", pixel_spacing_mm=-0.1)
    with pytest.raises(ValueError, match="TTA shifts must be positive"):
        ReaderSpec("m.pt", tta_shifts_px=(-2,))
    with pytest.raises(ValueError, match="candidates"):
        ReaderSpec("m.pt", candidates=0)


def test_a_model_folder_is_a_recipe(folder):
    spec = ReaderSpec.from_folder(folder, device="cpu")
    assert spec.model == folder / "unet.pt" and spec.shape_prior == folder / "shape_prior.npz"
    assert spec.refiner is None and spec.card == folder / "card.json" and spec.device == "cpu"
    reader = load_reader(spec)
    assert reader.variants() == ["coarse", "shape"]
    described = spec.describe()
    assert described["name"] == "tiny test model"
    assert described["files"]["model"] == {"file": "unet.pt", "sha256": sha256(folder / "unet.pt")}
    assert str(folder) not in json.dumps(described)  # no path of this machine


@pytest.mark.parametrize(
    "damage, error, match",
    [
        (lambda d: (d / "card.json").unlink(), FileNotFoundError, r"card\.json: not found"),
        (lambda d: (d / "card.json").write_text("{not json"), ValueError, r"card\.json: not a readable card"),
        (lambda d: write_card(d, None), ValueError, r"card\.json: no 'reader' block"),
        (lambda d: write_card(d, {"model": "other.pt"}), ValueError, r"reader\.model 'other\.pt' is not one"),
        (lambda d: write_card(d, {"model": "unet.pt", "tta": 2}), ValueError, r"unknown reader key tta"),
        (lambda d: write_card(d, {"model": "unet.pt", "candidates": "3"}), ValueError, r"card\.json: candid"),
        (
            lambda d: (d / "shape_prior.npz").unlink(),
            FileNotFoundError,
            r"shape_prior\.npz: listed in .*card",
        ),
    ],
    ids=["no card", "bad json", "no reader", "unlisted file", "unknown key", "bad value", "missing file"],
)
def test_a_bad_model_folder_is_one_line_naming_the_file(folder, tmp_path, damage, error, match):
    bad = copy_folder(folder, tmp_path / "bad")
    damage(bad)
    with pytest.raises(error, match=match) as err:
        ReaderSpec.from_folder(bad)
    assert "\n" not in str(err.value)


def test_a_replaced_file_of_a_model_folder_is_refused(folder, tmp_path):
    changed = copy_folder(folder, tmp_path / "changed")
    _prior(seed=1).save(changed / "shape_prior.npz")  # another prior under the card's name
    spec = ReaderSpec.from_folder(changed)
    with pytest.raises(ValueError, match=r"shape_prior\.npz: not the file .*card\.json lists"):
        load_reader(spec)
    own = tmp_path / "own_prior.npz"  # a file the command names instead: not the card's business
    _prior().save(own)
    assert load_reader(dataclasses.replace(spec, shape_prior=own)).prior is not None


def test_load_reader_checks_the_files_together(folder, tmp_path):
    model = folder / "unet.pt"
    with pytest.raises(FileNotFoundError, match=r"missing\.npz: shape prior not found"):
        load_reader(ReaderSpec(model, shape_prior=tmp_path / "missing.npz"))
    _prior(5).save(tmp_path / "five.npz")
    with pytest.raises(ValueError, match=r"five\.npz: a shape prior of 5 landmarks, but .*unet\.pt reads 19"):
        load_reader(ReaderSpec(model, shape_prior=tmp_path / "five.npz", device="cpu"))
    other = tiny_refiner_checkpoint(tmp_path / "other_refiner.pt", [f"p{i}" for i in range(K)])
    with pytest.raises(ValueError, match=r"other_refiner\.pt: a refiner of other landmarks"):
        load_reader(ReaderSpec(model, refiner=other, device="cpu"))
    good = load_reader(
        ReaderSpec(model, refiner=tiny_refiner_checkpoint(tmp_path / "refiner.pt"), device="cpu")
    )
    assert good.variants() == ["coarse", "refined"]


def test_predict_takes_a_model_folder(folder, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 255, (120, 100), np.uint8))
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "a.png"), "--model", str(folder), "--out", str(out), "--no-overlay"]
    assert main([*args, "--device", "cpu", "--pixel-spacing", "0.1"]) == 0
    doc = json.loads((out / "a.json").read_text())
    assert doc["decoding"] == "shape-consistent"  # the folder's shape prior
    assert doc["model"]["sha256"] == sha256(folder / "unet.pt")


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory):
    """A points ensemble's folder: two tiny U-Nets (other seeds), their refiners, one shape prior."""
    root = tmp_path_factory.mktemp("ensemble")
    for seed, name in ((0, "unet.pt"), (1, "unet_s1.pt")):
        tiny_unet_checkpoint(root / name, (64, 48), seed=seed)
        tiny_refiner_checkpoint(root / name.replace("unet", "refiner"), seed=1 + seed)
    _prior().save(root / "shape_prior.npz")
    reader = {"model": "unet.pt", "shape_prior": "shape_prior.npz", "refiner": "refiner.pt"}
    write_card(root, reader | {"members": [{"model": "unet_s1.pt", "refiner": "refiner_s1.pt"}]})
    return root


def test_an_ensemble_folder_reads_the_members_mean(ensemble_folder, tmp_path):
    from mahtnet.decoding.ensemble import PointsEnsembleReader

    spec = ReaderSpec.from_folder(ensemble_folder, device="cpu")
    assert [m.model.name for m in spec.members] == ["unet_s1.pt"]
    assert set(spec.files()) == {"model", "shape_prior", "refiner", "members[0].model", "members[0].refiner"}
    assert spec.describe()["ensemble_members"] == 2
    reader = load_reader(spec)
    assert isinstance(reader, PointsEnsembleReader) and reader.variants() == ["coarse", "shape", "refined"]
    image = np.random.default_rng(0).integers(0, 255, (120, 100), np.uint8)
    out = reader.read_images([image], [0.1])
    singles = [m.read_images([image], [0.1]) for m in reader.members]
    for v in out.landmarks:
        assert np.allclose(out.landmarks[v], np.mean([s.landmarks[v] for s in singles], axis=0))
    finals = np.stack([s.final[0] for s in singles])
    spread = np.linalg.norm(finals - finals.mean(axis=0), axis=-1).mean(axis=0) * 0.1
    assert np.allclose(out.signals["members_spread_mm"][0], spread) and spread.max() > 0
    assert np.all(np.isnan(reader.read_images([image], [None]).signals["members_spread_mm"]))
    one = load_reader(dataclasses.replace(spec, members=()))  # --single: the first network alone
    assert np.allclose(one.read_images([image], [0.1]).final, singles[0].final)


@pytest.mark.parametrize(
    "members, match",
    [
        (
            [{"model": "nope.pt", "refiner": "refiner_s1.pt"}],
            r"reader\.members\[0\]\.model 'nope\.pt' is not one",
        ),
        ([{"model": "unet_s1.pt"}], r"members\[0\]: every member needs a refiner exactly when"),
        ([{"refiner": "refiner_s1.pt"}], r"reader\.members must be a list of \{model, refiner\}"),
        ("unet_s1.pt", r"reader\.members must be a list"),
    ],
    ids=["unlisted file", "no refiner", "no model", "not a list"],
)
def test_a_bad_members_block_is_one_line(ensemble_folder, tmp_path, members, match):
    bad = copy_folder(ensemble_folder, tmp_path / "bad")
    reader = {
        "model": "unet.pt",
        "shape_prior": "shape_prior.npz",
        "refiner": "refiner.pt",
        "members": members,
    }
    write_card(bad, reader)
    with pytest.raises(ValueError, match=match) as err:
        ReaderSpec.from_folder(bad)
    assert "\n" not in str(err.value)


def test_single_and_an_own_refiner_drop_the_members(ensemble_folder):
    import argparse

    from mahtnet.cli import reader_spec

    def args(**kw):
        base = {"model": ensemble_folder, "shape_prior": None, "refiner": None, "calibration": None}
        return argparse.Namespace(**(base | kw), tta=False, pixel_spacing=None, device="cpu", threads=0)

    assert len(reader_spec(args(single=False)).members) == 1
    assert reader_spec(args(single=True)).members == ()
    assert reader_spec(args(single=False, refiner=ensemble_folder / "refiner_s1.pt")).members == ()
