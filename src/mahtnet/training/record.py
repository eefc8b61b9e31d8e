"""What every training stage script (``stages/train*.py``) does around the training itself: its
common command-line arguments (the prepared images and the outputs), its MLflow run (the
datasets, the summary metrics, the artefacts and the registered model) and its summary JSON."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mahtnet.config import Params, load_params, to_dict
from mahtnet.data.preprocess import PreparedSet
from mahtnet.deploy.mlflow_models import log_stage_model
from mahtnet.io import write_json
from mahtnet.tracking import Run, start_run
from mahtnet.training.loop import StageOutputs, TrainResult

# params, the script's arguments, training images, validation images, outputs, MLflow run (None
# off the main process) -> the result of the training
Fit = Callable[
    [Params, argparse.Namespace, PreparedSet, PreparedSet, StageOutputs, "Run | None"], TrainResult
]


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every training stage takes: its prepared images and its outputs."""
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="resume state (scratch: kept between runs, no DVC output)",
    )
    parser.add_argument("--history", required=True, type=Path, help="per-epoch CSV (DVC plot)")
    parser.add_argument("--grad-flow", required=True, type=Path, help="gradient-flow plot (PNG)")
    parser.add_argument("--metrics", required=True, type=Path)


def log_model(run: Run, checkpoint: Path, coarse: Path | None, result: TrainResult, images: str) -> None:
    """The stage's network as a new version of its architecture's MLflow registered model."""
    t0 = time.perf_counter()
    tags = {"val_mre_mm": f"{result.output_val_mre_mm:.4f}", "training_images": images}
    name, version = log_stage_model(run, checkpoint, coarse, tags)
    print(f"registered as MLflow model {name} version {version} ({time.perf_counter() - t0:.1f} s)")


def log_datasets(run: Run, params: Params, folder: Path, sets: dict) -> None:
    """The stage's training and validation images as MLflow inputs (name, source, digest of
    their landmarks and image ids; not their pixels)."""
    d = params.data
    for context, data in sets.items():
        split = "train" if context == "training" else "val"
        features = np.concatenate([data.landmarks.reshape(len(data), -1), data.boxes], axis=1)
        name = f"{d.dataset}/{d.train_split}/{split} (gt {d.gt}, {len(data)} images)"
        run.log_dataset(features, name, str(folder / f"{split}.npz"), context)


def run_training_stage(
    args: argparse.Namespace, label: str, name: str, fit: Fit, coarse: Path | None = None
) -> None:
    """Train with ``fit`` inside the MLflow run ``name`` (on the main process only) and write
    and log what the stage outputs; ``coarse``: a refiner's coarse checkpoint (for its
    registered model's name). ``label`` names the stage in the closing line."""
    params = load_params()
    train_set = PreparedSet.load(args.prepared / "train.npz")
    val_set = PreparedSet.load(args.prepared / "val.npz")
    outputs = StageOutputs(args.checkpoint, args.state_dir, args.history, args.grad_flow)
    main_process = int(os.environ.get("RANK", "0")) == 0
    tracking = start_run(params.tracking, name, to_dict(params)) if main_process else None
    with tracking or contextlib.nullcontext() as run:
        if run is not None:
            log_datasets(run, params, args.prepared, {"training": train_set, "validation": val_set})
        result = fit(params, args, train_set, val_set, outputs, run)
        if not main_process:
            return
        summary = dataclasses.asdict(result)
        write_json(args.metrics, summary)
        if params.tracking.log_models:  # first: MLflow links the summary metrics below to the model
            log_model(
                run, args.checkpoint, coarse, result, f"{len(train_set)} train + {len(val_set)} validation"
            )
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.set_tags({"checkpoint": args.checkpoint, "stop_reason": result.stop_reason or "-"})
        for path in (args.history, args.metrics, args.grad_flow):
            run.log_artifact(path)
    print(
        f"{label}: best epoch {result.best_epoch}: val MRE {result.best_val_mre_mm:.3f} mm; "
        f"written checkpoint val MRE {result.output_val_mre_mm:.3f} mm; {result.epochs_run} epochs in "
        f"{result.wall_time_s / 60:.1f} min on {result.device} x{result.world_size}"
    )
