import copy

import pytest
import yaml

from mahtnet.config import ParamsError, load_params, parse_params


def test_repo_params_are_valid(params_raw):
    p = parse_params(params_raw)
    assert p.model.name == "unet"
    assert p.evaluate.sdr_thresholds_mm == [2.0, 2.5, 3.0, 4.0]


def test_unknown_key_is_named(params_raw, tmp_path):
    raw = copy.deepcopy(params_raw)
    raw["train"]["epoch"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: unknown params key 'train.epoch'.*epochs"):
        load_params(path)


def test_unknown_nested_and_top_level_keys(params_raw):
    raw = copy.deepcopy(params_raw)
    raw["train"]["augment"]["rotate"] = 3
    with pytest.raises(ParamsError, match=r"'train.augment.rotate'"):
        parse_params(raw)
    raw = copy.deepcopy(params_raw)
    raw["trian"] = {}
    with pytest.raises(ParamsError, match=r"'trian'"):
        parse_params(raw)


def test_missing_key_wrong_type_nan_and_bad_choice(params_raw):
    raw = copy.deepcopy(params_raw)
    del raw["train"]["lr"]
    with pytest.raises(ParamsError, match="missing params key 'train.lr'"):
        parse_params(raw)
    raw = copy.deepcopy(params_raw)
    raw["train"]["epochs"] = "ten"
    with pytest.raises(ParamsError, match="'train.epochs' must be an integer"):
        parse_params(raw)
    raw = copy.deepcopy(params_raw)
    raw["train"]["lr"] = float("nan")
    with pytest.raises(ParamsError, match="'train.lr' must be finite"):
        parse_params(raw)
    raw = copy.deepcopy(params_raw)
    raw["data"]["gt"] = "average"
    with pytest.raises(ParamsError, match="'data.gt'.*mean, senior, junior"):
        parse_params(raw)
    raw = copy.deepcopy(params_raw)
    raw["preprocess"]["height"] = 100
    with pytest.raises(ParamsError, match="multiple of 16"):
        parse_params(raw)
