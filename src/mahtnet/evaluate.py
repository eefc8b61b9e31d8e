"""Evaluate a checkpoint (or an ensemble of checkpoints) on a prepared split: MRE / SDR
overall and per landmark, at the original image resolution."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mahtnet import metrics
from mahtnet.checkpoint import load_checkpoint, model_from_checkpoint
from mahtnet.data.preprocess import PreparedSet
from mahtnet.inference import predict, select_device
from mahtnet.io import atomic_write, write_json

SDR_CURVE_MM = tuple(np.round(np.arange(0.5, 10.01, 0.25), 2))


@dataclasses.dataclass
class Evaluation:
    ids: np.ndarray  # (N,)
    pred: np.ndarray  # (N, K, 2) original px
    gt: np.ndarray  # (N, K, 2) original px
    errors_mm: np.ndarray  # (N, K)
    spacing: np.ndarray  # (N,) mm per original pixel
    confidence: np.ndarray  # (N, K)
    landmark_names: list[str]
    thresholds_mm: list[float]

    def summary(self) -> dict[str, float]:
        out = metrics.summarize(self.errors_mm, self.thresholds_mm)
        out["mre_px"] = float((self.errors_mm / self.spacing[:, None]).mean())
        out["images"] = len(self.ids)
        return out

    def per_landmark(self) -> list[dict]:
        return metrics.per_landmark(self.errors_mm, self.thresholds_mm, self.landmark_names)

    def per_image(self) -> pd.DataFrame:
        df = pd.DataFrame(self.errors_mm, columns=self.landmark_names)
        df.insert(0, "mre_mm", self.errors_mm.mean(axis=1))
        df.insert(0, "image_id", self.ids)
        return df

    def write(
        self,
        metrics_path: str | Path,
        plots_dir: str | Path | None = None,
        per_image_path: str | Path | None = None,
        extra: dict | None = None,
    ) -> None:
        """``metrics_path``: summary JSON (a DVC metric); ``plots_dir``: per-landmark and
        SDR-curve CSVs (DVC plots); ``per_image_path``: per-image, per-landmark errors."""
        if plots_dir is not None:
            write_csv(Path(plots_dir) / "per_landmark.csv", pd.DataFrame(self.per_landmark()))
            curve = metrics.sdr_curve(self.errors_mm, SDR_CURVE_MM)
            write_csv(Path(plots_dir) / "sdr_curve.csv", pd.DataFrame(curve))
        if per_image_path is not None:
            write_csv(per_image_path, self.per_image())
        write_json(metrics_path, {**self.summary(), **(extra or {})})


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))


def evaluate(
    checkpoints: str | Path | Sequence[str | Path],
    data: PreparedSet,
    thresholds_mm: Sequence[float],
    device: str = "auto",
    batch_size: int = 8,
) -> Evaluation:
    """Evaluate a checkpoint, or an ensemble of checkpoints (their landmark predictions are
    averaged in original-image pixels, their confidences averaged) on ``data``."""
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise ValueError("no checkpoint to evaluate")
    dev = select_device(device)
    preds, confs, names = [], [], None
    for path in paths:
        payload = load_checkpoint(path)
        model, codec, output_kind = model_from_checkpoint(payload)
        if tuple(data.images.shape[1:]) != codec.input_size:
            raise ValueError(
                f"prepared images are {data.images.shape[1:]} but checkpoint {path} expects "
                f"{codec.input_size}; re-run preprocess with the checkpoint's input size"
            )
        if names is not None and list(payload["meta"]["landmark_names"]) != names:
            raise ValueError(f"checkpoint {path} predicts other landmarks than {paths[0]}")
        names = list(payload["meta"]["landmark_names"])
        model.to(dev)
        coords, conf = predict(model, data.images, codec, output_kind, dev, batch_size)
        preds.append(data.to_original(coords))
        confs.append(conf)
    pred = np.mean(preds, axis=0)
    errors = metrics.radial_errors_mm(pred, data.landmarks_orig, data.spacing)
    return Evaluation(
        ids=data.ids,
        pred=pred,
        gt=data.landmarks_orig,
        errors_mm=errors,
        spacing=data.spacing,
        confidence=np.mean(confs, axis=0),
        landmark_names=names,
        thresholds_mm=list(thresholds_mm),
    )
