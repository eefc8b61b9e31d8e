"""The default SQLite store under parallel experiments (``dvc queue start -j N``): processes that
create the store, its experiment and the same datasets at the same moment lose no run
(scripts/sqlite_concurrency.py; docs/team.md), and a run is found by its DVC experiment name
and git revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from mlflow.exceptions import MlflowException

from mahtnet.config import TrackingParams
from mahtnet.tracking import _retried, start_run


@pytest.mark.slow
def test_four_processes_on_a_new_store_lose_no_run(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "sqlite_concurrency.py"), "--procs", "4", "--runs", "3"]
    args += ["--epochs", "10", "--collide", "2", "--store", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_", "DVC_"))}
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout, result.stderr[-3000:]
    counted = json.loads(result.stdout)
    assert counted["runs_complete"] == counted["runs_expected"] == 12, counted
    assert counted["errors"] == 0 and counted["workers_failed"] == 0, counted
    assert result.returncode == 0


def test_conflicts_are_retried_and_other_errors_raised(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky(x, fail=2, message="(sqlite3.OperationalError) database is locked"):
        calls.append(x)
        if len(calls) <= fail:
            raise MlflowException(message)
        return x

    assert _retried(flaky, 7) == 7 and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="UNIQUE constraint failed"):
        _retried(flaky, 7, fail=9, message="UNIQUE constraint failed: datasets.name")
    assert len(calls) == 5  # attempts
    calls.clear()
    with pytest.raises(MlflowException, match="Invalid"):
        _retried(flaky, 7, message="Invalid metric name")
    assert len(calls) == 1


def test_runs_are_found_by_dvc_experiment_and_git_revision(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-3")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    with start_run(TrackingParams(experiment="tags", uri=None, log_models=False), "train_stage1", {}):
        pass
    monkeypatch.delenv("DVC_EXP_NAME")
    with start_run(TrackingParams(experiment="tags", uri=None, log_models=False), "evaluate", {}):
        pass
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tags")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id], "tags.\"dvc.exp_name\" = 'lr-sweep-3'")
    assert run.info.run_name == "lr-sweep-3/train_stage1"
    assert run.data.tags["git.commit"] == "f" * 40 and run.data.tags["pipeline"] == "lr-sweep-3@ffffffff"
    both = client.search_runs([experiment.experiment_id], f"tags.\"git.commit\" = '{'f' * 40}'")
    assert {r.info.run_name for r in both} == {"lr-sweep-3/train_stage1", "evaluate"}
    assert (tmp_path / "mlflow.db.lock").is_file()  # the store was opened under its lock
