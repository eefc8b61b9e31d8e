"""Where things are: the repository root, also from inside a DVC experiment workspace."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root(start: str | Path | None = None) -> Path:
    """The main repository root.

    ``dvc exp run --queue``/``--temp`` runs each experiment in a copy of the repo under
    ``<root>/.dvc/tmp/exps/...``; the root returned is then the *main* repository, so that
    every experiment logs to the same MLflow store. ``MAHTNET_ROOT`` overrides the search.
    """
    if os.environ.get("MAHTNET_ROOT"):
        return Path(os.environ["MAHTNET_ROOT"]).resolve()
    path = Path(start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").is_file() or (candidate / ".git").exists():
            return candidate
    return path


def resolve(path: str | Path, base: str | Path | None = None) -> Path:
    """A path from ``params.yaml``: absolute as is, relative to ``base`` (default: cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base or Path.cwd()) / p


def relative_to_repo(path: str | Path) -> str:
    """``path`` relative to the repository root (``../shared/...`` for data beside it): what a
    committed file records, never a machine's absolute path."""
    return Path(os.path.relpath(Path(path).resolve(), repo_root())).as_posix()
