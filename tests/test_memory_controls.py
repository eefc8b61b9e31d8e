"""Memory controls: ``train.batch_size: auto`` (params, the fit, the probe), the fallback after
an out-of-memory error, and ``scripts/profile_memory.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from conftest import DELETE, REPO, edited, load_script
from test_training import _prepared, _set, tiny_raw

from mahtnet.config import ParamsError, parse_params, train_fingerprint
from mahtnet.models.checkpoint import load_train_state
from mahtnet.training import autobatch
from mahtnet.training.distributed import DistInfo
from mahtnet.training.loop import StageOutputs, Trainer, TrainerSettings
from mahtnet.training.stages import loaded_batch, stage_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_size_auto_is_parsed_and_bad_values_name_the_key(params_raw):
    p = parse_params(edited(params_raw, "train.batch_size", "auto"))
    assert p.train.batch_size == "auto" and loaded_batch(p.train) == p.train.auto_batch.target
    fixed = parse_params(params_raw).train
    assert loaded_batch(fixed) == fixed.batch_size == 4
    assert "auto_batch" not in train_fingerprint(fixed)  # older resume states still match
    assert "auto_batch" in train_fingerprint(p.train)
    bad = [
        ("train.batch_size", "big", "'train.batch_size' must be an integer >= 1 or 'auto'"),
        ("train.batch_size", 0, "'train.batch_size' must be an integer >= 1 or 'auto'"),
        ("train.batch_size", 2.5, "'train.batch_size' must be int or str"),
        ("train.batch_size", True, "'train.batch_size' must be int or str"),
        ("train.auto_batch.margin", 1.0, r"'train.auto_batch.margin' must be in \[0, 1\)"),
        ("train.auto_batch.margin", -0.1, r"'train.auto_batch.margin' must be in \[0, 1\)"),
        ("train.auto_batch.target", 0, "'train.auto_batch.target' must be >= 1"),
        ("train.auto_batch.target", "4", "'train.auto_batch.target' must be an integer"),
        ("train.auto_batch", DELETE, "missing params key 'train.auto_batch'"),
        ("train.auto_batch.max", 4, "unknown params key 'train.auto_batch.max'"),
    ]
    for key, value, message in bad:
        with pytest.raises(ParamsError, match=message):
            parse_params(edited(params_raw, key, value))


def test_fit_batch_under_a_small_budget_keeps_the_batch_in_micro_batches():
    calls = []

    def linear(b):  # 100 MiB + 50 MiB per image
        calls.append(b)
        return 100.0 + 50.0 * b

    roomy = autobatch.fit_batch(linear, free=1e6, target=8, margin=0.2)
    assert (roomy.fitted, roomy.pieces, roomy.micro_batch) == (8, 1, 8) and calls == [1, 2, 8]
    calls.clear()
    small = autobatch.fit_batch(linear, free=400.0, target=8, margin=0.25)  # budget 300 MiB: 4 images
    assert (small.fitted, small.pieces, small.micro_batch) == (4, 2, 4) and calls == [1, 2, 4]
    assert small.budget_mb == 300.0 and small.per_sample_mb == 50.0 and small.fixed_mb == 100.0
    odd = autobatch.fit_batch(linear, free=400.0, target=6, margin=0.25)
    assert (odd.fitted, odd.pieces, odd.micro_batch) == (4, 2, 3)  # 6 = 3 + 3, not 4 + 2
    state = autobatch.fit_batch(linear, free=400.0, target=8, margin=0.25, state_mb=100.0)
    assert state.fitted == 2 and state.pieces == 4  # the optimizer state takes two images' room
    assert autobatch.fit_batch(lambda b: math.inf if b > 1 else 10.0, 1e6, 4, 0.2).pieces == 4
    superlinear = autobatch.fit_batch(lambda b: 100.0 + 50.0 * b**2, 1e4, 16, 0.0)  # 1 and 2: linear
    assert superlinear.fitted == 8 and superlinear.pieces == 2  # measured at 16: halved
    assert autobatch.fit_batch(lambda b: math.nan, 10.0, 4, 0.2).pieces == 1  # not measurable
    assert autobatch.fit_batch(linear, 10.0, 1, 0.2).pieces == 1


def test_split_batch_sizes_and_the_whole_batch_unsplit():
    batch = {"image": torch.arange(5), "landmarks": torch.arange(10).reshape(5, 2), "ids": list("abcde")}
    assert autobatch.split_batch(batch, 1)[0] is batch
    pieces = autobatch.split_batch(batch, 2)
    assert [len(p["image"]) for p in pieces] == [3, 2] and pieces[1]["ids"] == ["d", "e"]
    assert torch.equal(torch.cat([p["landmarks"] for p in pieces]), batch["landmarks"])
    assert len(autobatch.split_batch(batch, 8)) == 5


class FakeRun:
    def __init__(self):
        self.metrics, self.params, self.tags = [], {}, {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_params(self, params):
        assert not set(params) & set(self.params), "MLflow params are logged once"
        self.params.update(params)

    def set_tags(self, tags):
        self.tags.update(tags)


@pytest.fixture(scope="module")
def data():
    return _prepared(8, 1), _prepared(4, 2)


def _raw(**dotted):
    """The tiny U-Net, one epoch of 8 images, no augmentation (every landmark visible)."""
    raw = _set(tiny_raw(), baseline__epochs=1, **dotted)
    raw["train"]["augment"].update(p_affine=0.0, p_brightness_contrast=0.0)
    return raw


def _trainer(raw, data, out_dir, run=None, frozen_bn=True):
    params = parse_params(raw)
    task = stage_task(params, "baseline", *data, None, None, torch.device("cpu"), 1)
    if frozen_bn:  # BatchNorm in eval mode: a split batch has the whole batch's gradient
        bn = [m for m in task.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        task = dataclasses.replace(task, frozen_bn=bn)
    out = StageOutputs(out_dir / "b.pt", out_dir / "runs", out_dir / "h.csv", out_dir / "g.png")
    settings = TrainerSettings(1, loaded_batch(params.train), params.seed)
    return Trainer(task, params.baseline, params.train, settings, out, DistInfo(), torch.device("cpu"), run)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_same_training(a: Trainer, b: Trainer) -> None:
    """Same weights and gradient norms (AdamW alone would hide a gradient's scale)."""
    wa, wb = _weights(a), _weights(b)
    for k in wa:  # AdamW divides by sqrt(v): where a gradient is ~0 (the head's bias, a sum of residuals
        # that cancel) rounding alone moves the weight by a fraction of a step (3e-4 on a Zen 1 CPU,
        # the rest within 1e-8); the gradients themselves, not amplified, are compared at 1e-4 below
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-3, msg=k)
    norms = [k for k in a.history[0] if k.startswith("grad_norm_")]
    assert norms and all(a.history[0][k] == pytest.approx(b.history[0][k], rel=1e-4) for k in norms)


def test_auto_batch_splits_to_fit_and_trains_like_the_whole_batch(data, tmp_path, monkeypatch, capsys):
    whole = _trainer(_raw(), data, tmp_path / "whole")
    whole.fit()
    sizes = []
    original = autobatch.sample_batch
    monkeypatch.setattr(autobatch, "sample_batch", lambda ds, b: sizes.append(b) or original(ds, b))
    monkeypatch.setattr(autobatch, "step_peak_mb", lambda step, device: step() or 10.0 + 10.0 * sizes[-1])
    monkeypatch.setattr(autobatch, "free_mb", lambda device: 55.0)  # margin 0.2: 44 MiB, 3 images
    run = FakeRun()
    auto = _trainer(_raw(train__batch_size="auto"), data, tmp_path / "auto", run)
    assert sizes == [1, 1, 2, 3] and auto.pieces == 2  # warm-up, 1, 2, 3 fit: 2 micro-batches of 2
    assert run.params == {
        "train.auto_batch.micro_batch": 2,
        "train.auto_batch.pieces": 2,
        "train.auto_batch.accumulation": 2,
    }
    assert "batch_size auto: 2 micro-batch(es) of 2 per batch of 4" in capsys.readouterr().out
    auto.fit()
    assert auto.scheduler.last_epoch == whole.scheduler.last_epoch == 2  # the same optimizer steps
    _assert_same_training(auto, whole)
    assert auto.history[0]["train_loss"] == pytest.approx(whole.history[0]["train_loss"], rel=1e-5)


def test_probe_leaves_weights_buffers_modes_and_random_state_unchanged(data, tmp_path):
    trainer = _trainer(_raw(), data, tmp_path, frozen_bn=False)
    model = trainer.model.eval()
    before, torch_rng, np_rng = _weights(trainer), torch.get_rng_state(), np.random.get_state()[1].copy()
    trainable = [p for g in trainer.groups for p in g["params"]]
    fit = autobatch.fit_to_device(
        trainer.task, torch.device("cpu"), 4, 0.2, contextlib.nullcontext, trainable
    )
    assert 1 <= fit.pieces <= 4 and fit.budget_mb > 0
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), torch_rng) and np.array_equal(np.random.get_state()[1], np_rng)


def _fail_once(model, at_call: int):
    """Make ``model``'s training forward of more than one image raise out-of-memory once, at
    its ``at_call``-th training call."""
    forward, calls = model.forward, []

    def failing(x):
        if model.training:
            calls.append(len(x))
            if len(calls) == at_call and len(x) > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    model.forward = failing
    return calls


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_step(data, tmp_path, capsys):
    raw = _raw(train__accumulate_steps=2)  # 2 batches of 4 per optimizer step
    whole = _trainer(raw, data, tmp_path / "whole")
    whole.fit()
    run = FakeRun()
    trainer = _trainer(raw, data, tmp_path / "oom", run)
    calls = _fail_once(trainer.model, at_call=2)  # the step's second batch
    trainer.fit()
    assert calls == [4, 4, 2, 2, 2, 2]  # the step redone from its first batch, in halves
    assert trainer.pieces == 2 and "micro-batch 4 -> 2" in capsys.readouterr().out
    assert trainer.scheduler.last_epoch == whole.scheduler.last_epoch == 1  # one step, as without
    _assert_same_training(trainer, whole)  # the discarded gradient is not counted twice
    assert (1, {"monitor/micro_batch": 2}) in run.metrics and run.tags["micro_batch"] == 2
    assert load_train_state(trainer.state_path)["pieces"] == 2  # a resumed run keeps it


def test_out_of_memory_at_one_image_is_a_clear_error(data, tmp_path):
    trainer = _trainer(_raw(train__batch_size=1), data, tmp_path)
    forward = trainer.model.forward

    def failing(x):
        if trainer.model.training:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    trainer.model.forward = failing
    with pytest.raises(RuntimeError, match="out of memory with a micro-batch of 1 image"):
        trainer.fit()


def _profile_script():
    return load_script("profile_memory")


def test_profile_memory_writes_a_table_and_json(tmp_path, monkeypatch, capsys):
    script = _profile_script()
    monkeypatch.setattr(script, "run_case", script.measure_case)  # in this process: no second start-up
    out = tmp_path / "memory.json"
    args = ["--model", "baseline", "--batch_size", "2", "--sizes", "32x32", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["profile_memory.py", *args, "--out", str(out)])
    script.main()
    report = json.loads(out.read_text())
    assert report["model"] == "baseline" and report["parameters"] > 0 and list(report["devices"]) == ["cpu"]
    assert report["devices"]["cpu"].endswith(f", {os.cpu_count()} CPUs")  # the CPU, named with its count
    assert [(c["device"], c["input"], c["batch"]) for c in report["cases"]] == [
        ("cpu", [32, 32], 1),
        ("cpu", [32, 32], 2),
    ]
    keys = {"device", "input", "batch"} | {
        f"{m}_{k}" for m in ("train", "infer") for k in ("peak_mb", "step_mb")
    }
    for case in report["cases"]:
        assert set(case) == keys
        assert case["train_peak_mb"] >= case["train_step_mb"] > 0 and case["infer_peak_mb"] > 0
    table = capsys.readouterr().out
    assert "train peak" in table and "cpu        32x32     2" in table


def test_profile_memory_applies_a_profile_and_names_an_unknown_one():
    script = _profile_script()
    params = script.load_case_params(REPO / "params.yaml", "isbi-mean")
    assert params.model.encoder == "tf_efficientnet_lite0" and params.data.gt == "mean"
    assert script.load_case_params(REPO / "params.yaml", None).model.encoder != "tf_efficientnet_lite0"
    case = {"size": [64, 48], "params": str(REPO / "params.yaml"), "profile": "isbi-mean"}
    p = script.case_params(case)
    assert (p.preprocess.height, p.preprocess.width) == (64, 48) and p.model.encoder_weights is None
    with pytest.raises(SystemExit, match="unknown profile 'nope'; valid: isbi-senior"):
        script.load_case_params(REPO / "params.yaml", "nope")
