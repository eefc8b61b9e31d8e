"""The team tracking server of scripts/tracking_server.sh (PostgreSQL backend store, artifacts
proxied by ``mlflow server``) on loopback: two training stages of two DVC experiments log to it
at the same time, and every run, per-epoch metric, artifact and registered model arrives.
Both servers are stopped afterwards, also when a test fails."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_training import SIZE, _prepared, _set, tiny_raw

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "tracking_server.sh"
EPOCHS = 2
EXPERIMENTS = {"exp-unet": "baseline", "exp-maht": "stage1"}  # DVC experiment name -> stage
REV = "0123456789abcdef0123456789abcdef01234567"  # the experiments' baseline git revision


def _postgres_missing() -> str | None:
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        return "PostgreSQL server binaries (initdb) absent: apt-get install -y postgresql (.ci/run does)"
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root needs the 'postgres' user of the postgresql package"
    return None


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_", "DVC_"))}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "NO_PROXY": "127.0.0.1,localhost", **extra}


def _script(command: str, folder: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = _env(PYTHON=sys.executable, MLFLOW_SERVER_WORKERS="1")
    return subprocess.run(
        ["bash", str(SCRIPT), command, str(folder)], env=env, capture_output=True, text=True, timeout=timeout
    )


def _kill_leftovers(folder: Path) -> None:
    """After a failed stop: the mlflow process group and the postmaster, by their pid files."""
    for pid_file, group in (
        (folder / "mlflow.pid", True),
        (folder / "postgres" / "data" / "postmaster.pid", False),
    ):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGQUIT)  # the postmaster's immediate shutdown


@pytest.fixture(scope="module")
def server():
    """(tracking URI, server folder) of a started server; stopped and removed at the end."""
    reason = _postgres_missing()
    if reason:
        pytest.skip(reason)
    # not under pytest's tmp folder: its parent is private to root, and postgres must reach it
    folder = Path(tempfile.mkdtemp(prefix="mahtnet-tracking-"))
    try:
        t0 = time.perf_counter()
        started = _script("start", folder)
        assert started.returncode == 0, started.stderr + _tail(folder / "mlflow.log")
        line = started.stdout.strip().splitlines()[-1]
        assert line.startswith("export MLFLOW_TRACKING_URI=http://127.0.0.1:")
        print(f"servers started in {time.perf_counter() - t0:.1f} s")
        yield line.split("=", 1)[1], folder
    finally:
        stopped = _script("stop", folder, timeout=90)
        if stopped.returncode != 0:
            _kill_leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def _tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.is_file() else ""


def _workspace(root: Path, stage: str) -> Path:
    """Prepared train/val sets, validation targets and tiny params for ``stage``."""
    import numpy as np
    import yaml

    from mahtnet.codec import HeatmapCodec, encode_set

    ws = root / stage
    raw = _set(tiny_raw(), baseline__epochs=EPOCHS, stage1__epochs=EPOCHS, stage1__warmup_epochs=1)
    raw["model"].update(unet_channels=4, unet_depth=2)
    (ws / "prepared").mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    sets = _prepared(8, 1), _prepared(4, 2)
    for split, d in zip(("train", "val"), sets, strict=True):
        d.save(ws / "prepared" / f"{split}.npz")
    codec = HeatmapCodec((SIZE, SIZE), sigma=raw["heatmap"]["sigma"])
    (ws / "targets").mkdir()
    np.savez(
        ws / "targets" / "stride1.npz",
        val=encode_set(codec, sets[1].landmarks)[0],
        sigma=codec.sigma,
        stride=1,
        input_size=codec.input_size,
    )
    return ws


def _train(ws: Path, stage: str, exp: str, uri: str) -> subprocess.Popen:
    args = [sys.executable, str(REPO / "stages" / "train.py"), "--stage", stage]
    args += ["--prepared", "prepared", "--targets", "targets", "--checkpoint", f"models/{stage}.pt"]
    args += ["--state-dir", "runs", "--history", "history.csv", "--grad-flow", "grad_flow.png"]
    args += ["--metrics", "metrics.json"]
    env = _env(MLFLOW_TRACKING_URI=uri, DVC_EXP_NAME=exp, DVC_EXP_BASELINE_REV=REV, HOME=str(ws))
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(args, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """The two stages, run at the same time against the server: {experiment: workspace}."""
    uri, _ = server
    root = tmp_path_factory.mktemp("stages")
    spaces = {exp: _workspace(root, stage) for exp, stage in EXPERIMENTS.items()}
    t0 = time.perf_counter()
    procs = {exp: _train(spaces[exp], EXPERIMENTS[exp], exp, uri) for exp in EXPERIMENTS}
    conflicts = 0
    try:
        for exp, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{exp}: {out[-2000:]}{err[-3000:]}"
            conflicts += err.count("MLflow store conflict, retrying")  # mahtnet.tracking._retried
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    print(f"two stages logged in {time.perf_counter() - t0:.1f} s ({conflicts} store conflicts retried)")
    return spaces


def test_concurrent_stages_log_every_run_metric_and_artifact(server, trained, tmp_path):
    from mlflow import MlflowClient

    uri, folder = server
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mahtnet")
    assert experiment is not None
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{e}/train_{s}" for e, s in EXPERIMENTS.items())
    for exp, stage in EXPERIMENTS.items():
        # the docs' way from `dvc exp show` to the runs: the experiment name is a tag
        (run,) = client.search_runs([experiment.experiment_id], f"tags.\"dvc.exp_name\" = '{exp}'")
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == REV and run.data.tags["pipeline"] == f"{exp}@{REV[:8]}"
        assert run.data.tags["stage"] == f"train_{stage}"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
        history = client.get_metric_history(run.info.run_id, "val/mre_mm")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # step = epoch
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == EPOCHS
        assert run.data.metrics["epochs_run"] == EPOCHS
        assert run.data.params["train.batch_size"] == "4"
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"history.csv", "metrics.json", "grad_flow.png"} <= names
        got = client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path))
        assert Path(got).read_text() == (trained[exp] / "history.csv").read_text()
        assert len(run.inputs.dataset_inputs) == 2  # training and validation images
    by_commit = client.search_runs([experiment.experiment_id], f"tags.\"git.commit\" = '{REV}'")
    assert len(by_commit) == len(EXPERIMENTS)
    stored = {p.name for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"history.csv", "metrics.json", "grad_flow.png", "MLmodel"} <= stored


def test_models_are_registered_through_the_server(server, trained):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server[0])
    for name, stage in (("unet", "baseline"), ("maht_net", "stage1")):
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.tags["stage"] == stage and version.status == "READY"


def test_status_reports_both_servers(server):
    status = _script("status", server[1])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "PostgreSQL: running" in status.stdout and "MLflow: running" in status.stdout
    assert status.stdout.strip().splitlines()[-1] == f"export MLFLOW_TRACKING_URI={server[0]}"
