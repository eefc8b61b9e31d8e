"""One ``mahtnet predict`` run: read, predict and write a list of X-ray files in batches.

Per image ``<out>/<name>.json`` (:func:`mahtnet.predict.result.to_json`), ``<name>.png`` (overlay)
and, on request, ``<name>.txt`` (ISBI format); for the run ``<out>/landmarks.csv`` (one row
per image and landmark). Every file is written atomically. A file that cannot be read or
predicted is reported on stderr (``error: <file>: <reason>``) and skipped; the run goes on,
and its exit status is 1 when any file failed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mahtnet.data.images import XRay, read_xray
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.decoding.trust import load_trust
from mahtnet.io import write_text
from mahtnet.predict.result import Prediction, isbi_text, predict_xrays, to_json

CSV_COLUMNS = ["image", "landmark", "x_px", "y_px", "x_mm", "y_mm", "confidence", "low_confidence"]
CALIBRATED = "expected_error_mm"  # a column and JSON field with --calibration
REFUSED_EXIT = 3  # exit status when some image was refused by its verdict and none failed


class PredictRun:
    """The reader of ``spec`` (loaded and checked by :func:`mahtnet.decoding.recipe.load_reader`)
    on files, ``batch_size`` at a time, written to ``out``: JSON, CSV, and on request ISBI text
    (``isbi_txt``) and the overlay pictures (``overlay``)."""

    def __init__(
        self,
        spec: ReaderSpec,
        out: Path,
        batch_size: int = 4,
        isbi_txt: bool = False,
        overlay: bool = True,
        force: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"--batch-size: must be at least 1, got {batch_size}")
        self.spec, self.out, self.batch_size = spec, Path(out), batch_size
        self.isbi_txt, self.overlay = isbi_txt, overlay
        self.reader = load_reader(spec, warn=True)
        self.trust, self.force = load_trust(spec), force
        self.refused: list[tuple[Path, str]] = []
        self.card = self.reader.backend.card
        self.calibration = self.reader.calibration
        self.failed: list[tuple[Path, str]] = []
        self.rows: list[dict] = []

    def run(self, files: Sequence[Path], names: Sequence[str]) -> int:
        """Predict every file; 0 when all succeeded, 1 when any failed, 3 (:data:`REFUSED_EXIT`)
        when none failed but some image was refused by its verdict."""
        bs = self.batch_size
        with tqdm(total=len(files), unit="image", desc="predict", disable=None) as bar:
            for start in range(0, len(files), bs):
                self._batch(files[start : start + bs], names[start : start + bs])
                bar.update(len(files[start : start + bs]))
        if self.rows:
            columns = CSV_COLUMNS + ([CALIBRATED] if self.calibration else [])
            csv = pd.DataFrame(self.rows, columns=columns).to_csv(index=False, float_format="%.3f")
            write_text(self.out / "landmarks.csv", csv)
        done = len(files) - len(self.failed)
        print(f"{done} of {len(files)} images predicted -> {self.out}", file=sys.stderr)
        if self.refused:
            print(
                f"{len(self.refused)} of {len(files)} images refused (see above; --force reads them)",
                file=sys.stderr,
            )
        if self.failed:
            print(f"error: {len(self.failed)} of {len(files)} images failed (see above)", file=sys.stderr)
        return 1 if self.failed else (REFUSED_EXIT if self.refused else 0)

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
            preds = predict_xrays(
                self.reader, [x for x, _ in good], self.spec.pixel_spacing_mm, self.trust, self.force
            )
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
        out = self.out
        doc = to_json(p, self.card)
        write_text(out / f"{name}.json", json.dumps(doc, indent=2) + "\n")
        if p.refused:  # the verdict only: no landmarks, no picture, no rows
            tqdm.write(f"refused: {p.xray.path}: {p.verdict}: {p.verdict_reason}", file=sys.stderr)
            self.refused.append((p.xray.path, p.verdict))
            return
        if p.verdict == "unusual":  # read and written, every landmark on the check-first list
            tqdm.write(f"unusual: {p.xray.path}: {p.verdict_reason}", file=sys.stderr)
        if self.isbi_txt:
            write_text(out / f"{name}.txt", isbi_text(p))
        if self.overlay:
            from mahtnet.predict.overlay import draw_overlay, write_overlay

            names = self.card.landmark_names
            write_overlay(out / f"{name}.png", draw_overlay(p.xray.pixels, p.landmarks, names, p.confidence))
        for row in doc["landmarks"]:
            self.rows.append({"image": str(p.xray.path), "landmark": row.pop("name"), **row})
