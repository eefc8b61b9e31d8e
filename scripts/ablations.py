"""Queue the plan's ablations of MAHT-Net as DVC experiments (one place for the list).

    python scripts/ablations.py                      # list the variants and their -S settings
    python scripts/ablations.py --queue [NAME ...]   # dvc exp run --queue each (all by default)
    dvc queue start -j 1                             # run them (one at a time on a small machine)
    dvc exp show --only-changed --drop 'plots|data|reports'   # the comparison table
    dvc plots diff $(dvc exp ls --name-only)         # their plots side by side

Each variant changes only MAHT-Net settings (a queued experiment still re-trains the U-Net
baseline, to the identical result, since the stages' resume states are not cached); the
loss variants keep ``loss.output: logits`` (the heatmap terms then compare the spatial
softmax, scaled to unit peak, with the Gaussian target). Each experiment re-trains the three
MAHT-Net stages, evaluates and compares them with the baseline. Extra ``-S`` settings
(e.g. the ISBI profile) go after ``--set``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

STAGES = ("stage1", "stage2", "stage3")


def _loss(**weights: float) -> dict[str, object]:
    """The same loss weights in all three MAHT-Net stages (other terms 0)."""
    terms = ("softmax_ce", "mse", "l1_coords", "wing", "adaptive_wing", "ssim", "focal")
    full = {t: weights.get(t, 0.0) for t in terms}
    return {f"{s}.loss_weights.{t}": v for s in STAGES for t, v in full.items()}


ABLATIONS: dict[str, dict[str, object]] = {
    "no-transformer": {"model.transformer_layers": 0},
    "no-attention-gates": {"model.attention_gates": False},
    "no-fpn": {"model.fpn": False},
    "no-cbam": {"model.decoder_cbam": False},
    "transformer-2": {"model.transformer_layers": 2},
    "transformer-6": {"model.transformer_layers": 6},
    "encoder-b1": {"model.encoder": "efficientnet_b1"},
    "encoder-resnet50": {"model.encoder": "resnet50"},
    "loss-mse": _loss(mse=1.0),
    "loss-softmax-wing": _loss(softmax_ce=1.0, wing=0.1),
    "loss-softmax-l1": _loss(softmax_ce=1.0, l1_coords=0.1),
    "loss-adaptive-wing": _loss(adaptive_wing=1.0),
    "loss-softmax-ssim": _loss(softmax_ce=1.0, ssim=1.0),
    "loss-focal": _loss(focal=1.0),
    "loss-uncertainty": {
        **_loss(softmax_ce=1.0, wing=0.1),
        **{f"{s}.uncertainty_weighting": True for s in STAGES},
    },
    "heatmap-stride-2": {"model.output_stride": 2},
    "sigma-curriculum": {"heatmap.sigma_start": 6.0, "heatmap.anneal_fraction": 0.5},
}


def _yaml(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def command(name: str, settings: dict[str, object], extra: list[str]) -> list[str]:
    args = ["dvc", "exp", "run", "--queue", "-n", f"ablation-{name}"]
    for key, value in settings.items():
        args += ["-S", f"{key}={_yaml(value)}"]
    for s in extra:
        args += ["-S", s]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"variants (default: all): {', '.join(ABLATIONS)}")
    parser.add_argument("--queue", action="store_true", help="queue them (else print the commands)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value settings for every variant")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in ABLATIONS]
    if unknown:
        sys.exit(f"unknown ablation(s) {unknown}; valid: {', '.join(ABLATIONS)}")
    for name in args.names or ABLATIONS:
        cmd = command(name, ABLATIONS[name], args.set)
        print(" ".join(cmd))
        if args.queue:
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
