"""One ``mahtnet predict`` run: read, predict and write a list of X-ray files in batches.

Per image ``<out>/<name>.json`` (:func:`mahtnet.predict.result.to_json`), ``<name>.png`` (overlay)
and, on request, ``<name>.txt`` (ISBI format); for the run ``<out>/landmarks.csv`` (one row
per image and landmark). Every file is written atomically. A file that cannot be read or
predicted is reported on stderr (``error: <file>: <reason>``) and skipped; the run goes on,
and its exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mahtnet.analysis.calibration import ErrorCalibration
from mahtnet.data.images import XRay, read_xray
from mahtnet.decoding import LandmarkReader, load_backend, load_refiner
from mahtnet.decoding.shape import ShapePrior
from mahtnet.decoding.tta import tta_transforms
from mahtnet.io import write_text
from mahtnet.models.card import synthetic_warning
from mahtnet.predict.result import DECODING_NAMES, Prediction, isbi_text, predict_xrays, to_json

CSV_COLUMNS = ["image", "landmark", "x_px", "y_px", "x_mm", "y_mm", "confidence", "low_confidence"]
CALIBRATED = "expected_error_mm"  # a column and JSON field with --calibration
TTA_SHIFTS_PX = (2.0,)  # --tta: the transforms screened on the ISBI validation images (docs/evaluation.md)


class PredictRun:
    def __init__(self, args: argparse.Namespace):
        if args.batch_size < 1:
            raise ValueError(f"--batch-size: must be at least 1, got {args.batch_size}")
        self.args = args
        self.backend = load_backend(args.model, args.device, args.threads)
        warning = synthetic_warning(self.backend.card)
        if warning:
            print(warning, file=sys.stderr)
        self.prior = ShapePrior.load(args.shape_prior) if args.shape_prior else None
        self.refiner = load_refiner(args.refiner, args.device, args.threads) if args.refiner else None
        self.calibration = self._calibration(args.calibration)
        transforms = tta_transforms(TTA_SHIFTS_PX, ()) if getattr(args, "tta", False) else None
        self.reader = LandmarkReader(
            self.backend, self.prior, self.refiner, transforms, calibration=self.calibration
        )
        self._check_calibrated_decoding(args.calibration)
        self.failed: list[tuple[Path, str]] = []
        self.rows: list[dict] = []

    def run(self, files: Sequence[Path], names: Sequence[str]) -> int:
        """Predict every file; 0 when all succeeded, 1 when any failed."""
        bs = self.args.batch_size
        with tqdm(total=len(files), unit="image", desc="predict", disable=None) as bar:
            for start in range(0, len(files), bs):
                self._batch(files[start : start + bs], names[start : start + bs])
                bar.update(len(files[start : start + bs]))
        if self.rows:
            columns = CSV_COLUMNS + ([CALIBRATED] if self.calibration else [])
            csv = pd.DataFrame(self.rows, columns=columns).to_csv(index=False, float_format="%.3f")
            write_text(self.args.out / "landmarks.csv", csv)
        done = len(files) - len(self.failed)
        print(f"{done} of {len(files)} images predicted -> {self.args.out}", file=sys.stderr)
        if self.failed:
            print(f"error: {len(self.failed)} of {len(files)} images failed (see above)", file=sys.stderr)
        return 1 if self.failed else 0

    def _calibration(self, path: Path | None) -> ErrorCalibration | None:
        """The calibrate stage's map for this model (refused when fitted for another model)."""
        if path is None:
            return None
        cal = ErrorCalibration.load(path)
        cal.check_model(self.backend.card.to_dict(), path)
        return cal

    def _check_calibrated_decoding(self, path: Path | None) -> None:
        """Refuse a calibration fitted on other landmarks than this run emits (e.g. fitted on
        refined landmarks, used without the refiner): their errors differ."""
        fitted = None if self.calibration is None else self.calibration.model.get("decoding")
        emitted = DECODING_NAMES[self.reader.variants()[-1]]
        if fitted is not None and fitted != emitted:
            raise ValueError(
                f"{path}: fitted on {fitted} landmarks, but this run emits {emitted} ones "
                "(give predict the shape prior and refiner the calibrate stage used)"
            )

    def _fail(self, path: Path, err: Exception) -> None:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        tqdm.write(f"error: {message}", file=sys.stderr)
        self.failed.append((path, message))

    def _read(self, files: Sequence[Path], names: Sequence[str]) -> list[tuple[XRay, str]]:
        good = []
        for path, name in zip(files, names, strict=True):
            try:
                good.append((read_xray(path), name))
            except (ValueError, OSError) as err:  # DataError is a ValueError
                self._fail(path, err)
        return good

    def _batch(self, files: Sequence[Path], names: Sequence[str]) -> None:
        good = self._read(files, names)
        if not good:
            return
        try:
            preds = predict_xrays(self.reader, [x for x, _ in good], self.args.pixel_spacing)
        except (ValueError, RuntimeError) as err:
            if len(good) == 1:
                self._fail(good[0][0].path, err)
                return
            for x, name in good:  # find the bad one: one image at a time
                self._batch([x.path], [name])
            return
        for p, (_, name) in zip(preds, good, strict=True):
            self._write(p, name)

    def _write(self, p: Prediction, name: str) -> None:
        out: Path = self.args.out
        doc = to_json(p, self.backend.card)
        write_text(out / f"{name}.json", json.dumps(doc, indent=2) + "\n")
        if self.args.isbi_txt:
            write_text(out / f"{name}.txt", isbi_text(p))
        if not self.args.no_overlay:
            from mahtnet.predict.overlay import draw_overlay, write_overlay

            names = self.backend.card.landmark_names
            write_overlay(out / f"{name}.png", draw_overlay(p.xray.pixels, p.landmarks, names, p.confidence))
        for row in doc["landmarks"]:
            self.rows.append({"image": str(p.xray.path), "landmark": row.pop("name"), **row})
