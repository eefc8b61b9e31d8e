"""``mahtnet serve``: load the recipe's files, build the application, run it on uvicorn (one
process; ``limits.workers`` threads predict, ``limits.queue`` more requests may wait). The
command line is parsed by :mod:`mahtnet.cli`."""

from __future__ import annotations

import sys
from pathlib import Path

from mahtnet.decoding.recipe import ReaderSpec
from mahtnet.serve.service import Limits


def serve(
    spec: ReaderSpec,
    limits: Limits,
    host: str = "127.0.0.1",
    port: int = 8000,
    review: tuple[Path, Path | None] | None = None,
    log_level: str = "info",
    models_dir: Path | None = None,
    options: dict | None = None,
) -> int:
    """Serve ``spec``'s reader on ``host:port``; ``review``: the folder of X-rays to review and
    where ``mahtnet predict`` wrote their predictions (None: next to the images);
    ``models_dir``: where adaptations are written and models to switch to are found (default
    with ``review``: ``<review dir>/.mahtnet-models``); ``options``: recipe fields every model
    switched to gets (``--tta``)."""
    import uvicorn

    from mahtnet.serve.app import create_app
    from mahtnet.serve.review import ReviewDir
    from mahtnet.serve.service import MODELS_DIR_NAME, Models

    if not 0 <= port <= 65535:
        raise ValueError(f"--port: must be 0..65535, got {port}")
    review_dir = ReviewDir(*review) if review else None
    if models_dir is None and review_dir is not None:
        models_dir = review_dir.root / MODELS_DIR_NAME
    models = Models.start(spec, models_dir, options)
    model = models.current
    app = create_app(model, limits, review_dir, models)
    url = f"http://{host}:{port}"
    print(
        f"mahtnet serve: {model.card.architecture} ({model.card.format}) {model.recipe['name']} "
        f"[{model.served_name}] on {url} (review page {url}/review, API docs {url}/docs)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    return 0
