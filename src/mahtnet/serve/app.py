"""The FastAPI application of ``mahtnet serve`` (endpoints: docs/serve.md).

Every refused request gets a 4xx (503 busy, 504 timed out) with a one-line JSON body
``{"error": "<reason naming the culprit>"}`` (an image its verdict refuses: a 422 whose body
also holds the verdict, :func:`mahtnet.serve.service.refusal`); an unexpected failure a 500
with the same kind of body and no traceback (the traceback goes to the server's log). The
service keeps no state but the model it serves (switched by ``POST /model/use``): the review
page's corrections are files next to the images of ``--review-dir``, and the models adapted to
them (``POST /review/adapt``) new folders of ``--models-dir``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mahtnet.serve.review import (
    ReviewDir,
    as_points,
    correction_csv,
    correction_document,
    isbi_txt,
    refused,
    relative,
    save_correction,
)
from mahtnet.serve.service import (
    ADAPT_TIMEOUT_S,
    Limits,
    Models,
    Pool,
    RequestError,
    measurements_of,
    one_line,
    safe_label,
    upload_kind,
)

STATIC = Path(__file__).parent / "static"
DRAIN_FACTOR = 16  # a body up to this many times the limit is read (and dropped) before the 413
EXPORT_TYPES = {"json": "application/json", "csv": "text/csv", "txt": "text/plain"}


class LandmarksIn(BaseModel):
    """19 landmarks ``[x, y]`` in original pixels (ISBI order) and the pixel spacing, if known."""

    landmarks: list[tuple[float, float]]
    pixel_spacing_mm: float | None = Field(None, gt=0)


class CorrectionIn(LandmarksIn):
    """Corrected landmarks and what the page knows about their image and prediction."""

    image: str = "upload"
    pixel_spacing_source: str | None = None
    width_px: int | None = None
    height_px: int | None = None
    predicted: list[tuple[float, float]] | None = None
    model: dict[str, Any] | None = None
    decoding: str | None = None


class AdaptIn(BaseModel):
    """``POST /review/adapt``: the method, as ``mahtnet adapt --method``."""

    method: str = Field("auto", max_length=40)


class UseIn(BaseModel):
    """``POST /model/use``: a name of ``GET /models``."""

    name: str = Field(..., max_length=300)


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over the limit gets a 413 before the
    application sees it. Its body is read and dropped first (up to :data:`DRAIN_FACTOR` times the
    limit), so that a client still sending receives the answer instead of a reset connection."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            return await self.app(scope, receive, send)
        try:
            size = int(length)
        except ValueError:
            return await _json(send, 400, f"Content-Length {length[:40]!r}: not a number")
        if size <= self.limit:
            return await self.app(scope, receive, send)
        if size <= DRAIN_FACTOR * self.limit:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False) and message["type"] == "http.request"
        await _json(send, 413, f"body of {size} bytes is over the {limit_text(self.limit)}")


def limit_text(limit: int) -> str:
    return f"--max-upload-mb limit ({limit / (1 << 20):.3g} MiB = {limit} bytes)"


async def _json(send, status: int, reason: str) -> None:
    response = JSONResponse({"error": one_line(reason)}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond; chunked bodies are counted as they come)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over the {limit_text(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


def _location(loc: tuple) -> str:
    where, *rest = loc or ("request",)
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    if where == "query":
        return f"query parameter '{path}'"
    if where == "body":
        return f"body{'.' + path if path and not path.startswith('[') else path}"
    return f"{where} {path}".strip()


def create_app(
    model, limits: Limits, review: ReviewDir | None = None, models: Models | None = None
) -> FastAPI:
    """The application around ``model`` (a :class:`mahtnet.serve.service.Model`, or anything with
    its ``card``, ``describe``, ``predict_upload``, ``predict_file`` and ``display_image``);
    ``models``: the models it may switch to (:class:`mahtnet.serve.service.Models`, whose
    ``current`` is ``model``; None: ``model`` only). Each request takes the current model once."""
    from fastapi_offline import FastAPIOffline  # Swagger UI served from the package, no CDN

    models = Models(model) if models is None else models
    pool = Pool(limits)
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPIOffline(
        lifespan=lifespan,
        title="MAHT-Net landmark service",
        description="The 19 ISBI cephalometric landmarks of a lateral skull X-ray, as `mahtnet predict` "
        "gives them, and a review page (/review). See docs/serve.md.",
        version="1",
        redoc_url=None,
        static_url="/docs-static",
    )
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.pool = pool

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404 and exc.detail == "Not Found":
            reason = f"{where}: no such route (see /docs)"
        elif exc.status_code == 405:
            reason = f"{where}: method not allowed (see /docs)"
        else:
            reason = str(exc.detail)
        body = {"error": one_line(reason), **getattr(exc, "extra", {})}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        msg, where = first.get("msg", "invalid"), _location(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            loc = tuple(first.get("loc", ()))
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            msg, where = f"invalid JSON ({first.get('ctx', {}).get('error', msg)}{at})", "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"error": one_line(f"{where}: {msg}{more}")}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # a bug, not bad input: one line to the client, the traceback in the server log
        reason = f"internal error in {request.method} {request.url.path}: {type(exc).__name__}: {exc}"
        return JSONResponse({"error": one_line(reason)}, 500)

    @app.get("/", include_in_schema=False)
    def index():
        return RedirectResponse("/review")

    @app.get("/health", summary="Liveness and load")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_sha256": models.current.card.sha256,
            "in_flight": pool.in_flight,
            "capacity": pool.capacity,
            "uptime_s": round(time.time() - started, 3),
        }

    @app.get("/model", summary="The model card and the prediction options")
    def model_card() -> dict[str, Any]:
        m = models.current
        return {
            **m.describe(),
            "serving": m.served_name,
            "limits": limits.to_dict(),
            "review_dir": review is not None,
        }

    @app.get("/models", summary="The models this server can switch to (POST /model/use)")
    def model_list() -> dict[str, Any]:
        return models.listing()

    @app.post("/model/use", summary="Serve another model of GET /models (later requests)")
    async def model_use(body: UseIn) -> dict[str, Any]:
        slow = max(limits.timeout_s, ADAPT_TIMEOUT_S)  # loading a model is no prediction
        m = await pool.run(body.name, models.load, body.name, timeout_s=slow)
        models.use(m)
        return {"serving": m.served_name, "recipe": m.recipe}

    @app.post(
        "/predict",
        summary="Landmarks of one X-ray: the JSON of `mahtnet predict`",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in (
                        "image/jpeg",
                        "image/png",
                        "image/tiff",
                        "image/bmp",
                        "application/dicom",
                        "application/octet-stream",
                    )
                },
            }
        },
    )
    async def predict(
        request: Request,
        overlay: bool = Query(
            False, description="add `overlay_png`: the picture of `mahtnet predict` (base64 PNG)"
        ),
        image: bool = Query(
            False, description="add `image_png`: the 8-bit image the network read (base64 PNG)"
        ),
        name: str | None = Query(None, max_length=1000, description="the file name reported as `image`"),
        force: bool = Query(
            False,
            description="read an image the verdict refuses (rotated, not a lateral cephalogram, too small) "
            "anyway: a 200 marked `forced`, the verdict kept",
        ),
    ) -> dict[str, Any]:
        """The image file's bytes as the raw request body, with its Content-Type (image/jpeg,
        image/png, image/tiff, image/bmp, application/dicom, or application/octet-stream).
        An image the verdict refuses is a 422 whose body has the one-line `error`, the
        `verdict`, `verdict_reason`, `image` and no landmarks (`force=true` reads it anyway)."""
        data = await read_body(request, limits.max_upload_bytes)
        kind = upload_kind(data, request.headers.get("content-type"), name or "body")
        label = safe_label(name, kind)
        m = models.current
        args = (data, kind, label, limits.max_pixels, overlay, image, force)
        return await pool.run(label, m.predict_upload, *args)

    @app.post("/measurements", summary="The ISBI task-2 measurements of 19 landmarks")
    def measurements(body: LandmarksIn) -> dict[str, Any]:
        points = _points(body.landmarks, "body.landmarks")
        return {"measurements": measurements_of(points, body.pixel_spacing_mm)}

    def document(body: CorrectionIn, image: str | None = None) -> dict[str, Any]:
        predicted = None if body.predicted is None else _points(body.predicted, "body.predicted")
        return correction_document(
            image or safe_label(body.image, "PNG"),
            _points(body.landmarks, "body.landmarks"),
            body.pixel_spacing_mm,
            body.pixel_spacing_source,
            body.width_px,
            body.height_px,
            predicted,
            body.model,
            body.decoding,
        )

    @app.post("/export", summary="Corrected landmarks as a file: ISBI x,y text, JSON or CSV")
    def export(body: CorrectionIn, format: str = Query("json", pattern="^(json|csv|txt)$")):
        doc = document(body)
        if format == "json":
            import json

            text = json.dumps(doc, indent=2) + "\n"
        elif format == "csv":
            text = correction_csv(doc)
        else:
            text = isbi_txt(np.array([[r["x_px"], r["y_px"]] for r in doc["landmarks"]]))
        filename = f"{doc['image']}.corrected.{format}"
        headers = {"Content-Disposition": f'attachment; filename="{_quoted(filename)}"'}
        return PlainTextResponse(text, media_type=EXPORT_TYPES[format], headers=headers)

    # ----- the review page --------------------------------------------------------------------

    @app.get("/review", include_in_schema=False)
    def review_page():
        return FileResponse(STATIC / "review.html", media_type="text/html")

    def review_dir() -> ReviewDir:
        if review is None:
            raise RequestError(404, "no --review-dir: this server reviews uploaded images only")
        return review

    def review_image(item_id: str) -> Path:
        try:
            return review_dir().image(item_id)
        except KeyError:
            raise RequestError(404, f"{item_id}: no such image in --review-dir") from None

    @app.get("/review/items", summary="The images of --review-dir")
    def review_items() -> dict[str, Any]:
        if review is None:
            return {"review_dir": None, "items": [], "adapt": None}
        items = review.summary()
        corrected = sum(item["corrected"] for item in items)
        return {
            "review_dir": review.root.name,
            "items": items,
            "adapt": models.adapt_command(review.root, corrected),
        }

    @app.post("/review/adapt", summary="Adapt the served model's base to the corrections of --review-dir")
    async def review_adapt(body: AdaptIn | None = None) -> dict[str, Any]:
        rd = review_dir()
        corrected = sum(item["corrected"] for item in rd.summary())
        if corrected < 1:
            raise RequestError(
                422, f"no corrections saved in {rd.root.name} yet: correct an image and save it first"
            )
        method = "auto" if body is None else body.method
        return await pool.run(
            "adaptation", models.adapt, rd.root, method, timeout_s=max(limits.timeout_s, ADAPT_TIMEOUT_S)
        )

    @app.get("/review/item", summary="One image of --review-dir: its prediction and correction")
    async def review_item(
        id: str = Query(..., max_length=4000),
        force: bool = Query(False, description="read an image the verdict refuses anyway (marked `forced`)"),
    ) -> dict[str, Any]:
        """An image the verdict refuses is answered too (200): its prediction has the verdict
        and no landmarks, unless ``force``."""
        rd = review_dir()
        path = review_image(id)
        m = models.current
        # mahtnet predict's file is the start's model's: another served model predicts now
        prediction = rd.prediction(path) if m.served_name == models.startup_name else None
        if force and prediction is not None and refused(prediction):
            prediction = None  # the file holds the refusal: read it anyway, now
        source = "file" if prediction is not None else "model"
        if prediction is None:  # predicted now, not saved (the service writes corrections only)
            prediction = await pool.run(
                id,
                m.guarded,
                path,
                id,
                lambda: m.predict_file(path, id, limits.max_pixels, force=force, refuse=False),
            )
        from mahtnet.serve.review import correction_paths, load_correction

        correction = None
        if correction_paths(path)[0].is_file():
            try:
                c = load_correction(path)
                correction = {"landmarks": c.landmarks.tolist(), "moved": c.moved.tolist()}
            except ValueError as err:
                raise RequestError(422, str(err)) from None
        prediction = {**prediction, "image": id}
        return {
            "id": id,
            "prediction": prediction,
            "prediction_source": source,
            "prediction_file": relative([rd.prediction_path(path)], rd.predictions or rd.root)[0]
            if source == "file"
            else None,
            "correction": correction,
        }

    @app.get("/review/image", summary="One image of --review-dir as the network reads it (8-bit PNG)")
    async def review_image_png(id: str = Query(..., max_length=4000)):
        path = review_image(id)
        data = await pool.run(id, models.current.display_image, path, id, limits.max_pixels)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/review/correction", summary="Save corrected landmarks next to an image of --review-dir")
    def review_correction(body: CorrectionIn, id: str = Query(..., max_length=4000)) -> dict[str, Any]:
        rd = review_dir()
        path = review_image(id)
        doc = document(body, image=id)
        saved = save_correction(path, doc)
        return {"saved": relative(list(saved), rd.root), "document": doc}

    return app


def _points(values, what: str) -> np.ndarray:
    try:
        return as_points(values, what)
    except ValueError as err:
        raise RequestError(422, str(err)) from None


def _quoted(name: str) -> str:
    return "".join(ch if ch.isprintable() and ch not in '"\\' else "_" for ch in name)
