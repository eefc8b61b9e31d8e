"""Peak memory of batch-1 inference, measured in a fresh process per model so that one
model's allocations do not hide another's.

The child imports the backend's libraries, reads its resident set size (RSS), loads the
model, runs a few batch-1 forward passes and reports its peak RSS (the kernel's high-water
mark, ``VmHWM``). ``model_mb`` is the growth from loading and running the model;
``peak_rss_mb`` the whole process, interpreter and libraries included::

    python -m mahtnet.deploy.memory onnx|pytorch MODEL THREADS   # prints one JSON line
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

RUNS = 5


def _status_mb(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def _rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return float("nan") if rss is None else rss  # no /proc (not Linux): only the peak is known


def _peak_rss_mb() -> float:
    """This process's high-water resident set. Linux: ``VmHWM`` (``ru_maxrss`` would carry over
    the parent's high-water mark through fork and exec)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _measure(backend: str, model: str, threads: int) -> dict[str, float]:
    import numpy as np

    if backend == "onnx":
        from mahtnet.decoding import OnnxBackend

        before = _rss_mb()
        net = OnnxBackend(model, threads)
        size = net.card.input_size
    else:
        import torch

        import mahtnet.models.factory  # noqa: F401  (timm and the model code: libraries, not the model)
        from mahtnet.decoding import TorchBackend

        torch.set_num_threads(threads)
        before = _rss_mb()
        net = TorchBackend(model, "cpu")
        size = net.card.input_size
    image = np.zeros((1, *size), np.uint8)
    for _ in range(RUNS):
        net(image)
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "model_mb": peak - before}


def memory_columns(checkpoint: Path | None, onnx: Path, threads: int = 1) -> dict[str, float]:
    """The trade-off table's memory columns: ``onnxruntime_*`` and (with a checkpoint)
    ``pytorch_*`` ``peak_rss_mb`` and ``model_mb`` at ``threads``."""
    runs = {"onnxruntime": ("onnx", onnx)} | ({"pytorch": ("pytorch", checkpoint)} if checkpoint else {})
    return {
        f"{name}_{key}": value
        for name, (backend, path) in runs.items()
        for key, value in peak_memory_mb(backend, path, threads).items()
    }


def peak_memory_mb(backend: str, model: str | Path, threads: int = 1) -> dict[str, float]:
    """``{"peak_rss_mb", "model_mb"}`` of batch-1 inference of ``model`` on ``backend``
    (``"onnx"`` or ``"pytorch"``), measured in a fresh Python process."""
    cmd = [sys.executable, "-m", "mahtnet.deploy.memory", backend, str(model), str(threads)]
    src = str(Path(__file__).resolve().parents[2])  # this copy of the package, installed or not
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"memory probe of {model} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    backend_name, model_path, n_threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(_measure(backend_name, model_path, n_threads)))
