"""The ``mahtnet`` command (also ``python -m mahtnet``).

::

    mahtnet predict IMAGE_OR_FOLDER... [--model MODEL_FOLDER|data/models/stage3.pt|data/models/maht_net.onnx]
        [--out DIR] [--pixel-spacing MM] [--device auto|cpu|cuda] [--batch-size N]
        [--shape-prior data/models/shape_prior.npz] [--refiner data/models/refine_maht_net.pt]
        [--tta] [--calibration FILE] [--isbi-txt] [--threads N]
    mahtnet serve [--model ...] [the model options of predict] [--host 127.0.0.1] [--port 8000]
        [--workers N] [--queue N] [--max-upload-mb MB] [--max-pixels N] [--timeout-s S]
        [--review-dir DIR]   (HTTP service and review page, docs/serve.md)
    mahtnet adapt CORRECTIONS_DIR --out MODEL_FOLDER [--model BASE] [--method auto|mean|shrunk|...]
        [--pixel-spacing MM]   (a clinic's conventions from its corrections, docs/adaptation.md)
    mahtnet evaluate|export|benchmark ...   (mahtnet.commands: what the DVC stages run, same arguments)

The model options become one recipe (:func:`reader_spec`, a
:class:`mahtnet.decoding.recipe.ReaderSpec`); without ``--model``, the released model's.
Errors end in one line, ``error: <file or key>: <reason>`` (``--debug`` or
``MAHTNET_DEBUG=1``: the traceback). In a folder run, a bad file is reported and skipped,
the others are processed, and the exit status is 1 at the end. See docs/predict.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mahtnet.decoding.recipe import ReaderSpec

WRAPPED = {  # mahtnet COMMAND -> the module whose main(argv) runs it (the DVC stage's too)
    "evaluate": "mahtnet.commands.evaluate",
    "export": "mahtnet.commands.export",
    "benchmark": "mahtnet.commands.benchmark",
}


def add_reader_options(p: argparse.ArgumentParser) -> None:
    """The model and its decoding, as ``predict`` and ``serve`` take them: :func:`reader_spec`
    turns them into the recipe."""
    from mahtnet.decoding.recipe import TTA_SHIFTS_PX

    p.add_argument(
        "--model",
        type=Path,
        help="a model folder (card.json and its files), a checkpoint (.pt) or an exported .onnx "
        "(default: the released model)",
    )
    p.add_argument("--pixel-spacing", type=float, help="mm per pixel; wins over the file's own (DICOM)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    p.add_argument("--shape-prior", type=Path, help="shape_prior stage model: shape-consistent decoding")
    p.add_argument(
        "--refiner", type=Path, help="train_refine checkpoint (.pt) or its .onnx export: coarse-to-fine"
    )
    shifts = "/".join(f"{s:g}" for s in TTA_SHIFTS_PX)
    p.add_argument(
        "--tta",
        action="store_true",
        help=f"test-time augmentation: +/-{shifts} px shifts, {1 + 4 * len(TTA_SHIFTS_PX)} forward passes "
        "(helps without a refiner)",
    )
    p.add_argument(
        "--calibration", type=Path, help="calibrate stage file: each landmark's expected error (mm)"
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="an ensemble (the release: three seeds) read by its first network only: about 3x faster, "
        "less accurate (docs/ensemble_choice.md)",
    )


def reader_spec(args: argparse.Namespace) -> ReaderSpec:
    """The one place a command line becomes a :class:`~mahtnet.decoding.recipe.ReaderSpec`:
    ``--model`` a folder (its card's recipe), a file, or none (the release); the files the
    command names win over the folder's; an ensemble's further members are dropped with
    ``--single`` or where the command names its own refiner (it fits one network)."""
    import dataclasses

    from mahtnet.decoding.recipe import TTA_SHIFTS_PX, ReaderSpec

    if args.model is None:
        base = ReaderSpec.release()
    elif args.model.is_dir():
        base = ReaderSpec.from_folder(args.model)
    else:
        base = ReaderSpec(args.model)
    return dataclasses.replace(
        base,
        shape_prior=args.shape_prior or base.shape_prior,
        refiner=args.refiner or base.refiner,
        calibration=args.calibration or base.calibration,
        tta_shifts_px=TTA_SHIFTS_PX if args.tta else base.tta_shifts_px,
        pixel_spacing_mm=args.pixel_spacing,
        device=args.device,
        threads=args.threads,
        members=() if getattr(args, "single", False) or args.refiner else base.members,
    )


def predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="landmarks of new X-rays (JPEG, PNG, BMP, TIFF, DICOM)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (walked recursively)")
    add_reader_options(p)
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--isbi-txt", action="store_true", help="also <name>.txt, the ISBI 19-line 'x,y' format")
    p.add_argument("--no-overlay", action="store_true", help="skip the <name>.png pictures")
    p.add_argument(
        "--force",
        action="store_true",
        help="read images the verdict refuses (rotated, not a cephalogram, too small) anyway, marked forced",
    )


def serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP inference service and review page (docs/serve.md)")
    add_reader_options(p)
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
    p.add_argument(
        "--models-dir",
        type=Path,
        help="where the review page's adaptations are written (a new folder each) and the models to "
        "switch to are found (default with --review-dir: REVIEW_DIR/.mahtnet-models)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def adapt_parser(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="learn a clinic's conventions from its corrections: an adapted model folder",
    )
    p.add_argument(
        "corrections",
        type=Path,
        help="a folder of the review page's <image>.corrected.json files, or of images with ISBI <stem>.txt",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the adapted model folder to write (must not exist)"
    )
    p.add_argument("--model", type=Path, help="the base model folder (default: the released model)")
    p.add_argument(
        "--method",
        default="auto",
        help="auto (leave-one-out on the corrections), mean, shrunk, frame-mean or frame-shrunk",
    )
    p.add_argument(
        "--pixel-spacing", type=float, help="mm per pixel of the corrected images (ISBI .txt input)"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")


def run_adapt(args: argparse.Namespace) -> int:
    """``mahtnet adapt``: the base model re-reads every corrected image (its positions must be
    those the review file recorded), then the conventions are fitted and the folder written."""
    from mahtnet.adapt.build import adapt_model
    from mahtnet.decoding.recipe import ReaderSpec

    base = ReaderSpec.release() if args.model is None else ReaderSpec.from_folder(args.model)
    card = adapt_model(args.corrections, base, args.out, args.method, args.pixel_spacing, args.threads)
    a = card["adaptation"]
    loo = a["leave_one_out"]
    figure = "" if loo is None else f"; leave-one-out MRE {loo['mre_mm']:.3f} mm"
    figure += "" if loo is None else f" (unadapted {loo['unadapted_mre_mm']:.3f})"
    print(
        f"{a['k']} corrected images, method {a['method']} (chosen by {a['chosen_by']}){figure} -> {args.out}"
    )
    return 0


def iter_images(inputs: Sequence[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for X-ray suffixes (sorted). A missing
    input or a folder without images is an error."""
    from mahtnet.data.images import XRAY_SUFFIXES

    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in XRAY_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: no images in this folder ({', '.join(XRAY_SUFFIXES)})")
            yield from found
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per input: its stem, made unique with ``-2``, ``-3``... on a clash."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        names.append(p.stem if seen[p.stem] == 1 else f"{p.stem}-{seen[p.stem]}")
    return names


def run_predict(args: argparse.Namespace, spec: ReaderSpec) -> int:
    from mahtnet.predict.run import PredictRun

    files = list(iter_images(args.inputs))
    run = PredictRun(
        spec, args.out, args.batch_size, args.isbi_txt, overlay=not args.no_overlay, force=args.force
    )
    return run.run(files, output_names(files))


def run_serve(args: argparse.Namespace, spec: ReaderSpec) -> int:
    from mahtnet.decoding.recipe import TTA_SHIFTS_PX
    from mahtnet.serve.server import serve
    from mahtnet.serve.service import Limits

    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb: must be positive, got {args.max_upload_mb}")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_pixels=args.max_pixels,
        timeout_s=args.timeout_s,
        workers=args.workers,
        queue=args.queue,
    )
    review = (args.review_dir, args.review_predictions) if args.review_dir else None
    options = {"tta_shifts_px": TTA_SHIFTS_PX} if args.tta else {}  # every model served gets --tta
    return serve(spec, limits, args.host, args.port, review, args.log_level, args.models_dir, options)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "adapt":
        return run_adapt(args)
    spec = reader_spec(args)
    return (run_serve if args.command == "serve" else run_predict)(args, spec)


def run_wrapped(command: str, argv: Sequence[str]) -> int:
    """``mahtnet evaluate|export|benchmark ARGS``: the library command with ``ARGS`` (0 after
    ``--help``)."""
    import importlib

    try:
        importlib.import_module(WRAPPED[command]).main(list(argv))
    except SystemExit as done:  # argparse's --help and usage errors
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from mahtnet.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in WRAPPED:
        return run_cli(lambda: run_wrapped(argv[0], argv[1:]), argv)
    parser = argparse.ArgumentParser(prog="mahtnet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    predict_parser(sub)
    serve_parser(sub)
    adapt_parser(sub)
    for name, script in WRAPPED.items():
        sub.add_parser(
            name, help=f"{script} (the DVC stage's command; --help for its arguments)", add_help=False
        )
    return run_cli(lambda: run_command(parser.parse_args([a for a in argv if a != "--debug"])), argv)


def entry() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
