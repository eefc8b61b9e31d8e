"""The model behind ``mahtnet serve`` and the checks an uploaded image goes through.

The model files are loaded by :func:`mahtnet.decoding.recipe.load_reader` from the recipe
``mahtnet predict`` would get from the same options (backend, shape prior, refiner, calibration
and every check of them), and an image is predicted by
:func:`mahtnet.predict.result.predict_xrays` and described by
:func:`mahtnet.predict.result.to_json`: the service's JSON is ``mahtnet predict``'s ``<name>.json``
for the same file and model (only ``image`` differs: the upload's name instead of a path).

An upload is written to a private temporary folder (deleted after the request) and read by
:func:`mahtnet.data.images.read_xray`, the reader of ``mahtnet predict``; before that, its
header gives the size, and an image over ``max_pixels`` is refused without being decoded.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import HTTPException

from mahtnet.analysis import clinical
from mahtnet.data.images import DataError, image_size, read_xray
from mahtnet.decoding.recipe import DECODING_NAMES, ReaderSpec, load_reader
from mahtnet.predict.result import LOW_CONFIDENCE, measurement_report, predict_xrays, to_json

# The request body's format, from its first bytes (DICOM: "DICM" after a 128-byte preamble).
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "DICOM": ".dcm"}
MAGIC = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
# Content-Type -> the format it promises (None: any, told by the bytes).
CONTENT_TYPES: dict[str, str | None] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
    "image/tif": "TIFF",
    "application/dicom": "DICOM",
    "application/octet-stream": None,
}
FORMATS = "JPEG, PNG, BMP, TIFF or DICOM"


class RequestError(HTTPException):
    """A request the service refuses: ``status`` 4xx (5xx: busy or timed out) and a one-line
    reason that names the culprit (the upload, the parameter, the limit)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=one_line(reason), headers=headers)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@dataclasses.dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 64 << 20
    max_pixels: int = 50_000_000
    timeout_s: float = 60.0
    workers: int = 1
    queue: int = 8

    def __post_init__(self):
        checks = {
            "--max-upload-mb": (self.max_upload_bytes >= 1, "must be positive"),
            "--max-pixels": (self.max_pixels >= 1, "must be positive"),
            "--timeout-s": (self.timeout_s > 0 and math.isfinite(self.timeout_s), "must be positive"),
            "--workers": (self.workers >= 1, "must be at least 1"),
            "--queue": (self.queue >= 0, "must be at least 0"),
        }
        for option, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"{option}: {rule}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_upload_mb": self.max_upload_bytes / (1 << 20),
            "max_pixels": self.max_pixels,
            "timeout_s": self.timeout_s,
            "workers": self.workers,
            "queue": self.queue,
        }


def content_kind(content_type: str | None) -> str | None:
    """The format a Content-Type promises (None: application/octet-stream, any); 415 otherwise."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in CONTENT_TYPES:
        return CONTENT_TYPES[media]
    allowed = ", ".join(k for k in CONTENT_TYPES if k not in ("image/jpg", "image/pjpeg", "image/tif"))
    if not media:
        raise RequestError(
            415, f"Content-Type missing: send the image file as the body with one of {allowed}"
        )
    if media.startswith("multipart/"):
        raise RequestError(
            415, f"Content-Type {media}: send the image file's bytes as the raw body, not a form ({allowed})"
        )
    raise RequestError(415, f"Content-Type {media} is not an image type; use one of {allowed}")


def sniff(data: bytes) -> str | None:
    """``JPEG``, ``PNG``, ``BMP``, ``TIFF`` or ``DICOM`` from the first bytes; None otherwise."""
    if data[128:132] == b"DICM":
        return "DICOM"
    for kind, magics in MAGIC.items():
        if data.startswith(magics):
            return kind
    return None


def upload_kind(data: bytes, content_type: str | None, label: str) -> str:
    """The format of an upload, checked against its Content-Type (415 / 400 / 422 otherwise)."""
    declared = content_kind(content_type)
    if not data:
        raise RequestError(400, "empty body: send the image file's bytes as the request body")
    kind = sniff(data)
    if kind is None and declared == "DICOM":
        kind = "DICOM"  # a DICOM file without the preamble: pydicom decides
    if kind is None:
        raise RequestError(422, f"{label}: not a {FORMATS} image (first bytes {data[:8]!r})")
    if declared is not None and declared != kind:
        raise RequestError(415, f"{label}: Content-Type {content_type} but the body is a {kind} image")
    return kind


def safe_label(name: str | None, kind: str) -> str:
    """The name an upload is called by in the JSON (``image``) and in errors: the base name of
    ``?name=`` (printable characters, at most 200), else ``upload.<suffix>``."""
    if name:
        base = "".join(ch for ch in name.replace("\\", "/").split("/")[-1] if ch.isprintable())[:200]
        if base.strip(". "):
            return base
    return f"upload{SUFFIX[kind]}"


def png_base64(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode a PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def json_safe(obj: Any) -> Any:
    """A copy with non-finite floats as None (strict JSON; ``mahtnet predict`` writes NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class Model:
    """The reader of a recipe (as ``mahtnet predict`` loads it) and one image through it."""

    def __init__(self, spec: ReaderSpec):
        self.reader = load_reader(spec, warn=True)
        self.card = self.reader.backend.card
        self.pixel_spacing = spec.pixel_spacing_mm
        self.recipe = spec.describe()  # names and sha256 of the files: no path of this machine

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` says: the model card (as in every prediction, its file by name),
        the recipe and the options."""
        from mahtnet.predict.overlay import MEASUREMENT_LINES

        files = {k: v["file"] for k, v in self.recipe["files"].items()}
        named = {k: files.get(k) for k in ("shape_prior", "refiner", "calibration")}
        return {
            "model": {**self.card.to_dict(), "file": files["model"]},
            "recipe": self.recipe,
            **named,
            "pixel_spacing_mm": self.pixel_spacing,
            "low_confidence_threshold": LOW_CONFIDENCE[DECODING_NAMES[self.reader.variants()[-1]]],
            "landmark_names": list(self.card.landmark_names),
            "measurements": list(clinical.MEASUREMENTS),
            "measurement_lines": sorted({tuple(p) for pairs in MEASUREMENT_LINES.values() for p in pairs}),
        }

    def predict_file(
        self, path: Path, label: str, max_pixels: int, overlay: bool = False, image: bool = False
    ) -> dict[str, Any]:
        """``mahtnet predict``'s document for one file, ``image`` set to ``label``; with
        ``overlay`` its picture (``overlay_png``), with ``image`` the 8-bit image the network
        read (``image_png``), both base64 PNG."""
        width, height = image_size(path)  # the header only: refuse a huge image undecoded
        if width * height > max_pixels:
            raise RequestError(
                413,
                f"{label}: {width}x{height} = {width * height} pixels is over the --max-pixels limit "
                f"of {max_pixels}",
            )
        xray = dataclasses.replace(read_xray(path), path=Path(label))
        pred = predict_xrays(self.reader, [xray], self.pixel_spacing)[0]
        doc = to_json(pred, self.card)
        if overlay:
            from mahtnet.predict.overlay import draw_overlay

            pic = draw_overlay(xray.pixels, pred.landmarks, self.card.landmark_names, pred.confidence)
            doc["overlay_png"] = png_base64(pic)
        if image:
            doc["image_png"] = png_base64(xray.pixels)
        return json_safe(doc)

    def predict_upload(
        self, data: bytes, kind: str, label: str, max_pixels: int, overlay: bool, image: bool
    ) -> dict[str, Any]:
        """:meth:`predict_file` on the bytes of an upload (a temporary file, deleted after);
        an image that cannot be read or predicted is a 422 naming ``label``."""
        with tempfile.TemporaryDirectory(prefix="mahtnet-serve-") as tmp:
            path = Path(tmp) / f"upload{SUFFIX[kind]}"
            path.write_bytes(data)
            return self.guarded(
                path, label, lambda: self.predict_file(path, label, max_pixels, overlay, image)
            )

    @staticmethod
    def guarded(path: Path, label: str, work):
        """``work()``; the expected errors of reading and predicting one image become a 422
        naming ``label`` (never the temporary path)."""
        try:
            return work()
        except (DataError, ValueError, OSError, RuntimeError, KeyError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            message = one_line(str(message).replace(str(path), label))
            if not message.startswith(label):
                message = f"{label}: {message}"
            raise RequestError(422, message) from None

    def display_image(self, path: Path, label: str, max_pixels: int) -> bytes:
        """The 8-bit image the network reads, as PNG bytes (what the review page shows)."""

        def work() -> bytes:
            width, height = image_size(path)
            if width * height > max_pixels:
                raise RequestError(413, f"{label}: {width}x{height} pixels is over --max-pixels {max_pixels}")
            ok, data = cv2.imencode(".png", read_xray(path).pixels)
            if not ok:
                raise ValueError("could not encode a PNG")
            return data.tobytes()

        return self.guarded(path, label, work)


def measurements_of(landmarks: np.ndarray, spacing_mm: float | None) -> dict[str, dict]:
    """:func:`mahtnet.predict.result.measurement_report` (the one implementation) as strict JSON."""
    return json_safe(measurement_report(landmarks, spacing_mm))


class Pool:
    """A fixed number of worker threads (``workers``) and a bounded number of requests waiting for
    one (``queue``). A request beyond ``workers + queue`` is refused at once with a 503; one
    without a result after ``timeout_s`` (waiting included) gets a 504. A job that times out
    while running cannot be stopped (Python threads): it keeps its slot until it ends, so the
    bound holds."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="mahtnet-serve")
        self.capacity = limits.workers + limits.queue
        self.in_flight = 0  # changed on the event loop only

    def _release(self) -> None:
        self.in_flight -= 1

    async def run(self, what: str, fn, *args):
        import asyncio

        if self.in_flight >= self.capacity:
            raise RequestError(
                503,
                f"busy: {self.in_flight} requests in progress (--workers {self.limits.workers} + "
                f"--queue {self.limits.queue}); retry later",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        self.in_flight += 1

        def done(_: Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown)
                loop.call_soon_threadsafe(self._release)

        future = self.executor.submit(fn, *args)
        future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # a job still waiting is dropped; a running one finishes unseen
            raise RequestError(
                504, f"{what}: no result within --timeout-s {self.limits.timeout_s:g} s"
            ) from None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
