"""Stage: channel-prune the full MAHT-Net (``--init CKPT``, stage 3) by ``--sparsity-pct N`` %
and fine-tune it with ``prune.train``'s schedule; write its best (or averaged) checkpoint,
per-epoch history, gradient-flow plot and summary metrics. A rerun after a kill resumes from
``--state-dir``. Multi-GPU: ``torchrun --standalone --nproc-per-node N stages/train_prune.py ...``.
"""

import argparse
import functools
from pathlib import Path

from mahtnet.errors import run_cli
from mahtnet.training.kinds import kinds_of_script
from mahtnet.training.prune import prune_stage_model
from mahtnet.training.record import add_stage_arguments, run_training_stage
from mahtnet.training.stages import load_val_targets, stage_codec, train

(STAGE,) = kinds_of_script(Path(__file__).name)  # "prune"


def run_stage(params, args, train_set, val_set, outputs, run):
    val_targets = load_val_targets(args.targets, stage_codec(params, STAGE))
    prune = functools.partial(prune_stage_model, params, sparsity=args.sparsity_pct / 100)
    return train(params, STAGE, train_set, val_set, outputs, args.init, run, val_targets, prune=prune)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sparsity-pct", required=True, type=int, help="%% of the channels removed")
    parser.add_argument("--init", required=True, type=Path, help="the full model's checkpoint (stage 3)")
    parser.add_argument("--targets", required=True, type=Path, help="folder of the heatmap stage")
    add_stage_arguments(parser)
    args = parser.parse_args()
    run_training_stage(args, STAGE, f"train_{STAGE}_{args.sparsity_pct}", run_stage)


if __name__ == "__main__":
    run_cli(main)
