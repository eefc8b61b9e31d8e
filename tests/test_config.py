import pytest
import yaml
from conftest import DELETE, edited

from mahtnet.config import ParamsError, load_params, parse_params


def test_repo_params_are_valid(params_raw):
    p = parse_params(params_raw)
    assert p.model.name == "unet"
    assert p.evaluate.sdr_thresholds_mm == [2.0, 2.5, 3.0, 4.0]


def test_unknown_key_is_named(params_raw, tmp_path):
    raw = edited(params_raw, "train.epoch", 3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: unknown params key 'train.epoch'.*epochs"):
        load_params(path)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.augment.rotate", 3, r"'train.augment.rotate'"),
        ("trian", {}, r"'trian'"),
        ("train.lr", DELETE, "missing params key 'train.lr'"),
        ("train.epochs", "ten", "'train.epochs' must be an integer"),
        ("train.lr", float("nan"), "'train.lr' must be finite"),
        ("data.gt", "average", "'data.gt'.*mean, senior, junior"),
        ("preprocess.height", 100, "multiple of 16"),
    ],
)
def test_bad_params_name_the_key(params_raw, key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(edited(params_raw, key, value))
