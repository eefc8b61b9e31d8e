"""k-fold cross-validation over the training images.

Each fold holds out one k-th of the training images (the fold's test set), carves a
validation split from the rest (``data.val_fraction``, for model selection and early
stopping, as in the main pipeline), trains the U-Net baseline and/or the three MAHT-Net
stages with the settings of ``params.yaml``, and evaluates on the held-out images. The
summary gives each metric's mean, SD, min and max over the folds. The test split is never
touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mahtnet.analysis.evaluation import evaluate
from mahtnet.analysis.stats import mean_sd
from mahtnet.codec import encode_set
from mahtnet.config import Params
from mahtnet.data.preprocess import PreparedSet, split_train_val
from mahtnet.training.loop import StageOutputs
from mahtnet.training.stages import stage_codec, train

STAGES_OF = {"baseline": ("baseline",), "maht_net": ("stage1", "stage2", "stage3")}


def concat(sets: list[PreparedSet]) -> PreparedSet:
    return PreparedSet(
        **{
            f.name: np.concatenate([getattr(s, f.name) for s in sets])
            for f in dataclasses.fields(PreparedSet)
        }
    )


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of each fold: a seeded permutation of ``range(n)`` cut into ``folds``
    nearly equal, disjoint parts that together cover every image once."""
    if not 2 <= folds <= n:
        raise ValueError(f"crossval.folds must be in 2..{n} (training images), got {folds}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def summarize_folds(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {mean, sd, min, max}}`` over folds (SD with ddof=1)."""
    out = {}
    for key in rows[0]:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {**mean_sd(v), "min": float(v.min()), "max": float(v.max())}
    return out


class _LinesAboveBar:
    """``sys.stdout`` while ``bar`` shows on a terminal: each whole line printed goes above the
    bar (cleared first, redrawn after), not through it; a partial line waits for its end."""

    def __init__(self, stream, bar: tqdm):
        self.stream, self.bar, self.partial = stream, bar, ""

    def write(self, text: str) -> int:
        lines, newline, self.partial = (self.partial + text).rpartition("\n")
        if newline:
            self.bar.clear()
            self.stream.write(lines + newline)
            self.stream.flush()
            self.bar.refresh()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def lines_above(bar: tqdm):
    """While ``bar`` (on stderr) shows, what the code inside prints on stdout (the trainer's
    epoch lines) goes above the bar instead of through it; stdout itself is untouched when
    the bar is disabled (not a terminal)."""
    if bar.disable:
        yield
        return
    real = sys.stdout
    sys.stdout = above = _LinesAboveBar(real, bar)
    try:
        yield
    finally:
        sys.stdout = real
        if above.partial:
            real.write(above.partial)


def run_fold(params: Params, model: str, train_set, val_set, test_set, work: Path) -> dict[str, float]:
    """Train ``model`` on one fold (its stages chained) and evaluate on the held-out images."""
    init = None
    for stage in STAGES_OF[model]:
        val_targets = encode_set(stage_codec(params, stage), val_set.landmarks)[0]
        outs = StageOutputs(
            work / f"{stage}.pt",
            work / "runs" / stage,
            work / f"{stage}_history.csv",
            work / f"{stage}_grad_flow.png",
        )
        train(params, stage, train_set, val_set, outs, init, None, val_targets)
        init = outs.checkpoint
    result = evaluate(
        init, test_set, params.evaluate.sdr_thresholds_mm, params.train.device, params.evaluate.batch_size
    )
    return result.summary()


def crossvalidate(params: Params, training: PreparedSet, work: Path) -> dict:
    """Cross-validate every model of ``params.crossval.models``; per-fold results and summary.
    On a terminal, a progress bar on stderr: one step per model and fold."""
    cv = params.crossval
    folds = fold_indices(len(training), cv.folds, params.seed)
    out: dict = {"folds": cv.folds, "images": len(training), "models": {}}
    bar = tqdm(total=len(cv.models) * cv.folds, desc="crossval", unit="fold", disable=None)
    with bar, lines_above(bar):
        for model in cv.models:
            rows = []
            for k, held in enumerate(folds):
                bar.set_postfix_str(f"{model} fold {k + 1}/{cv.folds}")
                t0 = time.perf_counter()
                rest = np.setdiff1d(np.arange(len(training)), held)
                tr, va = split_train_val(len(rest), params.data.val_fraction, params.seed)
                fold = (training.subset(rest[tr]), training.subset(rest[va]), training.subset(held))
                summary = run_fold(params, model, *fold, work / f"fold{k}" / model)
                summary["seconds"] = time.perf_counter() - t0
                rows.append(summary)
                print(f"crossval {model} fold {k + 1}/{cv.folds}: MRE {summary['mre_mm']:.3f} mm", flush=True)
                bar.update()
            out["models"][model] = {"summary": summarize_folds(rows), "per_fold": rows}
    return out
