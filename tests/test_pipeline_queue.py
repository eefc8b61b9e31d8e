"""A queued DVC experiment against the tiny pipeline (the ``pipeline`` fixture of
tests/conftest.py), in a copy of it: a file of its own so that it runs beside
tests/test_pipeline_commands.py, not after it (about 90 s on 2 cores)."""

import shutil
import sys
from pathlib import Path

import pytest
from tiny_pipeline import run, run_ok

pytestmark = pytest.mark.slow


def test_queued_experiment_reruns_only_what_a_model_setting_touches(pipeline, tmp_path):
    """A MAHT-Net setting changed in a queued experiment (``dvc exp run --queue``, run by the
    queue's worker in a fresh copy of the repository): its own log shows the U-Net's chain
    (training, refiner, evaluation) restored, not run, and MAHT-Net's first stage re-run. Two
    targets keep it short (one training); docs/evaluation.md lists what else a model.* change
    re-runs."""
    dvc = str(Path(sys.executable).parent / "dvc")
    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    steps = (
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"],
        [dvc, "exp", "run", "--queue", "-n", "tf2", "-S", "model.transformer_layers=2"]
        + ["evaluate@baseline", "train_stage1"],
        [dvc, "exp", "run", "--run-all", "-j", "1"],  # the queue's worker, in the foreground
    )
    for cmd in steps:
        run_ok(cmd, work)
    log = run([dvc, "queue", "logs", "tf2"], work).stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    # restored: from the committed lockfile ("didn't change") or from the run-cache ("is cached")
    restored = {
        line.split("'")[1] for line in log.splitlines() if line.startswith("Stage '") and "skipping" in line
    }
    assert ran == {"train_stage1"}, log[-3000:]
    u_net = {"train_baseline", "train_refine@baseline", "evaluate@baseline", "preprocess"}
    assert u_net <= restored, log[-3000:]
    shown = run([dvc, "exp", "show", "--csv", "--no-pager"], work)
    assert "tf2" in shown.stdout
