"""Named parameter profiles (profiles.yaml): valid settings, absolute paths, README in sync."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from mahtnet.config import ParamsError, load_profiles, with_settings, yaml_value

PROFILES = load_profiles(REPO / "profiles.yaml", REPO)


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_is_a_valid_params_setting(name, params_raw):
    params = with_settings(params_raw, PROFILES[name]["set"])
    assert params.data.dataset == "isbi2015"
    assert Path(params.data.root).is_absolute() and Path(params.model.encoder_weights).is_absolute()
    assert params_raw["data"]["dataset"] == "synthetic"  # the raw mapping is left unchanged


def test_profiles_choose_the_ground_truth_and_the_readme_names_them(params_raw):
    assert with_settings(params_raw, PROFILES["isbi-senior"]["set"]).data.gt == "senior"
    assert with_settings(params_raw, PROFILES["isbi-mean"]["set"]).data.gt == "mean"
    readme = (REPO / "README.md").read_text()
    for name in PROFILES:
        assert f"scripts/run_profile.py {name}" in readme


def test_unknown_keys_are_named(params_raw):
    with pytest.raises(ParamsError, match="unknown params key 'stage1.epoch'"):
        with_settings(params_raw, {"stage1.epoch": 3})
    with pytest.raises(ParamsError, match="unknown params key 'nosuch'"):
        with_settings(params_raw, {}, ["nosuch.key=1"])


def test_profile_script_prints_the_dvc_command_with_extra_settings_last():
    result = subprocess.run(
        [sys.executable, "scripts/run_profile.py", "isbi-senior", "--print", "-S", "seed=7"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    cmd = result.stdout.split()
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "isbi-senior"]
    assert "data.gt=senior" in cmd and cmd[-2:] == ["-S", "seed=7"]
    temp = subprocess.run(
        [
            sys.executable,
            "scripts/run_profile.py",
            "isbi-mean",
            "--print",
            "--temp",
            "--target",
            "evaluate@maht_net",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert (
        "--temp" in temp and temp[-1] == "evaluate@maht_net" and "data.extra_test_splits=[Test2Data]" in temp
    )
    assert yaml_value(False) == "false" and yaml_value([0.95, 1.05]) == "[0.95, 1.05]"
