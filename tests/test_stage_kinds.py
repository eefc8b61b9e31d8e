"""The table of training stage kinds (mahtnet.training.kinds) against the pipeline that runs
them and the params that schedule them."""

import shlex

import pytest
import yaml
from conftest import REPO

from mahtnet.config import StageParams, parse_params
from mahtnet.training.kinds import STAGE_KINDS, kinds_of_script, stage_epochs, stage_kind, stage_params


def _commands() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: shlex.split(s.get("do", s)["cmd"]) for name, s in stages.items()}


@pytest.mark.parametrize("kind", STAGE_KINDS.values(), ids=list(STAGE_KINDS))
def test_each_kind_is_the_dvc_stage_that_its_row_describes(kind):
    cmd = _commands()[f"train_{kind.name}"]
    assert cmd[1] == f"stages/{kind.script}" and (REPO / cmd[1]).is_file()
    if len(kinds_of_script(kind.script)) > 1:
        assert cmd[cmd.index("--stage") + 1] == kind.name
    else:
        assert "--stage" not in cmd
    init = cmd[cmd.index("--init") + 1] if "--init" in cmd else None
    assert init == (None if kind.init is None else f"data/models/{kind.init}.pt")
    assert ("--teacher" in cmd) == kind.teacher


def test_every_training_script_trains_the_kinds_of_its_rows():
    scripts = {p.name for p in (REPO / "stages").glob("train*.py")}
    assert scripts == {k.script for k in STAGE_KINDS.values()}


def test_schedules_budgets_and_unknown_names(params_raw):
    p = parse_params(params_raw)
    for name in STAGE_KINDS:
        assert isinstance(stage_params(p, name), StageParams)
        assert stage_epochs(p, name) >= 1
    assert stage_params(p, "distill") is p.distill.train and stage_params(p, "prune") is p.prune.train
    with pytest.raises(KeyError, match="valid: baseline, stage1"):
        stage_kind("stage4")
