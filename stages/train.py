"""Stage: train one stage of the schedule (``--stage baseline | stage1 | stage2 | stage3``) or a
distillation student (``--stage student | distill [--teacher CKPT]``), and write its best (or
averaged) checkpoint, per-epoch history, gradient-flow plot and summary metrics. A rerun after a
kill resumes from ``--state-dir``. The refiner (``stages/train_refiner.py``) and the pruned
MAHT-Nets (``stages/train_prune.py``) have their own scripts.

Multi-GPU (or multi-process CPU): ``torchrun --standalone --nproc-per-node N stages/train.py ...``.
"""

import argparse
from pathlib import Path

from mahtnet.errors import run_cli
from mahtnet.training.kinds import kinds_of_script
from mahtnet.training.record import add_stage_arguments, run_training_stage
from mahtnet.training.stages import load_val_targets, stage_codec, train


def run_stage(params, args, train_set, val_set, outputs, run):
    val_targets = load_val_targets(args.targets, stage_codec(params, args.stage))
    return train(params, args.stage, train_set, val_set, outputs, args.init, run, val_targets, args.teacher)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", required=True, choices=kinds_of_script(Path(__file__).name))
    parser.add_argument("--targets", required=True, type=Path, help="folder of the heatmap stage")
    parser.add_argument("--init", type=Path, help="checkpoint of the previous stage")
    parser.add_argument("--teacher", type=Path, help="distill: the teacher's checkpoint")
    add_stage_arguments(parser)
    args = parser.parse_args()
    run_training_stage(args, args.stage, f"train_{args.stage}", run_stage)


if __name__ == "__main__":
    run_cli(main)
