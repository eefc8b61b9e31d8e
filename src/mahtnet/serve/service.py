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

With the model card's ``trust`` block (:func:`mahtnet.decoding.trust.load_trust`), every image
gets ``mahtnet predict``'s verdict first: one the verdict refuses (rotated, not a lateral
cephalogram, too small) is a 422 whose body is the refused document (the verdict and no
landmarks) with the one-line ``error``, unless it is read anyway (``force``: marked ``forced``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import math
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import HTTPException

from mahtnet import clinical
from mahtnet.data.images import DataError, image_size, read_xray
from mahtnet.decoding.recipe import (
    CARD_NAME,
    DECODING_NAMES,
    FILE_FIELDS,
    LOW_CONFIDENCE,
    ReaderSpec,
    load_reader,
    read_card,
)
from mahtnet.decoding.trust import load_trust
from mahtnet.predict.result import measurement_report, predict_xrays, to_json

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
    reason that names the culprit (the upload, the parameter, the limit); ``extra``: more fields
    of the error's JSON body, after ``error`` (e.g. a refused image's verdict)."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(status_code=status, detail=one_line(reason), headers=headers)
        self.extra = {k: v for k, v in (extra or {}).items() if k != "error"}


def refusal(doc: dict[str, Any], label: str) -> RequestError:
    """The 422 of an image its verdict refuses: ``<label>: refused: <verdict>: <reason>``, the
    body the refused document (``verdict``, ``verdict_reason``, ``image``, no landmarks)."""
    reason = f"{label}: refused: {doc['verdict']}: {doc['verdict_reason']} (force=true reads it anyway)"
    return RequestError(422, reason, extra=doc)


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
        self.spec = spec
        self.reader = load_reader(spec, warn=True)
        self.trust = load_trust(spec)  # None: no trust block, every verdict "unchecked"
        self.card = self.reader.backend.card
        self.served_name: str | None = None  # its name among the server's models (Models)
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
        self,
        path: Path,
        label: str,
        max_pixels: int,
        overlay: bool = False,
        image: bool = False,
        force: bool = False,
        refuse: bool = True,
    ) -> dict[str, Any]:
        """``mahtnet predict``'s document for one file, ``image`` set to ``label``; with
        ``overlay`` its picture (``overlay_png``), with ``image`` the 8-bit image the network
        read (``image_png``), both base64 PNG. An image the verdict refuses (not ``force``d) is
        a 422 with the refused document as its body (:func:`refusal`; ``image_png`` included
        when asked), or with ``refuse=False`` that document itself."""
        width, height = image_size(path)  # the header only: refuse a huge image undecoded
        if width * height > max_pixels:
            raise RequestError(
                413,
                f"{label}: {width}x{height} = {width * height} pixels is over the --max-pixels limit "
                f"of {max_pixels}",
            )
        xray = dataclasses.replace(read_xray(path), path=Path(label))
        pred = predict_xrays(self.reader, [xray], self.pixel_spacing, self.trust, force)[0]
        doc = to_json(pred, self.card)
        if image:
            doc["image_png"] = png_base64(xray.pixels)
        if pred.refused:
            if refuse:
                raise refusal(json_safe(doc), label)
            return json_safe(doc)
        if overlay:
            from mahtnet.predict.overlay import draw_overlay

            pic = draw_overlay(xray.pixels, pred.landmarks, self.card.landmark_names, pred.confidence)
            doc["overlay_png"] = png_base64(pic)
        return json_safe(doc)

    def predict_upload(
        self,
        data: bytes,
        kind: str,
        label: str,
        max_pixels: int,
        overlay: bool,
        image: bool,
        force: bool = False,
    ) -> dict[str, Any]:
        """:meth:`predict_file` on the bytes of an upload (a temporary file, deleted after);
        an image that cannot be read or predicted, or that its verdict refuses, is a 422 naming
        ``label``."""
        with tempfile.TemporaryDirectory(prefix="mahtnet-serve-") as tmp:
            path = Path(tmp) / f"upload{SUFFIX[kind]}"
            path.write_bytes(data)
            return self.guarded(
                path, label, lambda: self.predict_file(path, label, max_pixels, overlay, image, force)
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

    async def run(self, what: str, fn, *args, timeout_s: float | None = None):
        """``fn(*args)`` on a worker; ``timeout_s``: this job's limit (default ``--timeout-s``)."""
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
        limit = self.limits.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except asyncio.TimeoutError:
            future.cancel()  # a job still waiting is dropped; a running one finishes unseen
            which = "--timeout-s " if timeout_s is None else ""
            raise RequestError(504, f"{what}: no result within {which}{limit:g} s") from None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ----- the models a server may switch between, and adapting to the review's corrections ----------

RELEASE = "release"  # the released model (src/mahtnet/release/)
STARTUP = "startup"  # the model given at start when it is neither the release nor a folder of --models-dir
MODELS_DIR_NAME = ".mahtnet-models"  # the default --models-dir inside --review-dir (hidden: no X-rays)
ADAPT_TIMEOUT_S = 600.0  # an adaptation re-reads every corrected image: it may take longer than --timeout-s


def _resolved(spec: ReaderSpec) -> ReaderSpec:
    paths = {f: getattr(spec, f).resolve() for f in (*FILE_FIELDS, "card") if getattr(spec, f) is not None}
    return dataclasses.replace(spec, **paths)


def _files(card: dict) -> dict[str, str | None]:
    files = card.get("files") or {}
    return {n: (f.get("sha256") if isinstance(f, dict) else None) for n, f in files.items()}


class Models:
    """The served model, and the others the server may switch to by name: ``release``, each model
    folder of ``models_dir`` (an adaptation written by :meth:`adapt`, or one copied there), and
    ``startup`` (the model given at start, when it is neither). A name is looked up among these,
    never used as a path. Every model is read with the start's pixel spacing, device, threads and
    ``options`` (``--tta``); files given on the command line (``--shape-prior`` ...) belong to the
    start's model only.

    ``current`` is swapped in one assignment: a request takes it once when it starts and
    finishes with that model, whatever is switched meanwhile."""

    def __init__(
        self,
        current,
        spec: ReaderSpec | None = None,
        models_dir: Path | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.current = current
        self.spec = spec
        self.dir = None if models_dir is None else Path(models_dir).resolve()
        if self.dir is not None and self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"{models_dir}: --models-dir is not a folder")
        self.options = dict(options or {})
        self.startup_name = STARTUP if spec is None else self._name_of(spec)
        current.served_name = self.startup_name
        self._adapting = threading.Lock()

    @classmethod
    def start(cls, spec: ReaderSpec, models_dir: Path | None = None, options: dict | None = None) -> Models:
        return cls(Model(spec), spec, models_dir, options)

    # ----- names ----------------------------------------------------------------------------

    def folders(self) -> dict[str, Path]:
        """The model folders of ``models_dir`` by name (hidden ones, e.g. an adaptation being
        written, and ones called ``release`` or ``startup``, which name other models, skipped)."""
        if self.dir is None or not self.dir.is_dir():
            return {}
        return {
            p.name: p
            for p in sorted(self.dir.iterdir())
            if p.is_dir()
            and not p.name.startswith(".")
            and p.name not in (RELEASE, STARTUP)
            and (p / CARD_NAME).is_file()
        }

    def spec_of(self, name: str) -> ReaderSpec:
        """The recipe of a model by name; ``KeyError`` when there is none of that name."""
        if name == STARTUP and self.startup_name == STARTUP and self.spec is not None:
            return self.spec
        if self.spec is None:
            raise KeyError(name)
        options = {
            "device": self.spec.device,
            "threads": self.spec.threads,
            "pixel_spacing_mm": self.spec.pixel_spacing_mm,
        }
        if name == RELEASE:
            base = ReaderSpec.release(**options)
        else:
            folder = self.folders().get(name)
            if folder is None:
                raise KeyError(name)
            base = ReaderSpec.from_folder(folder, **options)
        return dataclasses.replace(base, **self.options)

    def _name_of(self, spec: ReaderSpec) -> str:
        for name in (RELEASE, *self.folders()):
            with contextlib.suppress(KeyError, OSError, ValueError):
                if _resolved(self.spec_of(name)) == _resolved(spec):
                    return name
        return STARTUP

    def names(self) -> list[str]:
        if self.spec is None:
            return []  # a model handed to create_app: nothing to switch to
        names = [STARTUP] if self.startup_name == STARTUP else []
        with contextlib.suppress(OSError, ValueError):
            ReaderSpec.release()
            names.append(RELEASE)
        return names + list(self.folders())

    def card_of(self, name: str) -> dict[str, Any]:
        spec = self.spec_of(name)
        return read_card(spec.card) if spec.card is not None else {"name": spec.model.name}

    def listing(self) -> dict[str, Any]:
        """``GET /models``: each model's name, card name and adaptation, and which is served."""
        models = []
        for name in self.names():
            entry: dict[str, Any] = {"name": name, "current": name == self.current.served_name}
            try:
                card = self.card_of(name)
                a = card.get("adaptation") if isinstance(card.get("adaptation"), dict) else None
                entry["label"] = card.get("name", name)
                entry["adaptation"] = None if a is None else _adaptation_summary(a)
                entry["base"] = (card.get("base") or {}).get("name") if a is not None else None
            except (KeyError, OSError, ValueError) as err:
                entry["error"] = self.unpathed(str(err))
            models.append(entry)
        return {
            "current": self.current.served_name,
            "models_dir": None if self.dir is None else self.dir.name,
            "models": models,
        }

    def unpathed(self, text: str, *roots: Path) -> str:
        """``text`` with this machine's folders (``models_dir``, ``roots``) as their names."""
        for root in [r for r in (self.dir, *roots) if r is not None]:
            text = text.replace(f"{root}/", "").replace(str(root), root.name)
        return one_line(text)

    # ----- switching ------------------------------------------------------------------------

    def load(self, name: str) -> Model:
        """The model of ``name``, loaded with every check of ``load_reader`` (in a worker); the
        caller makes it current (:meth:`use`)."""
        try:
            spec = self.spec_of(name)
        except KeyError:
            shown = "".join(ch for ch in name if ch.isprintable())[:200]
            known = ", ".join(self.names())
            raise RequestError(404, f"no model named {shown!r} (available: {known})") from None
        except (OSError, ValueError) as err:
            raise RequestError(422, f"{name}: {self.unpathed(str(err))}") from None
        try:
            model = Model(spec)
        except (OSError, ValueError, RuntimeError) as err:
            raise RequestError(422, f"{name}: {self.unpathed(str(err))}") from None
        model.served_name = name
        return model

    def use(self, model: Model) -> None:
        self.current = model  # one assignment: requests already running keep the model they took

    # ----- adapting -------------------------------------------------------------------------

    def base_of(self, model) -> tuple[str, ReaderSpec]:
        """The name and recipe (as ``mahtnet adapt`` reads a base folder) of the model an
        adaptation of the served ``model`` starts from: the model itself, or, when it is adapted,
        its base (found by its files' sha256 among the release, the start's model and the folders
        of ``models_dir``): adaptations are never stacked."""
        spec = getattr(model, "spec", None)
        if spec is None or spec.card is None:
            what = "this server's model" if spec is None else spec.model.name
            raise RequestError(
                422,
                f"the served model ({what}) is a single file, not a model folder: an adaptation starts "
                "from a model folder (serve the release, or --model FOLDER)",
            )
        card = read_card(spec.card)
        if spec.adaptation is None:
            return model.served_name, self._base_spec(spec.card)
        wanted = _files(card.get("base") or {})
        for name in self.names():
            with contextlib.suppress(KeyError, OSError, ValueError):
                other = self.spec_of(name)
                plain = other.adaptation is None and other.card is not None and bool(wanted)
                if plain and _files(read_card(other.card)) == wanted:
                    return name, self._base_spec(other.card)
        base = (card.get("base") or {}).get("name", "?")
        raise RequestError(
            422,
            f"the served model is adapted from {base!r}, which is neither the release nor a model folder "
            "of --models-dir: run mahtnet adapt with --model BASE_FOLDER",
        )

    def _base_spec(self, card: Path) -> ReaderSpec:
        """The base as ``mahtnet adapt --model FOLDER`` reads it (the folder's recipe)."""
        assert self.spec is not None
        return ReaderSpec.from_folder(card.parent, device=self.spec.device, threads=self.spec.threads)

    def display_dir(self, review_root: Path) -> str:
        """``models_dir`` as the adapt command names it, from the review folder's parent."""
        assert self.dir is not None
        if self.dir.is_relative_to(review_root):
            return (Path(review_root.name) / self.dir.relative_to(review_root)).as_posix()
        return self.dir.name

    def adapt_command(self, review_root: Path, corrections: int) -> dict[str, Any]:
        """The one command that adapts to the review's corrections (run from the review folder's
        parent), or why there is none."""
        out: dict[str, Any] = {"corrections": corrections, "command": None, "base": None, "reason": None}
        if self.dir is None:
            out["reason"] = "no --models-dir"
            return out
        try:
            base, _ = self.base_of(self.current)
        except RequestError as err:
            out["reason"] = err.detail
            return out
        where = self.display_dir(review_root)
        words = ["mahtnet", "adapt", review_root.name, "--out", f"{where}/adapted-k{max(corrections, 1)}"]
        if base == STARTUP and self.spec is not None and self.spec.card is not None:
            words += ["--model", self.spec.card.parent.name]  # its name only: no path of this machine
        elif base != RELEASE:
            words += ["--model", f"{where}/{base}"]
        if self.spec is not None and self.spec.pixel_spacing_mm is not None:
            words += ["--pixel-spacing", f"{self.spec.pixel_spacing_mm:g}"]
        out["base"], out["command"] = base, " ".join(_quoted_word(w) for w in words)
        return out

    def fresh_name(self, k: int) -> str:
        """``adapted-k<k>-<UTC time>``, with ``-2``, ``-3``... when taken: never an existing folder."""
        assert self.dir is not None
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name, n = f"adapted-k{k}-{stamp}", 1
        while (self.dir / name).exists():
            n += 1
            name = f"adapted-k{k}-{stamp}-{n}"
        return name

    def adapt(self, review_root: Path, method: str = "auto") -> dict[str, Any]:
        """``mahtnet adapt REVIEW_DIR --out MODELS_DIR/<fresh name> [--model BASE]`` in a worker:
        the same :func:`mahtnet.adapt.build.adapt`, from the served model's base. One at a time
        (409 while another runs); bad corrections are a 422 with adapt's one-line error."""
        from mahtnet.adapt.build import adapt_model
        from mahtnet.adapt.sources import find

        if self.dir is None:
            raise RequestError(404, "no --models-dir: this server cannot write an adapted model")
        if not self._adapting.acquire(blocking=False):
            raise RequestError(409, "an adaptation is already running; retry when it has finished")
        try:
            base_name, base = self.base_of(self.current)
            assert self.spec is not None
            spacing = self.spec.pixel_spacing_mm
            try:
                k = len(find(review_root, spacing))
                out = self.dir / self.fresh_name(k)
                card = adapt_model(review_root, base, out, method, spacing, base.threads)
            except KeyError as err:
                reason = str(err.args[0] if err.args else err)
                raise RequestError(422, self.unpathed(reason, review_root)) from None
            except (OSError, ValueError, RuntimeError) as err:  # DataError is a ValueError
                raise RequestError(422, self.unpathed(str(err), review_root)) from None
        finally:
            self._adapting.release()
        a = card["adaptation"]
        return json_safe(
            {
                "name": out.name,
                "label": card["name"],
                "base": base_name,
                "k": a["k"],
                "method": a["method"],
                "chosen_by": a.get("chosen_by"),
                "leave_one_out": a.get("leave_one_out"),
                "every_method": a.get("every_method"),
                "pixel_spacing_mm": a.get("pixel_spacing_mm"),
                "created_at": a.get("created_at"),
            }
        )


def _adaptation_summary(a: dict) -> dict[str, Any]:
    loo = a.get("leave_one_out") if isinstance(a.get("leave_one_out"), dict) else None
    return json_safe(
        {
            "method": a.get("method"),
            "k": a.get("k"),
            "created_at": a.get("created_at"),
            "leave_one_out_mre_mm": None if loo is None else loo.get("mre_mm"),
            "unadapted_mre_mm": None if loo is None else loo.get("unadapted_mre_mm"),
        }
    )


def _quoted_word(word: str) -> str:
    import shlex

    return shlex.quote(word)
