"""One-line errors for the command-line entry points (``stages/*.py``, ``mahtnet``).

``run_cli(main)`` runs ``main()`` and returns what it returns; an exception becomes one line on
stderr, ``error: <message>``, and exit status 2 (``SystemExit``). The messages of the expected
errors (:data:`EXPECTED`, and ``mahtnet.models.checkpoint.CheckpointError``) already name the file or key,
so they are printed as they are; any other type is prefixed with its name
(``error: ZeroDivisionError: ...``), a hint that it is a bug rather than bad input. ``--debug`` on
the command line or ``MAHTNET_DEBUG=1`` in the environment re-raises instead, with the full
traceback. ``KeyboardInterrupt`` and ``SystemExit`` (argparse's usage errors among them) pass
through.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

# DataError (mahtnet.data.images) and ParamsError (mahtnet.config) are ValueErrors,
# FileNotFoundError is an OSError.
EXPECTED: tuple[type[Exception], ...] = (ValueError, OSError, KeyError)
EXIT_STATUS = 2
T = TypeVar("T")


def _expected(err: Exception) -> bool:
    if isinstance(err, EXPECTED):
        return True
    checkpoint = sys.modules.get("mahtnet.models.checkpoint")  # it imports torch; loaded if it raised
    return checkpoint is not None and isinstance(err, checkpoint.CheckpointError)


def error_line(err: Exception) -> str:
    """``error: <message>`` on one line (a multi-line message is joined with spaces)."""
    keyed = isinstance(err, KeyError) and len(err.args) == 1
    message = str(err.args[0]) if keyed else str(err)  # str(KeyError) is the quoted repr
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if not _expected(err):
        message = f"{type(err).__name__}: {message}" if message else ""
    return f"error: {message or type(err).__name__}"


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether ``MAHTNET_DEBUG=1`` is set or ``--debug`` is in ``argv``; without ``argv``, in
    ``sys.argv``, from which it is then removed (before ``main`` parses it)."""
    if argv is None:
        argv = sys.argv[1:]
        sys.argv[1:] = [a for a in argv if a != "--debug"]
    return "--debug" in argv or os.environ.get("MAHTNET_DEBUG") == "1"


def run_cli(main: Callable[[], T], argv: Sequence[str] | None = None) -> T:
    """``main()``'s result; an exception exits with status 2 after one ``error:`` line on stderr,
    or re-raises under ``--debug`` (looked for in ``argv``, default ``sys.argv``; a caller passing
    ``argv`` removes the flag itself) or ``MAHTNET_DEBUG=1``."""
    debug = debug_requested(argv)
    try:
        return main()
    except Exception as err:
        if debug:
            raise
        print(error_line(err), file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS)
