"""MLflow tracking: one run per pipeline stage.

The store defaults to ``sqlite:///<repo root>/mlflow.db`` with artifacts in
``<repo root>/mlartifacts``; the root is found even from a DVC experiment workspace, so
queued ``dvc exp run`` experiments log to the same store. ``MLFLOW_TRACKING_URI`` or
``tracking.uri`` in ``params.yaml`` point it elsewhere (e.g. a team server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mahtnet.config import TrackingParams, flatten
from mahtnet.paths import repo_root

log = logging.getLogger(__name__)


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

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


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
    with mlflow.start_run(run_name=run_name):
        run = Run(mlflow)
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        tags = {"stage": run_name, "git_commit": _git_commit()}
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        run.set_tags({k: v for k, v in tags.items() if v})
        yield run
