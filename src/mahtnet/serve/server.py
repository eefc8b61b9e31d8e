"""``mahtnet serve``: load the model files, build the application, run it on uvicorn (one
process; ``--workers`` threads predict, ``--queue`` more requests may wait)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP inference service and review page (docs/serve.md)")
    # the model options of `mahtnet predict`
    p.add_argument(
        "--model", type=Path, help="a checkpoint (.pt) or an exported .onnx (default: the released model)"
    )
    p.add_argument("--pixel-spacing", type=float, help="mm per pixel; wins over the file's own (DICOM)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per prediction (0: the runtime's default)"
    )
    p.add_argument("--shape-prior", type=Path, help="shape_prior stage model: shape-consistent decoding")
    p.add_argument("--refiner", type=Path, help="train_refine checkpoint: coarse-to-fine (PyTorch)")
    p.add_argument(
        "--calibration", type=Path, help="calibrate stage file: each landmark's expected error (mm)"
    )
    # the service
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="predictions running at once (threads)")
    p.add_argument("--queue", type=int, default=8, help="requests that may wait for a worker; more get a 503")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest request body (MiB)")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="largest image (width x height)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request limit, waiting included (504)")
    p.add_argument("--review-dir", type=Path, help="a folder of X-rays (and their predict outputs) to review")
    p.add_argument(
        "--review-predictions",
        type=Path,
        help="where `mahtnet predict --out` wrote them (default: next to the images)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mahtnet.serve.app import create_app
    from mahtnet.serve.review import ReviewDir
    from mahtnet.serve.service import Limits, Model

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: must be 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb: must be positive, got {args.max_upload_mb}")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_pixels=args.max_pixels,
        timeout_s=args.timeout_s,
        workers=args.workers,
        queue=args.queue,
    )
    review = ReviewDir(args.review_dir, args.review_predictions) if args.review_dir else None
    model = Model(
        args.model,
        args.device,
        args.threads,
        args.shape_prior,
        args.refiner,
        args.calibration,
        args.pixel_spacing,
    )
    app = create_app(model, limits, review)
    url = f"http://{args.host}:{args.port}"
    print(
        f"mahtnet serve: {model.card.architecture} ({model.card.format}) {args.model} on {url} "
        f"(review page {url}/review, API docs {url}/docs)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
