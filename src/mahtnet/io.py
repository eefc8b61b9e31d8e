"""Atomic file writes: a result file is either the old complete one or the new complete one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _check_finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"refusing to write non-finite value {obj} at '{where or '<root>'}'")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically; NaN/inf are refused (they would corrupt a metrics file)."""
    _check_finite(obj)
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_torch(path: str | Path, what: str, error: type[Exception]) -> Any:
    """``torch.load`` of ``path`` onto the CPU, tensors and containers only. A missing file
    raises ``FileNotFoundError``, an unreadable one ``error``; both messages name ``what`` and
    the file."""
    import torch  # here: most users of this module do not need torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise error(f"corrupt or truncated {what} {path}: {err}") from None


def save_npz(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Arrays as an uncompressed ``.npz``, written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_npz(path: str | Path, keys: Sequence[str], what: str, stage: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` (no pickles); a missing file or key is an error naming
    the file (``what``: what it should hold; ``stage``: the stage that writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (run the {stage} stage)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in keys if k not in z]
        if missing:
            raise KeyError(
                f"{path} lacks {missing}: not {what}, or an older version; re-run the {stage} stage"
            )
        return {k: z[k] for k in keys}
