"""Hyper-parameter and transformer-architecture search with Optuna, on validation images only.

A *study* lives in an Optuna RDB storage (SQLite by default, any SQLAlchemy URL such as
PostgreSQL for many machines); every worker started with the same ``search.study`` and
storage draws trials from it, so N processes on one or many hosts cooperate on one study, and
a killed study continues where it stopped (a dead worker's running trial is failed by the
heartbeat and retried once).

A trial draws a value for each key of ``search.space`` (TPE or random sampler), applies them
and ``search.fixed`` to ``params.yaml``, trains ``search.stage`` for ``search.epochs`` epochs
with the project's own trainer, and returns the best validation MRE (``objective: val``) or
its mean over the cross-validation folds of the training images (``crossval``). The per-epoch
validation MRE feeds the pruner, which stops trials that lag. The test split is never read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mahtnet.config import (
    Params,
    ParamsError,
    SearchDim,
    flatten,
    parse_space,
    to_dict,
    with_settings,
    yaml_value,
)
from mahtnet.data.preprocess import PreparedSet
from mahtnet.paths import repo_root
from mahtnet.training.loop import Callback, StageOutputs

HEARTBEAT_S = 30  # a worker's running trial counts as dead after 4 missed heartbeats
COUNTED = ("COMPLETE", "PRUNED")  # the states that count towards search.trials


def storage_url(params: Params) -> str:
    if params.search.storage:
        return params.search.storage
    folder = repo_root() / "data" / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def redacted(url: str) -> str:
    """A storage URL without its password, and a SQLite file inside the repository relative to
    it (for logs and metrics: no machine's absolute path)."""
    url = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
    return url.replace(f"sqlite:///{repo_root()}/", "sqlite:///", 1)


def dims(params: Params) -> list[SearchDim]:
    return parse_space(params.search.space, list(flatten(to_dict(params))))


def suggest(trial, dim: SearchDim) -> Any:
    """One value of ``dim`` for ``trial`` (named by the params key)."""
    if dim.choices is not None:
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.integer:
        step = int(dim.step or 1)
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), step=step, log=dim.log)
    return trial.suggest_float(dim.key, dim.low, dim.high, step=dim.step, log=dim.log)


def trial_params(raw: dict, params: Params, trial) -> tuple[Params, dict[str, Any]]:
    """The params of ``trial``: ``params.yaml`` (``raw``) with the drawn values, then
    ``search.fixed`` and the trial's epoch budget. Returns them and the drawn values."""
    s = params.search
    drawn = {d.key: suggest(trial, d) for d in dims(params)}
    fixed = [*s.fixed, f"{s.stage}.epochs={s.epochs}"]
    return with_settings(raw, drawn, fixed), drawn


class ReportToOptuna(Callback):
    """Reports each epoch's validation MRE to the trial and stops training when the pruner
    says so (``pruned`` is then set: the objective raises ``TrialPruned`` after the trainer
    has finished cleanly)."""

    def __init__(self, trial, offset: int = 0):
        self.trial, self.offset, self.pruned = trial, offset, False

    def on_epoch_end(self, trainer, epoch: int, row: dict[str, float]) -> str:
        self.trial.report(row["val_mre_mm"], self.offset + epoch)
        if self.trial.should_prune():
            self.pruned = True
            return f"pruned by the Optuna pruner at epoch {epoch}"
        return ""


def folds_of(params: Params, train_set: PreparedSet, val_set: PreparedSet) -> list[tuple]:
    """``[(fit, held-out)]``: the training and validation images as they are (``val``), or
    ``crossval.folds`` folds of both together (``crossval``). Never the test split."""
    if params.search.objective == "val":
        return [(train_set, val_set)]
    from mahtnet.training.crossval import concat, fold_indices

    every = concat([train_set, val_set])
    out = []
    for held in fold_indices(len(every), params.crossval.folds, params.seed):
        rest = np.setdiff1d(np.arange(len(every)), held)
        out.append((every.subset(rest), every.subset(held)))
    return out


def make_objective(
    raw: dict, params: Params, train_set: PreparedSet, val_set: PreparedSet, work: Path, run=None
) -> Callable:
    """The study's objective: ``trial -> validation MRE (mm)``."""
    import optuna

    from mahtnet.training.stages import train

    splits = folds_of(params, train_set, val_set)

    def objective(trial) -> float:
        p, drawn = trial_params(raw, params, trial)
        scores = []
        with nested_run(run, f"trial_{trial.number}", drawn) as trial_run:
            for k, (fit, held) in enumerate(splits):
                report = ReportToOptuna(trial, offset=k * p.search.epochs)
                f = work / f"trial_{trial.number}" / f"fold{k}"
                out = StageOutputs(f / "model.pt", f / "state", f / "history.csv", f / "grad_flow.png")
                result = train(p, p.search.stage, fit, held, out, run=trial_run, callbacks=[report])
                scores.append(result.best_val_mre_mm)
                if report.pruned:
                    raise optuna.TrialPruned(f"after {result.epochs_run} epochs of fold {k}")
            value = float(np.mean(scores))
            if trial_run is not None:
                trial_run.log_metrics({"objective_val_mre_mm": value})
        return value

    return objective


@contextlib.contextmanager
def nested_run(parent, name: str, drawn: dict[str, Any]):
    """An MLflow run nested under the study's run (none without a parent)."""
    if parent is None:
        yield None
        return
    with parent.nested(name, drawn) as child:
        yield child


def create_study(params: Params, url: str | None = None, worker: bool = False):
    """The study of ``params.search`` in its storage (created, or loaded when it exists).

    Its sampler's seed is ``search.seed`` for a fresh study (reproducible); a resumed study or
    a ``worker`` seeds it from ``(search.seed, trials already stored[, process id])`` hashed
    together (not summed: two workers started together, one seeing one trial more and having
    a process id one lower, drew the same values), so it does not draw again what the first
    draws tried."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    s = params.search
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna (since 2.8)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url or storage_url(params),
            heartbeat_interval=HEARTBEAT_S,
            grace_period=4 * HEARTBEAT_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    study = optuna.create_study(
        study_name=s.study,
        storage=storage,
        sampler=make_sampler(params),
        pruner=make_pruner(params),
        direction="minimize",
        load_if_exists=True,
    )
    stored = len(study.get_trials(deepcopy=False))
    if stored or worker:
        study.sampler = make_sampler(params, sampler_seed(s.seed, stored, os.getpid() if worker else None))
    return study


def sampler_seed(seed: int, stored: int, pid: int | None = None) -> int:
    """The sampler seed of a study with ``stored`` trials (``seed`` itself for a fresh one
    outside a worker), hashed with the worker's process id ``pid`` when given."""
    if not stored and pid is None:
        return seed
    entropy = [seed & 0xFFFFFFFF, stored] + ([] if pid is None else [pid])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def make_sampler(params: Params, seed: int | None = None):
    """TPE (Bayesian), random, or a grid over the ``choices`` of every dimension."""
    import optuna

    s = params.search
    seed = s.seed if seed is None else seed
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    ranges = [d.key for d in dims(params) if d.choices is None]
    if ranges:
        raise ParamsError(
            f"params key 'search.sampler' grid needs choices for every key, not ranges: {ranges}"
        )
    return optuna.samplers.GridSampler({d.key: list(d.choices) for d in dims(params)}, seed=seed)


def make_pruner(params: Params):
    import optuna

    s = params.search
    pruners = {
        # reports are numbered by epoch from 1: epochs 1..warmup_epochs are never pruned
        "median": lambda: optuna.pruners.MedianPruner(s.startup_trials, n_warmup_steps=s.warmup_epochs + 1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=s.warmup_epochs + 1),
        "none": optuna.pruners.NopPruner,
    }
    return pruners[s.pruner]()


def counted_states() -> tuple:
    """The Optuna trial states of :data:`COUNTED`."""
    import optuna

    return tuple(getattr(optuna.trial.TrialState, name) for name in COUNTED)


def counted(study) -> int:
    return len(study.get_trials(deepcopy=False, states=counted_states()))


def run_worker(study, objective: Callable, trials: int) -> int:
    """Run trials of ``study`` until it holds ``trials`` complete + pruned ones (all workers
    together; each running worker may finish one more). Returns the trials this worker ran.
    On a terminal, a progress bar on stderr: the study's complete + pruned trials (every
    worker's), updated as each of this worker's trials ends (Optuna's own bar shows even
    when stderr is not a terminal)."""
    from optuna.study import MaxTrialsCallback

    from mahtnet.training.crossval import lines_above

    states = counted_states()
    ran = []

    def run(trial):
        ran.append(trial.number)
        return objective(trial)

    done = counted(study)
    if done < trials:
        bar = tqdm(total=trials, initial=done, desc=f"search {study.study_name}", unit="trial", disable=None)

        def progress(study, trial) -> None:
            if bar.disable:
                return
            value = "" if trial.value is None else f" {trial.value:.3f} mm"
            bar.set_postfix_str(f"trial {trial.number} {trial.state.name.lower()}{value}", refresh=False)
            bar.n = min(counted(study), trials)
            bar.refresh()

        # Optuna's log lines (stderr) and the trainer's (stdout) above the bar, not through it
        logs = (
            contextlib.nullcontext() if bar.disable else logging_redirect_tqdm([logging.getLogger("optuna")])
        )
        with bar, lines_above(bar), logs:
            study.optimize(
                run,
                n_trials=trials,
                callbacks=[MaxTrialsCallback(trials, states=states), progress],
                catch=(ParamsError, ValueError),  # an impossible combination fails; the study goes on
                gc_after_trial=True,
            )
    return len(ran)


def study_span_s(trials) -> float:
    """Wall time of the study, all workers and resumed sessions: first trial start to last
    trial end (resumed sessions include the pause between them)."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def summary(study, params: Params, url: str, wall_time_s: float) -> dict[str, Any]:
    """``metrics/search.json``: the study's counts, best trial and the command that retrains it
    (``wall_time_s``: the study's span; ``worker_wall_time_s``: this process's own time)."""
    import optuna

    s, trials = params.search, study.get_trials(deepcopy=False)
    by_state = {
        name.lower(): sum(t.state == getattr(optuna.trial.TrialState, name) for t in trials)
        for name in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
    }
    out: dict[str, Any] = {
        "study": study.study_name,
        "storage": redacted(url),
        "objective": f"{s.objective} MRE (mm), {s.stage}, {s.epochs} epochs",
        "trials": by_state,
        "wall_time_s": study_span_s(trials),
        "worker_wall_time_s": wall_time_s,
    }
    if by_state["complete"]:
        best = study.best_trial
        out |= {
            "best_trial": best.number,
            "best_value_mm": best.value,
            "best_params": best.params,
            "dvc_exp_run": exp_run_command(best.params),
        }
    return out


def exp_run_command(best: dict[str, Any]) -> str:
    """The ``dvc exp run`` line that retrains the best trial's settings with the full pipeline
    (its test result is read once, by the normal evaluate stage)."""
    return "dvc exp run -n search-best " + " ".join(f"-S '{k}={yaml_value(v)}'" for k, v in best.items())


def plot_study(study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates (Optuna's
    matplotlib plots) as PNGs in ``folder``; a plot the study cannot give yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {
        "history": vis.plot_optimization_history,
        "importances": vis.plot_param_importances,
        "parallel_coordinates": vis.plot_parallel_coordinate,
        "intermediate_values": vis.plot_intermediate_values,
    }
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name, plot in plots.items():
        try:
            ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials for it
            print(f"search plot {name} skipped: {err}")
            continue
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


STUDY_RUN = "mlflow_run_id"  # the study's user attribute naming its MLflow run


def search(
    raw: dict,
    params: Params,
    train_set: PreparedSet,
    val_set: PreparedSet,
    work: Path,
    run=None,
    worker: bool = False,
    study=None,
) -> tuple[Any, dict[str, Any]]:
    """One worker's part of the study; returns the study and its summary."""
    t0 = time.perf_counter()
    url = storage_url(params)
    study = study or create_study(params, url, worker)
    objective = make_objective(raw, params, train_set, val_set, work, run)
    ran = run_worker(study, objective, params.search.trials)
    print(f"this worker ran {ran} trials of study '{study.study_name}' ({redacted(url)})")
    return study, summary(study, params, url, time.perf_counter() - t0)


@contextlib.contextmanager
def study_run(params: Params, study):
    """The study's one MLflow run, under which every worker nests its trials: the first process
    of the study starts it and stores its id in the study (``STUDY_RUN``); later ones (other
    workers, a resumed study) join it. Its status is that of the last process to end."""
    from mahtnet.tracking import start_run

    name, known = f"search_{params.search.study}", study.user_attrs.get(STUDY_RUN)
    with start_run(params.tracking, name, to_dict(params.search), resume=known) as run:
        if known != run.id:
            study.set_user_attr(STUDY_RUN, run.id)
        yield run
