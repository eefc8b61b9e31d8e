"""Stage: train one stage of the schedule (``--stage baseline | stage1 | stage2 | stage3``),
the refinement network of a coarse model (``--stage refine --coarse CKPT --fine DIR``), a
distillation student (``--stage student | distill [--teacher CKPT]``) or a channel-pruned
MAHT-Net (``--stage prune --init CKPT --sparsity-pct N``),
and write its best (or averaged) checkpoint, per-epoch history, gradient-flow plot and
summary metrics. A rerun after a kill resumes from ``--state-dir``.

Multi-GPU (or multi-process CPU): ``torchrun --standalone --nproc-per-node N stages/train.py ...``.
"""

import argparse
import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from mahtnet.codec import HeatmapCodec
from mahtnet.config import PRUNE_STAGE, STAGES, STUDENT_STAGES, load_params, to_dict
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.deploy.mlflow_models import log_stage_model
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run
from mahtnet.training.loop import StageOutputs
from mahtnet.training.refiner_task import train_refiner
from mahtnet.training.stages import stage_codec, train


def load_val_targets(folder: Path, codec: HeatmapCodec) -> np.ndarray:
    """Validation heatmaps from the heatmap stage at the model's stride, checked against the codec."""
    path = folder / f"stride{codec.stride}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"heatmap targets not found: {path} (run the heatmaps stage)")
    with np.load(path) as z:
        stored = (float(z["sigma"]), int(z["stride"]), tuple(int(v) for v in z["input_size"]))
        if stored != (codec.sigma, codec.stride, codec.input_size):
            raise ValueError(f"{path} was made with (sigma, stride, input size) {stored}, params say {codec}")
        return z["val"]


def run_stage(params, args, train_set, val_set, outputs, run):
    if args.stage == "refine":
        if args.coarse is None or args.fine is None:
            raise SystemExit("--stage refine needs --coarse and --fine")
        fine = [FineSet.load(args.fine / f"{split}.npz") for split in ("train", "val")]
        return train_refiner(params, args.coarse, *fine, val_set, outputs, run)
    if args.targets is None:
        raise SystemExit(f"--stage {args.stage} needs --targets")
    val_targets = load_val_targets(args.targets, stage_codec(params, args.stage))
    sparsity = None if args.sparsity_pct is None else args.sparsity_pct / 100
    return train(
        params, args.stage, train_set, val_set, outputs, args.init, run, val_targets, args.teacher, sparsity
    )


def log_model(run, args, result, images: str) -> None:
    """The stage's network as a new version of its architecture's MLflow registered model."""
    t0 = time.perf_counter()
    tags = {"val_mre_mm": f"{result.output_val_mre_mm:.4f}", "training_images": images}
    name, version = log_stage_model(run, args.checkpoint, args.coarse, tags)
    print(f"registered as MLflow model {name} version {version} ({time.perf_counter() - t0:.1f} s)")


def log_datasets(run, params, folder: Path, sets: dict) -> None:
    """The stage's training and validation images as MLflow inputs (name, source, digest of
    their landmarks and image ids; not their pixels)."""
    d = params.data
    for context, data in sets.items():
        split = "train" if context == "training" else "val"
        features = np.concatenate([data.landmarks.reshape(len(data), -1), data.boxes], axis=1)
        name = f"{d.dataset}/{d.train_split}/{split} (gt {d.gt}, {len(data)} images)"
        run.log_dataset(features, name, str(folder / f"{split}.npz"), context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", required=True, choices=(*STAGES, *STUDENT_STAGES, PRUNE_STAGE, "refine"))
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--targets", type=Path, help="folder of the heatmap stage (heatmap models)")
    parser.add_argument("--coarse", type=Path, help="refine: the coarse model's checkpoint")
    parser.add_argument("--fine", type=Path, help="refine: folder of the prepare_fine stage")
    parser.add_argument("--init", type=Path, help="checkpoint of the previous stage")
    parser.add_argument("--teacher", type=Path, help="distill: the teacher's checkpoint")
    parser.add_argument("--sparsity-pct", type=int, help="prune: %% of the channels removed")
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
    args = parser.parse_args()
    params = load_params()
    train_set = PreparedSet.load(args.prepared / "train.npz")
    val_set = PreparedSet.load(args.prepared / "val.npz")
    outputs = StageOutputs(args.checkpoint, args.state_dir, args.history, args.grad_flow)
    main_process = int(os.environ.get("RANK", "0")) == 0
    name = f"train_{args.stage}" + (f"_{args.coarse.stem}" if args.stage == "refine" else "")
    name += f"_{args.sparsity_pct}" if args.stage == PRUNE_STAGE else ""
    tracking = start_run(params.tracking, name, to_dict(params)) if main_process else None
    with tracking or contextlib.nullcontext() as run:
        if run is not None:
            log_datasets(run, params, args.prepared, {"training": train_set, "validation": val_set})
        result = run_stage(params, args, train_set, val_set, outputs, run)
        if not main_process:
            return
        summary = dataclasses.asdict(result)
        write_json(args.metrics, summary)
        if params.tracking.log_models:  # first: MLflow links the summary metrics below to the model
            log_model(run, args, result, f"{len(train_set)} train + {len(val_set)} validation")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.set_tags({"checkpoint": args.checkpoint, "stop_reason": result.stop_reason or "-"})
        for path in (args.history, args.metrics, args.grad_flow):
            run.log_artifact(path)
    print(
        f"{args.stage}: best epoch {result.best_epoch}: val MRE {result.best_val_mre_mm:.3f} mm; "
        f"written checkpoint val MRE {result.output_val_mre_mm:.3f} mm; {result.epochs_run} epochs in "
        f"{result.wall_time_s / 60:.1f} min on {result.device} x{result.world_size}"
    )


if __name__ == "__main__":
    run_cli(main)
