"""Three-stage training: freezing, per-group learning rates, exact resume after a kill,
determinism, early stopping, averaging, monitoring (torchrun: test_distributed.py)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO

from mahtnet.codec import HeatmapCodec, encode_set
from mahtnet.config import EarlyStoppingParams, parse_params
from mahtnet.data.preprocess import PreparedSet
from mahtnet.models.checkpoint import CheckpointError, average_state_dicts, load_checkpoint, load_train_state
from mahtnet.training.loop import EarlyStopping, StageOutputs
from mahtnet.training.stages import build_stage_model, configure_stage, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 64
TIMING = ("epoch_time_s", "images_per_s", "peak_memory_mb")


def tiny_raw() -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["preprocess"].update(height=SIZE, width=SIZE)
    raw["model"].update(
        unet_channels=4,
        unet_depth=2,
        encoder="efficientnet_lite0",
        transformer_layers=1,
        transformer_dim=16,
        transformer_heads=2,
        transformer_pos_size=2,
        decoder_channels=8,
    )
    raw["train"].update(batch_size=4, threads=1, augment={**raw["train"]["augment"], "p_noise": 0.0})
    raw["evaluate"]["batch_size"] = 4
    for stage in ("stage1", "stage2", "stage3"):
        raw[stage].update(epochs=2, warmup_epochs=1)
    raw["baseline"]["epochs"] = 6  # the same budget
    return raw


def _set(raw: dict, **dotted) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in dotted.items():
        *parents, last = key.split("__")
        section = raw
        for name in parents:
            section = section[name]
        section[last] = value
    return raw


def _prepared(n: int, seed: int) -> PreparedSet:
    """Images with a bright blob at each of the 19 landmarks (enough to learn a little)."""
    rng = np.random.default_rng(seed)
    landmarks = rng.uniform(8, SIZE - 8, size=(n, 19, 2))
    codec = HeatmapCodec((SIZE, SIZE), sigma=1.5)
    blobs, _ = encode_set(codec, landmarks)
    images = np.clip(blobs.max(axis=1) * 200 + rng.normal(20, 5, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)
    box = np.array([1.0, 1.0, 0, 0, SIZE, SIZE])
    return PreparedSet(
        ids=np.array([f"{seed}{i:03d}" for i in range(n)]),
        images=images,
        landmarks=landmarks,
        landmarks_orig=landmarks.copy(),
        boxes=np.tile(box, (n, 1)),
        spacing=np.full(n, 0.1),
        senior_orig=landmarks + 1.0,
        junior_orig=landmarks - 1.0,
        official_orig=landmarks.copy(),
    )


@pytest.fixture(scope="module")
def data() -> tuple[PreparedSet, PreparedSet]:
    return _prepared(8, 1), _prepared(4, 2)


def run_stage(raw, stage, data, out_dir: Path, init=None):
    outs = StageOutputs(
        out_dir / f"{stage}.pt", out_dir / "runs" / stage, out_dir / f"{stage}.csv", out_dir / f"{stage}.png"
    )
    return train(parse_params(raw), stage, *data, outs, init), outs


def test_stage1_bypasses_and_stage2_keeps_the_encoder_bit_identical(data, tmp_path):
    raw = tiny_raw()
    result1, out1 = run_stage(raw, "stage1", data, tmp_path)
    assert result1.epochs_run == 2 and out1.checkpoint.is_file()
    s1 = load_checkpoint(out1.checkpoint)
    assert s1["meta"]["bypass_transformer"] is True
    _, out2 = run_stage(raw, "stage2", data, tmp_path, init=out1.checkpoint)
    s2 = load_checkpoint(out2.checkpoint)
    assert s2["meta"]["bypass_transformer"] is False
    encoder = [k for k in s1["model_state"] if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)  # BatchNorm statistics are compared too
    for key in encoder:
        assert torch.equal(s1["model_state"][key], s2["model_state"][key]), key
    blocks = [k for k in s1["model_state"] if k.startswith("bottleneck.blocks.")]
    assert blocks and any(not torch.equal(s1["model_state"][k], s2["model_state"][k]) for k in blocks)
    assert not torch.equal(s1["model_state"]["head.conv.weight"], s2["model_state"]["head.conv.weight"])


def test_stage1_bypass_ignores_the_transformer_blocks():
    params = parse_params(tiny_raw())
    model = build_stage_model(params, "stage1", None)
    configure_stage(model, params.stage1)
    x = torch.randn(1, 1, SIZE, SIZE)
    model.eval()
    before = model(x).heatmaps
    with torch.no_grad():
        for p in model.bottleneck.blocks.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(x).heatmaps, before)
    assert not any(p.requires_grad for p in model.bottleneck.blocks.parameters())


def test_stage3_optimizer_has_the_configured_learning_rate_per_group(data, tmp_path):
    raw = _set(
        tiny_raw(), stage3__epochs=1, stage3__lr=3e-4, stage3__encoder_lr=2e-5, stage3__transformer_lr=7e-4
    )
    _, out1 = run_stage(raw, "stage1", data, tmp_path)
    _, out3 = run_stage(raw, "stage3", data, tmp_path, init=out1.checkpoint)
    groups = load_train_state(out3.state_dir / "last.pt")["optimizer"]["param_groups"]
    lrs = {g["name"]: g["initial_lr"] for g in groups}
    assert lrs == {"encoder": 2e-5, "transformer": 7e-4, "decoder": 3e-4, "head": 3e-4}
    history = pd.read_csv(out3.history)
    assert {"lr_encoder", "lr_transformer", "lr_decoder", "lr_head"} <= set(history.columns)


def test_initial_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    _, out1 = run_stage(tiny_raw(), "stage1", data, tmp_path)
    other = _set(tiny_raw(), model__decoder_channels=16)
    with pytest.raises(CheckpointError, match=r"stage1.pt.*\['decoder_channels'\]"):
        run_stage(other, "stage2", data, tmp_path / "b", init=out1.checkpoint)


SCRIPT = """
import pickle, sys
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from mahtnet.config import parse_params
from mahtnet.training.stages import train
from mahtnet.training.loop import StageOutputs
from pathlib import Path
raw, train_set, val_set, out = pickle.load(open(sys.argv[1], "rb"))
out = Path(out)
outs = StageOutputs(out / "m.pt", out / "state", out / "history.csv", out / "gf.png")
result = train(parse_params(raw), "baseline", train_set, val_set, outs)
print("RESULT", result.best_epoch, result.best_val_mre_mm, result.resumed_at_epoch, flush=True)
"""


def _launch(tmp_path: Path, raw, data, out: Path) -> subprocess.Popen:
    import pickle

    job = tmp_path / f"{out.name}.pkl"
    job.write_bytes(pickle.dumps((raw, *data, str(out))))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(src=str(REPO / "src"))))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "history.csv").drop(columns=list(TIMING))


def test_killed_training_resumes_to_identical_results_and_same_seed_repeats(data, tmp_path):
    raw = _set(tiny_raw(), baseline__epochs=6)
    full = tmp_path / "full"
    first = _finish(_launch(tmp_path, raw, data, full))
    again = tmp_path / "again"
    _finish(_launch(tmp_path, raw, data, again))

    killed = tmp_path / "killed"
    proc = _launch(tmp_path, raw, data, killed)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # SIGKILL once epoch 2's state is saved
        history = killed / "history.csv"  # written just before the state: 3 rows -> state >= 2
        if history.is_file() and len(history.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    state = load_train_state(killed / "state" / "last.pt")
    assert 2 <= state["epoch"] < 6
    resumed = _finish(_launch(tmp_path, raw, data, killed))
    assert f"resuming after epoch {state['epoch']}" in resumed
    assert f" {state['epoch'] + 1}\n" in resumed.split("RESULT")[-1] + "\n"  # resumed_at_epoch

    pd.testing.assert_frame_equal(_history(killed), _history(full))
    pd.testing.assert_frame_equal(_history(again), _history(full))  # same seed twice: identical
    assert first.split("RESULT")[-1].split()[:2] == resumed.split("RESULT")[-1].split()[:2]
    a, b = load_checkpoint(full / "m.pt")["model_state"], load_checkpoint(killed / "m.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_or_truncated_state_is_an_error_not_a_fresh_start(data, tmp_path):
    raw = _set(tiny_raw(), baseline__epochs=1)
    _, outs = run_stage(raw, "baseline", data, tmp_path)
    state = outs.state_dir / "last.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="last.pt"):
        run_stage(raw, "baseline", data, tmp_path)
    state.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated training state .*last.pt"):
        run_stage(raw, "baseline", data, tmp_path)


def test_state_of_other_settings_is_not_resumed(data, tmp_path, capsys):
    raw = _set(tiny_raw(), baseline__epochs=1)
    run_stage(raw, "baseline", data, tmp_path)
    result, _ = run_stage(_set(raw, baseline__lr=1e-3), "baseline", data, tmp_path)
    assert result.resumed_at_epoch == 0 and "starting afresh" in capsys.readouterr().out
    result, _ = run_stage(_set(raw, baseline__lr=1e-3), "baseline", data, tmp_path)
    assert result.epochs_run == 1 and result.resumed_at_epoch == 2  # finished: nothing left to train


def test_monitoring_accumulation_uncertainty_and_averaging(data, tmp_path):
    raw = _set(
        tiny_raw(),
        train__accumulate_steps=2,
        train__batch_size=2,
        stage1__epochs=3,
        stage1__loss_weights__wing=0.1,
        stage1__loss_weights__mse=1.0,
        stage1__uncertainty_weighting=True,
        stage1__average="last",
        stage1__average_k=2,
    )
    result, outs = run_stage(raw, "stage1", data, tmp_path)
    history = pd.read_csv(outs.history)
    expected = {"train_softmax_ce", "train_wing", "train_mse", "train_logvar_wing", "grad_norm_encoder"}
    expected |= {"grad_norm_transformer", "grad_norm_decoder", "grad_norm_head", "act_std_encoder"}
    expected |= {"act_mean_decoder", "lr_loss", "peak_memory_mb", "images_per_s", "epoch_time_s"}
    assert expected <= set(history.columns), expected - set(history.columns)
    assert np.isfinite(history.drop(columns=["epoch"]).to_numpy()).all()
    assert (history["grad_norm_encoder"] > 0).all()
    assert outs.grad_flow.stat().st_size > 1000
    state = load_train_state(outs.state_dir / "last.pt")
    assert state["scheduler"]["last_epoch"] == 3 * 2  # 4 batches per epoch, a step every 2
    assert [k["epoch"] for k in state["kept"]] == [2, 3]
    assert sorted(p.name for p in outs.state_dir.glob("epoch_*.pt")) == ["epoch_0002.pt", "epoch_0003.pt"]
    meta = load_checkpoint(outs.checkpoint)["meta"]
    assert meta["averaged_epochs"] == ([2, 3] if result.averaged else [result.best_epoch])


def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(1)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(7)}
    avg = average_state_dicts([a, b])
    torch.testing.assert_close(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["n"].item() == 7
    with pytest.raises(ValueError):
        average_state_dicts([])


def _stopper(mode="all", mre=0, sdr2=0, loss=0, mre_delta=0.0):
    return EarlyStopping(EarlyStoppingParams(mode, mre, mre_delta, sdr2, 0.0, loss, 0.0))


def test_early_stopping_criteria():
    rows = [
        {"val_mre_mm": 2.0, "val_sdr_2mm": 50.0, "val_loss": 1.0},
        {"val_mre_mm": 1.9, "val_sdr_2mm": 50.0, "val_loss": 1.1},
        {"val_mre_mm": 1.95, "val_sdr_2mm": 50.0, "val_loss": 1.2},
        {"val_mre_mm": 1.91, "val_sdr_2mm": 60.0, "val_loss": 1.3},
    ]

    def stop_epoch(stopper):
        return next((i + 1 for i, r in enumerate(rows) if stopper.update(r)), None)

    assert stop_epoch(_stopper(mre=2)) == 4
    assert stop_epoch(_stopper(mre=2, mre_delta=0.2)) == 3  # 1.9 is not 0.2 better than 2.0
    assert stop_epoch(_stopper(loss=2)) == 3
    assert stop_epoch(_stopper(sdr2=2)) == 3
    assert stop_epoch(_stopper(mode="all", loss=2, sdr2=3)) is None  # SDR2 improves at epoch 4
    assert stop_epoch(_stopper(mode="any", loss=2, sdr2=3)) == 3
    assert stop_epoch(_stopper()) is None  # nothing watched
    s = _stopper(mre=2)
    s.update(rows[0])
    restored = _stopper(mre=2)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert [restored.update(r) for r in rows[1:]] == [s.update(r) for r in rows[1:]]


def test_cpu_bf16_autocast_and_plateau_scheduler(data, tmp_path):
    raw = _set(tiny_raw(), train__cpu_bf16=True, baseline__epochs=2, baseline__scheduler="plateau")
    result, outs = run_stage(raw, "baseline", data, tmp_path)
    assert np.isfinite(result.best_val_mre_mm)
    assert pd.read_csv(outs.history)["lr_decoder"].tolist() == [2e-3, 2e-3]


def test_crossvalidation_trains_and_evaluates_every_fold(data, tmp_path):
    from mahtnet.training.crossval import concat, crossvalidate

    raw = _set(tiny_raw(), baseline__epochs=1, crossval__folds=2, crossval__models=["baseline"])
    result = crossvalidate(parse_params(raw), concat(list(data)), tmp_path)
    folds = result["models"]["baseline"]["per_fold"]
    assert len(folds) == 2 and sum(f["images"] for f in folds) == 12  # every training image held out once
    summary = result["models"]["baseline"]["summary"]["mre_mm"]
    mres = [f["mre_mm"] for f in folds]
    assert summary["mean"] == pytest.approx(np.mean(mres)) and summary["sd"] == pytest.approx(
        np.std(mres, ddof=1)
    )
    assert (tmp_path / "fold1" / "baseline" / "baseline.pt").is_file()
