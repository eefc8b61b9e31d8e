"""``uv pip install -r requirements.txt`` into this interpreter's virtualenv, from the package
sources pip is configured with: uv does not read pip's configuration, so the indexes, find-links
and constraints that ``pip config list`` shows (pip's files and its ``PIP_*`` variables) are passed
on as uv's variables, with pip's rule of the best match over all indexes. Exits with uv's status.

    .venv/bin/python .ci/uv_install.py      # what .ci/run does before falling back to pip
"""

import os
import re
import subprocess
import sys
from pathlib import Path

UV = {  # pip's key -> (uv's variable, its separator)
    "index-url": ("UV_INDEX_URL", " "),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "constraint": ("UV_CONSTRAINT", " "),
}


def pip_sources() -> dict[str, str]:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    values: dict[str, list[str]] = {}
    for line in listed.stdout.splitlines():  # global.find-links='/opt/wheels', :env:.find-links='...'
        match = re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip())
        if match and match[1] in UV:
            seen = values.setdefault(match[1], [])
            seen += [v for v in match[2].split() if v not in seen]
    return {UV[key][0]: UV[key][1].join(vals) for key, vals in values.items()}


def main() -> int:
    uv = Path(sys.executable).parent / "uv"
    if not uv.is_file():
        print(f"uv_install: no uv beside {sys.executable}", file=sys.stderr)
        return 1
    cmd = [str(uv), "pip", "install", "-q", "--index-strategy", "unsafe-best-match"]
    cmd += ["--python", sys.executable, "-r", "requirements.txt"]
    return subprocess.run(cmd, env={**os.environ, **pip_sources()}).returncode


if __name__ == "__main__":
    sys.exit(main())
