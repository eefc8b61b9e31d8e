"""The ``mahtnet`` command (also ``python -m mahtnet``).

::

    mahtnet predict IMAGE_OR_FOLDER... --model data/models/stage3.pt|data/models/maht_net.onnx
        [--out DIR] [--pixel-spacing MM] [--device auto|cpu|cuda] [--batch-size N]
        [--shape-prior data/models/shape_prior.npz] [--refiner data/models/refine_maht_net.pt]
        [--tta] [--calibration FILE] [--isbi-txt] [--threads N]
    mahtnet serve --model ... [the model options of predict] [--host 127.0.0.1] [--port 8000]
        [--workers N] [--queue N] [--max-upload-mb MB] [--max-pixels N] [--timeout-s S]
        [--review-dir DIR]   (HTTP service and review page, docs/serve.md)
    mahtnet evaluate|export|benchmark ...   (mahtnet.commands: what the DVC stages run, same arguments)

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

WRAPPED = {  # mahtnet COMMAND -> the module whose main(argv) runs it (the DVC stage's too)
    "evaluate": "mahtnet.commands.evaluate",
    "export": "mahtnet.commands.export",
    "benchmark": "mahtnet.commands.benchmark",
}


def predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="landmarks of new X-rays (JPEG, PNG, BMP, TIFF, DICOM)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (walked recursively)")
    p.add_argument(
        "--model", type=Path, help="a checkpoint (.pt) or an exported .onnx (default: the released model)"
    )
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    p.add_argument("--pixel-spacing", type=float, help="mm per pixel; wins over the file's own (DICOM)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    p.add_argument("--shape-prior", type=Path, help="shape_prior stage model: shape-consistent decoding")
    p.add_argument(
        "--refiner", type=Path, help="train_refine checkpoint (.pt) or its .onnx export: coarse-to-fine"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: +/-2 px shifts, 5 forward passes (helps without a refiner)",
    )
    p.add_argument(
        "--calibration", type=Path, help="calibrate stage file: each landmark's expected error (mm)"
    )
    p.add_argument("--isbi-txt", action="store_true", help="also <name>.txt, the ISBI 19-line 'x,y' format")
    p.add_argument("--no-overlay", action="store_true", help="skip the <name>.png pictures")


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


def run_predict(args: argparse.Namespace) -> int:
    from mahtnet.predict.run import PredictRun

    files = list(iter_images(args.inputs))
    return PredictRun(args).run(files, output_names(files))


def run_command(args: argparse.Namespace) -> int:
    from mahtnet.release import use_release

    use_release(args)
    if args.command == "serve":
        from mahtnet.serve.server import run_serve

        return run_serve(args)
    return run_predict(args)


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
    from mahtnet.serve.server import add_parser as serve_parser

    serve_parser(sub)
    for name, script in WRAPPED.items():
        sub.add_parser(
            name, help=f"{script} (the DVC stage's command; --help for its arguments)", add_help=False
        )
    return run_cli(lambda: run_command(parser.parse_args([a for a in argv if a != "--debug"])), argv)


def entry() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
