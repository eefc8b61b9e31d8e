"""Fit a clinic's conventions to its corrections and write the adapted model folder.

The folder holds the base model's files (copied, checksums kept), ``adaptation.json`` (the
learned per-landmark offsets, :class:`mahtnet.decoding.conventions.Convention`) and a
``card.json`` whose ``reader`` block names them all, so that :meth:`ReaderSpec.from_folder
<mahtnet.decoding.recipe.ReaderSpec.from_folder>` loads it like the release. The card records
the base model (its card's name and the sha256 of its files), the method, k, each correction's
file and image checksums, the per-landmark figures and the leave-one-out error on the k images.

The folder is written under a temporary name beside the destination and renamed into place
only when complete: an interrupted ``adapt`` leaves no half-written model, and an existing
folder (the release, an earlier adaptation) is never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mahtnet.adapt.sources import CorrectedImage, check_predicted, find
from mahtnet.data.images import read_xray
from mahtnet.decoding.conventions import METHODS, Convention, choose, fit, leave_one_out
from mahtnet.decoding.recipe import ReaderSpec, load_reader, read_card
from mahtnet.io import write_json
from mahtnet.models.card import sha256

ADAPTATION_FILE = "adaptation.json"
Predict = Callable[[Path, float], np.ndarray]  # (image, spacing mm) -> (19, 2) original px


def learn(
    corrections: list[CorrectedImage],
    predict: Predict,
    method: str = "auto",
    prior_var: np.ndarray | None = None,
) -> tuple[Convention, dict, np.ndarray]:
    """The convention of ``corrections`` (each re-predicted by the base model and checked
    against the review file's predicted positions), the leave-one-out figures, and the base
    model's points ``(k, 19, 2)``."""
    if method not in (*METHODS, "auto"):
        raise KeyError(f"unknown adaptation method {method!r}; valid: auto, {', '.join(METHODS)}")
    points = []
    for c in corrections:
        p = np.asarray(predict(c.image, c.pixel_spacing_mm), dtype=np.float64)
        check_predicted(c, p)
        points.append(p)
    predicted = np.stack(points)
    corrected = np.stack([c.corrected for c in corrections])
    spacing = np.array([c.pixel_spacing_mm for c in corrections])
    chosen, scores = (method, {})
    if method == "auto":
        chosen, scores = choose(predicted, corrected, spacing, prior_var)
    conv = fit(chosen, predicted, corrected, spacing, prior_var)
    loo = scores.get(chosen)
    if loo is None and len(corrections) >= 2:
        loo = leave_one_out(chosen, predicted, corrected, spacing, prior_var)
    return conv, {"chosen_by": method, "leave_one_out": loo, "every_method": scores}, predicted


def write_folder(
    out: Path,
    base_card: Path,
    conv: Convention,
    corrections: list[CorrectedImage],
    selection: dict,
) -> Path:
    """The adapted model folder at ``out`` (which must not exist), atomically."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(
            f"{out}: already exists; an adaptation never overwrites a model (choose a new --out)"
        )
    base = json.loads(base_card.read_text())
    files = dict(base["files"])
    reader = dict(base["reader"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in files:
            shutil.copy2(base_card.parent / name, tmp / name)
        write_json(tmp / ADAPTATION_FILE, conv.to_dict())
        card = {
            "name": f"{base['name']}, adapted to {len(corrections)} corrected images",
            "intended_use": base.get("intended_use"),
            "pipeline": base.get("pipeline"),
            "base": {"name": base["name"], "files": files},
            "adaptation": {
                "method": conv.method,
                "k": conv.k,
                **selection,
                "corrections": [
                    {
                        "file": c.file.name,
                        "sha256": c.file_sha256,
                        "image": c.image.name,
                        "image_sha256": c.image_sha256,
                    }
                    for c in corrections
                ],
                "pixel_spacing_mm": corrections[0].pixel_spacing_mm,
                "figures": conv.to_dict(),
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
            # the base model's verdict thresholds, flags and bound travel with it (the bound is the
            # base model's: conservative, as adapted errors are smaller where the offsets help)
            **({"trust": base["trust"]} if "trust" in base else {}),
            "reader": {**reader, "adaptation": ADAPTATION_FILE},
            "files": files | {ADAPTATION_FILE: _file_entry(tmp / ADAPTATION_FILE)},
        }
        write_json(tmp / "card.json", card)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _file_entry(path: Path) -> dict:
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def adapt_model(
    corrections_dir: Path,
    base: ReaderSpec,
    out: Path,
    method: str = "auto",
    pixel_spacing_mm: float | None = None,
    threads: int = 0,
) -> dict:
    """:func:`adapt` from a base model folder's recipe (``mahtnet adapt`` and the review page's
    "adapt"): its reader re-reads the corrected images, its card gives the prior spread of
    corrections. An adapted model is never a base: adapt its base instead."""
    if base.adaptation is not None or base.card is None:
        what = "an adapted model" if base.adaptation is not None else "a model file without a folder and card"
        raise ValueError(
            f"{base.card or base.model}: {what} cannot be a base; adapt a model folder such as the release"
        )
    reader = load_reader(dataclasses.replace(base, threads=threads))

    def predict(image: Path, spacing: float) -> np.ndarray:
        return reader.read_images([read_xray(image).pixels], [spacing]).final[0]

    prior = read_card(base.card).get("adaptation_prior_variance_mm2")
    return adapt(corrections_dir, base.card, out, predict, method, pixel_spacing_mm, prior)


def adapt(
    corrections_dir: Path,
    base_card: Path,
    out: Path,
    predict: Predict,
    method: str = "auto",
    pixel_spacing_mm: float | None = None,
    prior_var: np.ndarray | None = None,
) -> dict:
    """``mahtnet adapt``: read, check, fit, write; returns the new card."""
    if Path(out).exists():  # before any work: never overwrite
        raise FileExistsError(
            f"{out}: already exists; an adaptation never overwrites a model (choose a new --out)"
        )
    corrections = find(corrections_dir, pixel_spacing_mm)
    conv, selection, _ = learn(corrections, predict, method, prior_var)
    folder = write_folder(out, base_card, conv, corrections, selection)
    return json.loads((folder / "card.json").read_text())
