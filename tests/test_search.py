"""Optuna search: the search space, trial params, pruning, concurrent workers on one storage,
and a real (tiny) study that never reads the test split."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import optuna
import pytest
from test_training import _prepared, tiny_raw

from mahtnet.config import ParamsError, parse_params
from mahtnet.training.search import ReportToOptuna, create_study, plot_study, search, summary, trial_params

optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_raw(tmp_path, **search) -> dict:
    raw = tiny_raw()
    raw["search"].update(storage=f"sqlite:///{tmp_path / 'study.db'}", **search)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return raw


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"stage1.nope": {"low": 0.1, "high": 1.0}}, "search.space.stage1.nope"),
        ({"stage1.lr": {"low": 0.01, "high": 0.001}}, "search.space.stage1.lr"),
        ({"stage1.lr": {"low": 0.0, "high": 0.1, "log": True}}, "search.space.stage1.lr"),
        ({"model.transformer_layers": {"choices": []}}, r"search.space.model.transformer_layers.choices"),
        ({"heatmap.sigma": {"low": 1.0, "high": 2.0, "width": 3}}, "search.space.heatmap.sigma"),
    ],
)
def test_bad_search_space_names_the_key(tmp_path, space, message):
    raw = search_raw(tmp_path)
    raw["search"]["space"] = space
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_trial_params_apply_the_drawn_values_and_the_fixed_settings(tmp_path):
    raw = search_raw(tmp_path, epochs=3)
    params = parse_params(raw)
    drawn = {
        "stage1.lr": 0.004,
        "heatmap.sigma": 2.5,
        "train.augment.rotate_deg": 5.0,
        "model.transformer_layers": 2,
        "model.transformer_dim": 64,
        "model.transformer_heads": 4,
        "model.transformer_mlp_ratio": 4.0,
        "model.attention_window": 2,
        "model.transformer_pos_size": 8,
        "model.decoder_channels": 32,
    }
    p, got = trial_params(raw, params, optuna.trial.FixedTrial(drawn))
    assert got == drawn
    assert (p.stage1.lr, p.heatmap.sigma, p.model.transformer_layers, p.model.attention_window) == (
        0.004,
        2.5,
        2,
        2,
    )
    assert p.stage1.epochs == 3 and p.stage1.bypass_transformer is False  # search.epochs, search.fixed
    assert raw["stage1"]["lr"] != 0.004  # the parsed params.yaml mapping is left as it was


def test_the_pruner_stops_a_lagging_trial(tmp_path):
    params = parse_params(search_raw(tmp_path, startup_trials=1, warmup_epochs=1, pruner="median"))
    study = create_study(params)
    good = study.ask()
    for epoch in (1, 2, 3):
        good.report(1.0, epoch)
    study.tell(good, 1.0)
    bad = ReportToOptuna(study.ask())
    assert bad.on_epoch_end(None, 1, {"val_mre_mm": 9.0}) == ""  # warm-up: not yet
    assert "pruned" in bad.on_epoch_end(None, 2, {"val_mre_mm": 9.0}) and bad.pruned
    fine = ReportToOptuna(study.ask())
    assert fine.on_epoch_end(None, 2, {"val_mre_mm": 0.5}) == "" and not fine.pruned


WORKER = textwrap.dedent(
    """
    import os, sys, time, yaml
    import optuna
    from mahtnet.config import parse_params
    from mahtnet.training.search import create_study, run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = parse_params(yaml.safe_load(open(sys.argv[1])))

    def objective(trial):
        trial.set_user_attr("worker", os.getpid())
        x = trial.suggest_float("stage1.lr", 0.0003, 0.01, log=True)
        time.sleep(0.3)
        return (x - 0.002) ** 2

    print(run_worker(create_study(params, worker=True), objective, params.search.trials))
    """
)


def test_sampler_seeds_of_resumed_studies_and_workers_do_not_collide():
    from mahtnet.training.search import sampler_seed

    assert sampler_seed(7, 0) == 7  # a fresh study is reproducible
    assert sampler_seed(7, 3) == sampler_seed(7, 3) != sampler_seed(7, 4)
    # two workers started together: one sees a trial more and has a process id one lower
    # (a summed seed, 7 + 1 + 1000 == 7 + 0 + 1001, drew the same values in both)
    assert sampler_seed(7, 1, 1000) != sampler_seed(7, 0, 1001)
    seeds = {sampler_seed(0, n, pid) for n in range(5) for pid in range(1000, 1010)}
    assert len(seeds) == 50
    assert sampler_seed(-1, 2) >= 0


def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path):
    import yaml

    raw = search_raw(tmp_path, trials=10)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "worker.py").write_text(WORKER)
    create_study(parse_params(raw))  # created once, so both workers load it (no creation race)
    cmd = [sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "params.yaml")]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    ran = [int(w.communicate(timeout=300)[0].split()[-1]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    trials = create_study(parse_params(raw)).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # none lost, none repeated
    assert sum(ran) == len(trials) and min(ran) >= 1  # both took part, every trial counted once
    assert 10 <= len(trials) <= 11  # the target, plus at most one trial the other worker had running
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    values = [t.params["stage1.lr"] for t in trials]
    assert len(set(values)) == len(values)  # the workers' samplers differ: no setting drawn twice


def test_a_tiny_study_trains_reads_no_test_image_and_reports(tmp_path, monkeypatch):
    from mahtnet.data import preprocess

    def no_test(path, *args, **kwargs):  # the search is given train and val; make sure of it
        raise AssertionError(f"the search read {path}")

    monkeypatch.setattr(preprocess.PreparedSet, "load", staticmethod(no_test))
    raw = search_raw(tmp_path, trials=3, epochs=2, startup_trials=1)
    raw["search"]["space"] = {
        "stage1.lr": {"low": 0.001, "high": 0.01, "log": True},
        "model.transformer_layers": {"choices": [0, 1]},
    }
    params = parse_params(raw)
    study, out = search(raw, params, _prepared(8, 0), _prepared(4, 1), tmp_path / "work")
    assert out["trials"]["complete"] + out["trials"]["pruned"] == 3
    assert out["best_value_mm"] == min(t.value for t in study.trials if t.value is not None)
    assert set(out["best_params"]) == {"stage1.lr", "model.transformer_layers"}
    assert out["dvc_exp_run"].startswith("dvc exp run") and "-S 'stage1.lr=" in out["dvc_exp_run"]
    assert "password" not in json.dumps(out)
    assert (tmp_path / "work" / "trial_0" / "fold0" / "model.pt").is_file()
    plots = plot_study(study, tmp_path / "plots")
    assert {p.name for p in plots} >= {"history.png", "parallel_coordinates.png"}
    again = summary(create_study(params), params, "sqlite:///x", 0.0)  # resumable: the storage keeps it
    assert again["trials"] == out["trials"]
    assert again["wall_time_s"] == out["wall_time_s"] > 0  # the study's span, not this process's
    assert again["worker_wall_time_s"] == 0.0 < out["worker_wall_time_s"]


def test_grid_sampler_needs_choices_and_covers_the_grid(tmp_path):
    from mahtnet.training.search import dims as search_dims
    from mahtnet.training.search import make_sampler, run_worker, suggest

    raw = search_raw(tmp_path, sampler="grid", trials=10)
    with pytest.raises(ParamsError, match="search.sampler"):
        make_sampler(parse_params(raw))  # the default space has ranges
    raw["search"]["space"] = {
        "heatmap.sigma": {"choices": [1.5, 2.0]},
        "model.decoder_channels": {"choices": [8, 16]},
    }
    study = create_study(parse_params(raw))
    dims = search_dims(parse_params(raw))
    run_worker(study, lambda t: suggest(t, dims[0]) * suggest(t, dims[1]), 10)
    seen = sorted((t.params["heatmap.sigma"], t.params["model.decoder_channels"]) for t in study.trials)
    assert seen == [(1.5, 8), (1.5, 16), (2.0, 8), (2.0, 16)]  # every point once, then the study stops


def test_workers_and_resumed_sessions_nest_their_trials_under_one_study_run(tmp_path):
    import mlflow

    from mahtnet.training.search import STUDY_RUN, study_run

    sets = (_prepared(8, 0), _prepared(4, 1))
    for trials, worker in ((1, False), (2, True), (3, False)):  # first process, a worker, a resume
        raw = search_raw(tmp_path, trials=trials, epochs=1, startup_trials=1)
        raw["search"]["space"] = {"stage1.lr": {"low": 0.001, "high": 0.01, "log": True}}
        params = parse_params(raw)
        study = create_study(params, worker=worker)
        with study_run(params, study) as run:
            search(raw, params, *sets, tmp_path / "work", run, worker, study)
    mlflow.set_tracking_uri(raw["tracking"]["uri"])
    runs = mlflow.search_runs(experiment_names=[raw["tracking"]["experiment"]])
    parents = runs[runs["tags.mlflow.runName"] == f"search_{raw['search']['study']}"]
    assert len(parents) == 1 and parents["run_id"].iloc[0] == study.user_attrs[STUDY_RUN]
    children = runs[runs["tags.mlflow.runName"].str.startswith("trial_")]
    assert sorted(children["tags.mlflow.runName"]) == ["trial_0", "trial_1", "trial_2"]
    assert set(children["tags.mlflow.parentRunId"]) == {study.user_attrs[STUDY_RUN]}
