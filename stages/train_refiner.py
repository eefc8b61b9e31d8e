"""Stage: train the refinement network of a coarse model (``--coarse CKPT``) on the patches of
the prepare_fine stage (``--fine DIR``) with ``refine.train``'s schedule, and write its best (or
averaged) checkpoint, per-epoch history, gradient-flow plot and summary metrics. A rerun after
a kill resumes from ``--state-dir``.
Multi-GPU: ``torchrun --standalone --nproc-per-node N stages/train_refiner.py ...``.
"""

import argparse
from pathlib import Path

from mahtnet.data.fine import FineSet
from mahtnet.errors import run_cli
from mahtnet.training.kinds import kinds_of_script
from mahtnet.training.record import add_stage_arguments, run_training_stage
from mahtnet.training.refiner_task import train_refiner

(STAGE,) = kinds_of_script(Path(__file__).name)  # "refine"


def run_stage(params, args, train_set, val_set, outputs, run):
    fine = [FineSet.load(args.fine / f"{split}.npz") for split in ("train", "val")]
    return train_refiner(params, args.coarse, *fine, val_set, outputs, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coarse", required=True, type=Path, help="the coarse model's checkpoint")
    parser.add_argument("--fine", required=True, type=Path, help="folder of the prepare_fine stage")
    add_stage_arguments(parser)
    args = parser.parse_args()
    run_training_stage(args, STAGE, f"train_{STAGE}_{args.coarse.stem}", run_stage, args.coarse)


if __name__ == "__main__":
    run_cli(main)
