"""The Trainer's extension points: per-epoch callbacks (a stop reason, the sigma curriculum)
and the refinement task trained and used end to end on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import _prepared, _set, run_stage, tiny_raw

from mahtnet.analysis.evaluation import evaluate_variants
from mahtnet.codec import HeatmapCodec
from mahtnet.config import parse_params
from mahtnet.data.fine import FineSet
from mahtnet.decoding import load_refiner
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.decoding.shape import fit_prior_from_prepared
from mahtnet.models.card import CheckpointCard
from mahtnet.models.checkpoint import load_checkpoint, read_card
from mahtnet.training.loop import Callback, StageOutputs, Trainer, TrainerSettings
from mahtnet.training.refiner_task import train_refiner
from mahtnet.training.stages import SigmaCurriculum, stage_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data():
    return _prepared(8, 1), _prepared(4, 2)


def test_sigma_curriculum_anneals_from_start_to_the_codec_sigma():
    codec = HeatmapCodec((64, 64), sigma=2.0)
    c = SigmaCurriculum(codec, start=6.0, fraction=0.5, epochs=10)  # 5 epochs of annealing
    sigmas = [c.sigma(e) for e in range(1, 11)]
    assert sigmas[0] == 6.0 and sigmas[4] == pytest.approx(2.0) and sigmas[-1] == pytest.approx(2.0)
    assert all(a > b for a, b in zip(sigmas[:5], sigmas[1:5], strict=False))


class StopAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch, self.seen = epoch, []

    def on_epoch_start(self, trainer, epoch):
        self.seen.append(trainer.task.train_ds.codec.sigma)

    def on_epoch_end(self, trainer, epoch, row):
        return "told to stop" if epoch >= self.epoch else ""


def test_callbacks_see_each_epoch_and_may_stop_training(data, tmp_path):
    params = parse_params(_set(tiny_raw(), baseline__epochs=4, heatmap__sigma_start=4.0))
    task = stage_task(params, "baseline", *data, None, None, torch.device("cpu"), 1)
    out = StageOutputs(tmp_path / "b.pt", tmp_path / "runs", tmp_path / "h.csv", tmp_path / "g.png")
    curriculum = SigmaCurriculum(task.train_ds.codec, 4.0, 1.0, 4)
    spy = StopAfter(2)
    trainer = Trainer(
        task,
        params.baseline,
        params.train,
        TrainerSettings(4, 4, params.seed),
        out,
        _info(),
        torch.device("cpu"),
        callbacks=[curriculum, spy],
    )
    result = trainer.fit()
    assert result.epochs_run == 2 and result.stopped_early and result.stop_reason == "told to stop"
    assert spy.seen == [4.0, pytest.approx(4.0 - 2.0 / 3)]  # the curriculum ran before the spy
    assert load_checkpoint(out.checkpoint)["meta"]["heatmap"]["sigma"] == 2.0


def _info():
    from mahtnet.training.distributed import DistInfo

    return DistInfo()


def _fine(prepared) -> FineSet:
    n, size = len(prepared), prepared.images.shape[1]
    return FineSet(
        ids=prepared.ids,
        images=prepared.images,
        sizes=np.tile([size, size], (n, 1)),
        scales=np.ones(n),
        landmarks_orig=prepared.landmarks_orig,
        spacing=prepared.spacing,
        senior_orig=prepared.senior_orig,
        junior_orig=prepared.junior_orig,
    )


def test_refiner_trains_and_evaluation_reports_every_variant(data, tmp_path):
    raw = _set(tiny_raw(), baseline__epochs=1)
    raw["refine"].update(patch_size=16, channels=4, depth=2, batch_size=32)
    raw["refine"]["train"].update(epochs=2, warmup_epochs=1)
    params = parse_params(raw)
    coarse, _ = run_stage(raw, "baseline", data, tmp_path)
    out = StageOutputs(tmp_path / "r.pt", tmp_path / "rruns", tmp_path / "rh.csv", tmp_path / "rg.png")
    train_set, val_set = data
    result = train_refiner(params, tmp_path / "baseline.pt", _fine(train_set), _fine(val_set), val_set, out)
    assert result.epochs_run == 2 and np.isfinite(result.best_val_mre_mm)
    meta = load_checkpoint(out.checkpoint)["meta"]
    assert meta["patch_size"] == 16 and len(meta["jitter"]["sd_mm"]) == 19
    for path in (out.checkpoint, tmp_path / "baseline.pt"):  # written through the card, read as written
        card = read_card(path)
        assert load_checkpoint(path)["meta"] == card.to_meta() and CheckpointCard.of(card.to_meta()) == card
        assert card.epoch >= 1 and card.averaged_epochs and "val_mre_mm" in card.val
    refiner = load_refiner(out.checkpoint, "cpu")
    assert refiner.card.kind == "refiner" and refiner.card.input_size == (16, 16)
    prior = fit_prior_from_prepared(train_set).save(tmp_path / "prior.npz")
    spec = ReaderSpec(tmp_path / "baseline.pt", prior, out.checkpoint, device="cpu")
    results = evaluate_variants(load_reader(spec, batch_size=4), val_set, [2.0], _fine(val_set))
    assert list(results) == ["coarse", "shape", "refined"]
    assert np.all(np.isfinite(results["refined"].pred))
    with pytest.raises(Exception, match="not a refiner"):
        load_refiner(tmp_path / "baseline.pt")
