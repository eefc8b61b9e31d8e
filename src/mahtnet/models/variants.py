"""Named model variants: one place for the architectures and training recipes the project
compares (the ablation study, the speed benchmark), as timm names its models.

A variant is the network it trains (``maht_net`` or ``unet``) and the ``params.yaml`` settings
that differ from the defaults (``-S key=value`` of ``dvc exp run``), with one line on what it
tests. :func:`register_variant` adds one; :func:`get_variant` finds it by name (an unknown name
is an error listing the known ones).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mahtnet.config import yaml_value

MAHT_NET_STAGES = ("stage1", "stage2", "stage3")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    network: str  # maht_net | unet
    what: str  # one line: what it tests
    settings: dict[str, Any]  # params.yaml key -> value (dotted keys)
    tags: tuple[str, ...] = ()  # e.g. "ablation", "benchmark"

    def model_settings(self) -> dict[str, Any]:
        """The ``model.*`` settings only, without the prefix (an architecture's keys)."""
        return {k.removeprefix("model."): v for k, v in self.settings.items() if k.startswith("model.")}

    def dvc_settings(self) -> list[str]:
        """``key=value`` strings for ``dvc exp run -S`` (YAML booleans and nulls)."""
        return [f"{k}={yaml_value(v)}" for k, v in self.settings.items()]


VARIANTS: dict[str, Variant] = {}


def register_variant(
    name: str, network: str, what: str, tags: tuple[str, ...] = (), **settings: Any
) -> Variant:
    """Add a variant (``settings`` keys with ``__`` for ``.``: ``model__fpn=False``)."""
    if name in VARIANTS:
        raise ValueError(f"model variant {name!r} is registered twice")
    keys = {k.replace("__", "."): v for k, v in settings.items()}
    VARIANTS[name] = Variant(name, network, what, keys, tuple(tags))
    return VARIANTS[name]


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variants_tagged(tag: str) -> list[Variant]:
    return [v for v in VARIANTS.values() if tag in v.tags]


def _one_stage(epochs: int) -> dict[str, Any]:
    """One end-to-end stage of ``epochs`` (the transformer trained from the start, the
    encoder at stage 1's rate), then one epoch each of stages 2 and 3 (their minimum)."""
    return {
        "stage1__epochs": epochs - 2,
        "stage1__bypass_transformer": False,
        "stage2__epochs": 1,
        "stage3__epochs": 1,
    }


# ---- the reference models -------------------------------------------------------------------
register_variant(
    "maht_net", "maht_net", "the full model (params.yaml / the profile)", ("ablation", "reference")
)
register_variant("unet", "unet", "the U-Net baseline", ("benchmark",))

# ---- the ablation study (issue: the plan's research questions on real data) ------------------
ABLATION = ("ablation",)
register_variant("no-transformer", "maht_net", "no transformer bottleneck (0 blocks)", ABLATION,
                 model__transformer_layers=0)  # fmt: skip
register_variant("transformer-6", "maht_net", "6 transformer blocks instead of 4", ABLATION,
                 model__transformer_layers=6)  # fmt: skip
register_variant("no-attention-gates", "maht_net", "decoder without attention gates", ABLATION,
                 model__attention_gates=False)  # fmt: skip
register_variant("no-cbam", "maht_net", "decoder without CBAM", ABLATION, model__decoder_cbam=False)
register_variant("no-imagenet", "maht_net", "encoder from scratch (no ImageNet weights)", ABLATION,
                 model__encoder_weights=None)  # fmt: skip
register_variant("one-stage", "maht_net", "one end-to-end stage, the three stages' epochs (ISBI: 48 + 1 + 1)",
                 ABLATION, **_one_stage(50))  # fmt: skip
register_variant("no-fpn", "maht_net", "decoder without FPN fusion", ("ablation-extra",), model__fpn=False)
register_variant(
    "transformer-2", "maht_net", "2 transformer blocks", ("ablation-extra",), model__transformer_layers=2
)
register_variant(
    "heatmap-stride-2", "maht_net", "heatmaps at stride 2", ("ablation-extra",), model__output_stride=2
)

# ---- the speed benchmark (scripts/benchmark_speed.py) ---------------------------------------
BENCH = ("benchmark",)
register_variant("maht_net_b0_tf4", "maht_net", "EfficientNet-B0, 4 blocks (the latency target's)", BENCH,
                 model__encoder="efficientnet_b0", model__transformer_layers=4)  # fmt: skip
register_variant("maht_net_b0_tf0", "maht_net", "EfficientNet-B0, no transformer", BENCH,
                 model__encoder="efficientnet_b0", model__transformer_layers=0)  # fmt: skip
register_variant("maht_net_b1_tf4", "maht_net", "EfficientNet-B1, 4 blocks", BENCH,
                 model__encoder="efficientnet_b1", model__transformer_layers=4)  # fmt: skip
register_variant("maht_net_lite0_tf4", "maht_net", "EfficientNet-Lite0 (the ISBI profiles'), 4 blocks", BENCH,
                 model__encoder="efficientnet_lite0", model__transformer_layers=4)  # fmt: skip
register_variant("maht_net_resnet50_tf4", "maht_net", "ResNet-50, 4 blocks", BENCH,
                 model__encoder="resnet50", model__transformer_layers=4)  # fmt: skip
register_variant(
    "encoder-b1", "maht_net", "EfficientNet-B1 encoder", ("ablation-extra",), model__encoder="efficientnet_b1"
)
register_variant(
    "encoder-resnet50", "maht_net", "ResNet-50 encoder", ("ablation-extra",), model__encoder="resnet50"
)

# ---- the encoder study (issue 42: stronger pretrained encoders) ------------------------------
# Larger EfficientNet-Lite encoders from their ImageNet weights (the DVC stage `weights` writes
# the files: `dvc repro weights` first); the ISBI profiles isbi-mean-lite1 / isbi-mean-lite2 run
# the full protocol with them.
ENCODER_STUDY = ("encoder",)
for _n in (1, 2):
    register_variant(
        f"encoder-lite{_n}",
        "maht_net",
        f"EfficientNet-Lite{_n} encoder from its ImageNet weights (instead of Lite0)",
        ENCODER_STUDY,
        model__encoder=f"tf_efficientnet_lite{_n}",
        model__encoder_weights=f"data/weights/efficientnet_lite{_n}_imagenet.pth",
    )
