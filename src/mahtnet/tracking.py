"""MLflow tracking: one run per pipeline stage.

Runs of one pipeline execution share the tag ``pipeline`` (``<DVC experiment or workspace>@<git
commit>``) and, inside a DVC experiment, a run name prefixed with the experiment's; the tags
``dvc.exp_name`` and ``git.commit`` (the experiment's baseline revision) hold each; per-epoch
metrics are grouped as ``train/``, ``val/`` and ``monitor/`` (:func:`metric_group`) and the
evaluation's as ``test/``; the experiment is tagged for the model-training view of the UI.

The store defaults to ``sqlite:///<repo root>/mlflow.db`` with artifacts in
``<repo root>/mlartifacts``; the root is found even from a DVC experiment workspace, so
queued ``dvc exp run`` experiments log to the same store. ``MLFLOW_TRACKING_URI`` or
``tracking.uri`` in ``params.yaml`` point it elsewhere (e.g. a team server,
``scripts/tracking_server.sh``). Processes that find no SQLite store create it one at a time
(a lock file ``<store>.lock``): MLflow's table creation breaks when two run it at once, as in
``dvc queue start -j 2`` on a new clone (``scripts/sqlite_concurrency.py``, docs/team.md).

Models (:func:`log_torch_model`, :func:`log_onnx_model`) are logged into the run and
registered as a new version of a registered model in the same store; a failed registration
raises. What is logged under which name: :mod:`mahtnet.deploy.mlflow_models`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mahtnet.config import TrackingParams, flatten
from mahtnet.paths import repo_root

log = logging.getLogger(__name__)
EXPERIMENT_KIND = "mlflow.experimentKind"  # the MLflow UI opens an experiment in this kind's view


def tracking_uri(p: TrackingParams) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if p.uri:
        return p.uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def _git_commit() -> str | None:
    """The git revision the code runs at: a DVC experiment's baseline revision, else ``HEAD``."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


MONITOR = ("grad_norm_", "act_", "epoch_time_s", "images_per_s", "peak_memory_mb")


def metric_group(key: str) -> str:
    """A per-epoch metric's name in MLflow, prefixed so the UI groups the charts: ``train/``
    (losses, learning rates), ``val/`` and ``monitor/`` (gradients, activations, speed)."""
    if key.startswith(MONITOR):
        return f"monitor/{key}"
    if key.startswith("val_"):
        return f"val/{key.removeprefix('val_')}"
    if key.startswith("train_"):
        return f"train/{key.removeprefix('train_')}"
    return f"train/{key}"  # lr_<group>, the learned loss weights


CONFLICTS = ("database is locked", "UNIQUE constraint failed", "UniqueViolation", "duplicate key")


def _retried(call: Any, *args: Any, attempts: int = 5, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, retried with back-off (0.25 s doubling) when the store reports a
    conflict with another process: SQLite's "database is locked", or a row that two processes
    insert at once (MLflow checks, then inserts, a run's dataset of the experiment: two
    experiments logging the same images at the same moment)."""
    import random
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as e:
            if attempt == attempts - 1 or not any(c in str(e) for c in CONFLICTS):
                raise
            log.warning("MLflow store conflict, retrying: %s", str(e).splitlines()[0][:200])
            time.sleep(0.25 * 2**attempt * (1 + random.random()))


class Run:
    """Thin wrapper so stage code never touches MLflow's API directly."""

    def __init__(self, mlflow_module: Any):
        self._mlflow = mlflow_module

    @property
    def id(self) -> str:
        return self._mlflow.active_run().info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        _retried(self._mlflow.log_metrics, numeric, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @contextlib.contextmanager
    def nested(self, name: str, params: dict[str, Any]) -> Iterator[Run]:
        """A child run (e.g. one trial of a search) with ``params``, active inside the block."""
        with self._mlflow.start_run(run_name=name, nested=True):
            self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            yield Run(self._mlflow)

    def log_dataset(self, features: np.ndarray, name: str, source: str, context: str) -> None:
        """A dataset as an MLflow input of the run (the UI's Dataset column): its name, source
        and digest, not its content."""
        import warnings

        import mlflow.data

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": a local path
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(np.ascontiguousarray(features), source=source, name=name)
        _retried(self._mlflow.log_input, dataset, context=context)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _retried(self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters decided while the run goes (e.g. the fitted batch of ``batch_size: auto``)."""
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def log_torch_model(
    run: Run,
    net: Any,
    example: np.ndarray,
    registered_name: str,
    tags: dict[str, Any] | None = None,
    metadata: dict | None = None,
) -> int:
    """Log ``net`` (a module mapping one float32 tensor to one tensor) into ``run`` as an MLflow
    PyTorch model in the ``pt2`` format (a ``torch.export`` program: loading needs torch, neither
    this package nor pickle) and register it as a new version of ``registered_name`` with ``tags``
    (version and logged-model tags) and ``metadata`` (in ``MLmodel``). ``example (B, C, H, W)``
    float32 with B > 1 (a batch of 1 would fix the exported batch size): the traced input, saved
    as the input example. Metrics the run logs afterwards at step 0 (a stage's summary) are
    linked to the model. Returns the version number; a failed registration raises."""
    import torch

    _check_example(example)
    net = net.eval()
    with torch.no_grad():
        output = net(torch.from_numpy(example[:1])).numpy()  # for the output signature
    info = run._mlflow.pytorch.log_model(
        net,
        name="model",
        serialization_format="pt2",
        signature=_signature(example, output),
        input_example=example,
        pip_requirements=[_pinned("torch")],  # no dependency inference (a slow subprocess)
        registered_model_name=registered_name,
        tags=_strings({**(tags or {}), "model_format": "pytorch pt2"}),
        metadata=metadata,
        validate_serving_input=False,  # Model.log's reload + predict check: about 1 s, only warns
    )
    return _registered_version(info, registered_name)


def log_onnx_model(
    run: Run,
    onnx_path: str | Path,
    example: np.ndarray,
    registered_name: str,
    tags: dict[str, Any] | None = None,
    metadata: dict | None = None,
) -> int:
    """Log the ONNX file ``onnx_path`` (one input, one output) into ``run`` as an MLflow ONNX
    model and register it, like :func:`log_torch_model`; ``example (B, C, H, W)`` float32 (any
    B the file accepts) is run through onnxruntime once for the output signature."""
    import onnx
    import onnxruntime

    _check_example(example)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: example})[0]
    info = run._mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="onnx_model",
        signature=_signature(example, output),
        input_example=example,
        pip_requirements=[_pinned("onnx"), _pinned("onnxruntime")],
        registered_model_name=registered_name,
        tags=_strings({**(tags or {}), "model_format": "onnx"}),
        metadata=metadata,
        save_as_external_data=False,  # one self-contained model.onnx
    )
    return _registered_version(info, registered_name)


def _check_example(example: np.ndarray) -> None:
    if not isinstance(example, np.ndarray) or example.dtype != np.float32 or example.ndim != 4:
        got = f"{example.dtype} {example.shape}" if isinstance(example, np.ndarray) else type(example)
        raise ValueError(f"a model example must be float32 network input (B, C, H, W), got {got}")


def _strings(tags: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items()}


def _pinned(distribution: str) -> str:
    """``name==installed version``, without a local build tag such as ``+cu130`` (not on PyPI)."""
    return f"{distribution}=={importlib.metadata.version(distribution).split('+')[0]}"


def _signature(example: np.ndarray, output: np.ndarray) -> Any:
    """Tensor signature of one input and one output, with a variable batch size."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(a: np.ndarray) -> Schema:
        return Schema([TensorSpec(a.dtype, (-1, *a.shape[1:]))])

    return ModelSignature(inputs=spec(example), outputs=spec(output))


def _registered_version(info: Any, name: str) -> int:
    if info.registered_model_version is None:  # MLflow raises on a failed registration; be sure
        raise RuntimeError(f"MLflow logged {info.model_uri} but registered no version of '{name}'")
    return int(info.registered_model_version)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store, else None."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Held while this process opens the store and the experiment: for a ``sqlite:///`` store an
    exclusive lock on ``<file>.lock`` beside it, so that a new store's tables (an Alembic
    migration that fails when two processes run it at once) and the experiment are created once;
    nothing for other stores (a server serialises)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    db = _sqlite_file(uri)
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_experiment(mlflow: Any, name: str, uri: str) -> None:
    """Create experiment ``name`` if missing, tagged for the UI's model-training view, and make it
    the active one. Other processes doing the same at the same moment (``dvc queue start -j 2``,
    a team server) are no error: the experiment is created with its tag in one request, and a
    tag another process set first is taken as set."""
    from mlflow.exceptions import MlflowException

    kind = "custom_model_development"
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)  # the first access creates a new store
        if experiment is None:
            db = _sqlite_file(uri)
            artifacts = (db.parent / "mlartifacts").as_uri() if db else None
            try:
                mlflow.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND: kind})
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        experiment = mlflow.set_experiment(name)
        if experiment.tags.get(EXPERIMENT_KIND) != kind:  # an experiment made before the tag
            try:
                mlflow.set_experiment_tag(EXPERIMENT_KIND, kind)
            except MlflowException:  # a concurrent insert of the same tag
                if mlflow.get_experiment(experiment.experiment_id).tags.get(EXPERIMENT_KIND) != kind:
                    raise


def _existing(mlflow: Any, run_id: str | None) -> str | None:
    """``run_id`` if that run is in the current store (else None: e.g. another store's run)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        mlflow.get_run(run_id)
        return run_id
    except MlflowException:
        log.warning("MLflow run %s is not in this store; starting a new run", run_id)
        return None


@contextlib.contextmanager
def start_run(
    p: TrackingParams, run_name: str, params: dict[str, Any], resume: str | None = None
) -> Iterator[Run]:
    """An MLflow run named ``run_name`` with ``params`` (nested dict, flattened); or, with
    ``resume``, that existing run again (e.g. a study's run, joined by each search worker)."""
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(p)
    mlflow.set_tracking_uri(uri)
    _open_experiment(mlflow, p.experiment, uri)
    run_id = _existing(mlflow, resume)
    if run_id:
        with mlflow.start_run(run_id=run_id):
            yield Run(mlflow)
        return
    commit, exp = _git_commit(), os.environ.get("DVC_EXP_NAME")
    group = f"{exp or 'workspace'}@{(commit or 'no-git')[:8]}"  # one pipeline execution's runs
    with mlflow.start_run(run_name=f"{exp}/{run_name}" if exp else run_name):
        run = Run(mlflow)
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        tags = {"stage": run_name, "git.commit": commit, "dvc.exp_name": exp, "pipeline": group}
        run.set_tags({k: v for k, v in tags.items() if v} | dict(p.tags or {}))
        yield run
