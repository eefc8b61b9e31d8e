"""Where MAHT-Net looks: attention figures of the best and worst test images for the report
(the evaluate stage writes ``attention_best.png`` / ``attention_worst.png`` beside the overlays).

Each figure shows the network input and, stretched over it: the mean attention each stride-32
token receives in the last transformer block, the decoder's attention-gate maps, and, for a few
landmarks (at their ground-truth position), the last block's attention row of the token under
the landmark: what that landmark's token attends to. U-Net checkpoints, and MAHT-Nets without a
transformer, get no figure; windowed attention gets no per-landmark rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mahtnet.analysis.plots import plot_attention_maps
from mahtnet.data.dataset import image_to_tensor
from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint
from mahtnet.models.maht_net import MAHTNet, attention_maps, landmark_attention

QUERY_LANDMARKS = ("sella", "gonion", "menton")


def attention_figures(checkpoint: str | Path, result, folder: str | Path) -> list[Path]:
    """``attention_{best,worst}.png`` in ``folder`` for an :class:`~mahtnet.analysis.evaluation.Evaluation`
    of a MAHT-Net ``checkpoint``; ``[]`` for other models."""
    model, _, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    if not isinstance(model, MAHTNet) or not len(model.bottleneck.blocks) or model.bottleneck.bypass:
        return []
    image_mre = result.errors_mm.mean(axis=1)
    paths = []
    for which, i in (("best", int(np.argmin(image_mre))), ("worst", int(np.argmax(image_mre)))):
        image = result.data.images[i]
        maps = figure_maps(
            model, image, result.data.letterbox(i).to_prepared(result.gt[i]), result.landmark_names
        )
        paths.append(plot_attention_maps(image, maps, Path(folder) / f"attention_{which}.png"))
    return paths


def figure_maps(model: MAHTNet, image: np.ndarray, landmarks: np.ndarray, names) -> dict[str, np.ndarray]:
    """The maps of one figure: last block's received attention, gates, per-landmark rows."""
    x = image_to_tensor(image[None])
    last = len(model.bottleneck.blocks) - 1
    raw = attention_maps(model, x)
    maps = {"attention received": raw[f"bottleneck.{last}"][0].numpy()}
    maps |= {f"gate 1/{k.split('.')[1]}": v[0].numpy() for k, v in raw.items() if k.startswith("gate.")}
    if model.bottleneck.blocks[last].attn.window == 0:
        index = [list(names).index(n) for n in QUERY_LANDMARKS if n in names]
        points = torch.as_tensor(landmarks[index], dtype=torch.float32)[None]
        rows = landmark_attention(model, x, points)[0].numpy()
        maps |= {f"from {names[k]}": row for k, row in zip(index, rows, strict=True)}
    return maps
