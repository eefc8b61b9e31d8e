"""Training under torchrun on CPU (gloo): two processes on one node, and two "nodes" (two
torchrun launchers on loopback with c10d rendezvous, one process each) that must give the
single-node result bit for bit, write every file from global rank 0 only, and resume a
killed run exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from conftest import REPO
from test_training import TIMING, _prepared, _set, tiny_raw

from mahtnet.codec import HeatmapCodec, encode_set
from mahtnet.models.checkpoint import load_checkpoint, load_train_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 64
EPOCHS = 5
STAGE_ARGS = [
    *("--stage", "baseline", "--prepared", "prepared", "--targets", "targets"),
    *("--checkpoint", "models/baseline.pt", "--state-dir", "runs", "--history", "history.csv"),
    *("--grad-flow", "gf.png", "--metrics", "metrics.json"),
]


def workspace(tmp_path: Path, name: str, raw: dict, sets) -> Path:
    """A folder with params.yaml, prepared train/val sets and validation targets."""
    ws = tmp_path / name
    ws.mkdir()
    store = f"sqlite:///{ws / 'mlflow.db'}"  # no model logging: a torch.export per run, tested elsewhere
    raw = {**raw, "tracking": {**raw["tracking"], "uri": store, "log_models": False}}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    for split, d in zip(("train", "val"), sets, strict=True):
        d.save(ws / "prepared" / f"{split}.npz")
    codec = HeatmapCodec((SIZE, SIZE), sigma=raw["heatmap"]["sigma"])
    (ws / "targets").mkdir()
    val_targets = encode_set(codec, sets[1].landmarks)[0]
    np.savez(
        ws / "targets" / "stride1.npz", val=val_targets, sigma=codec.sigma, stride=1, input_size=(SIZE, SIZE)
    )
    return ws


@pytest.fixture(scope="module")
def data():
    return _prepared(8, 1), _prepared(4, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ws: Path, launcher: list[str]) -> subprocess.Popen:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1", "HOME": str(ws)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher,
        str(REPO / "stages" / "train.py"),
        *STAGE_ARGS,
    ]
    return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def node_launchers(port: int, run_id: str) -> list[list[str]]:
    """The multi-node command of docs/team.md for two nodes on loopback, one process each."""
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    common += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id, "--local-addr", "127.0.0.1"]
    return [[*common, "--node-rank", str(rank)] for rank in (0, 1)]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
        outs.append(stdout)
    return outs


def run_two_nodes(ws: Path, run_id: str) -> list[subprocess.Popen]:
    port = free_port()
    return [launch(ws, args) for args in node_launchers(port, run_id)]


def kill_after_epoch(procs: list[subprocess.Popen], ws: Path, epoch: int) -> None:
    """SIGKILL both launchers and their workers once the state of ``epoch`` is saved."""
    history = ws / "history.csv"  # written just before the state
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if history.is_file() and len(history.read_text().splitlines()) >= epoch + 2:
            break
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "the training ended before it could be killed"
    tree = [
        q for p in procs for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    ]
    for q in tree:  # the workers run in sessions of their own: kill each process
        with contextlib.suppress(psutil.NoSuchProcess):
            q.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate()


def history(ws: Path) -> pd.DataFrame:
    return pd.read_csv(ws / "history.csv").drop(columns=list(TIMING))


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_nodes_equal_one_node_and_resume_exactly(data, tmp_path):
    """Two processes on one node write one checkpoint from rank 0; two nodes (one process each),
    killed after epoch 2 and relaunched, resume from the saved state and end with the one-node
    history and weights bit for bit: equal to one node and an exact resume in one comparison."""
    raw = _set(tiny_raw(), baseline__epochs=EPOCHS)
    one = workspace(tmp_path, "one_node", raw, data)
    (stdout,) = finish([launch(one, ["--standalone", "--nproc-per-node", "2"])])
    assert [p.name for p in (one / "models").iterdir()] == ["baseline.pt"]
    assert sorted(p.name for p in (one / "runs").iterdir()) == ["best.pt", "last.pt"]
    metrics = json.loads((one / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == EPOCHS
    assert stdout.count("baseline epoch   1") == 1  # rank 0 logs alone

    two = workspace(tmp_path, "two_nodes", raw, data)
    kill_after_epoch(run_two_nodes(two, "killed-1"), two, epoch=2)
    saved = load_train_state(two / "runs" / "last.pt")["epoch"]
    assert 2 <= saved < EPOCHS and not (two / "models").exists()
    outs = finish(run_two_nodes(two, "killed-2"))
    assert sum(f"resuming after epoch {saved}" in o for o in outs) == 1  # global rank 0 alone logs
    assert sum(o.count(f"baseline epoch   {EPOCHS}") for o in outs) == 1
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (two / "runs").iterdir()) == ["best.pt", "last.pt"]
    pd.testing.assert_frame_equal(history(two), history(one))
    assert same_weights(two / "models" / "baseline.pt", one / "models" / "baseline.pt")
