"""MLflow tracking: one run per pipeline stage.

Runs of one pipeline execution share the tag ``pipeline`` (``<DVC experiment or workspace>@<git
commit>``) and, inside a DVC experiment, a run name prefixed with the experiment's; per-epoch
metrics are grouped as ``train/``, ``val/`` and ``monitor/`` (:func:`metric_group`) and the
evaluation's as ``test/``; the experiment is tagged for the model-training view of the UI.

The store defaults to ``sqlite:///<repo root>/mlflow.db`` with artifacts in
``<repo root>/mlartifacts``; the root is found even from a DVC experiment workspace, so
queued ``dvc exp run`` experiments log to the same store. ``MLFLOW_TRACKING_URI`` or
``tracking.uri`` in ``params.yaml`` point it elsewhere (e.g. a team server).

Models (:func:`log_torch_model`, :func:`log_onnx_model`) are logged into the run and
registered as a new version of a registered model in the same store; a failed registration
raises. What is logged under which name: :mod:`mahtnet.model_registry`.
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


class Run:
    """Thin wrapper so stage code never touches MLflow's API directly."""

    def __init__(self, mlflow_module: Any):
        self._mlflow = mlflow_module

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._mlflow.log_metrics(numeric, step=step)

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
        self._mlflow.log_input(dataset, context=context)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


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


@contextlib.contextmanager
def start_run(p: TrackingParams, run_name: str, params: dict[str, Any]) -> Iterator[Run]:
    """An MLflow run named ``run_name`` with ``params`` (nested dict, flattened)."""
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(p))
    if mlflow.get_experiment_by_name(p.experiment) is None:
        uri = tracking_uri(p)
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        mlflow.create_experiment(p.experiment, artifact_location=artifacts)
    mlflow.set_experiment(p.experiment)
    mlflow.set_experiment_tag(EXPERIMENT_KIND, "custom_model_development")  # the UI's model-training view
    commit, exp = _git_commit(), os.environ.get("DVC_EXP_NAME")
    group = f"{exp or 'workspace'}@{(commit or 'no-git')[:8]}"  # one pipeline execution's runs
    with mlflow.start_run(run_name=f"{exp}/{run_name}" if exp else run_name):
        run = Run(mlflow)
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        tags = {"stage": run_name, "git_commit": commit, "dvc_exp_name": exp, "pipeline": group}
        run.set_tags({k: v for k, v in tags.items() if v})
        yield run
