"""``mahtnet serve``: an HTTP inference service and a review page in the browser.

* :mod:`mahtnet.serve.service` -- the model, loaded exactly as ``mahtnet predict`` loads it
  (:func:`mahtnet.decoding.recipe.load_reader`), an uploaded image checked and predicted through
  :func:`mahtnet.predict.result.predict_xrays` and :func:`mahtnet.predict.result.to_json` (one decoder, one
  document format), and the bounded worker pool.
* :mod:`mahtnet.serve.review` -- a folder of X-rays and their ``mahtnet predict`` outputs, the
  corrections made on the review page (saved atomically next to each image as
  ``<image>.corrected.json`` / ``<image>.corrected.txt``) and :func:`load_corrections`, which reads
  them back as an annotation set.
* :mod:`mahtnet.serve.app` -- the FastAPI application (routes, limits, one-line JSON errors).
* :mod:`mahtnet.serve.server` -- ``mahtnet serve`` (parsed by :mod:`mahtnet.cli`): load, build the
  app, run uvicorn.

See docs/serve.md.
"""

from __future__ import annotations

__all__ = ["Correction", "load_correction", "load_corrections"]


def __getattr__(name: str):  # lazy: importing the package loads no web framework
    if name in __all__:
        from mahtnet.serve import review

        return getattr(review, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
