"""How long ``mahtnet adapt`` takes on this machine: k ISBI training images with the senior
doctor's annotation files as a clinic's corrections, the released model as the base, the real
command in a fresh process (imports, model load, k predictions, fit, folder written), repeated.

    python scripts/benchmark_adapt.py            # k = 10, 3 runs, 2 threads -> metrics/adapt.json

The issue's budget: under 5 minutes for k = 10 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from mahtnet.errors import run_cli
from mahtnet.hardware import cpu_name
from mahtnet.io import write_json

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"


def corrections(root: Path, k: int, folder: Path) -> None:
    """Images 001..k with their senior annotation as ``<stem>.txt`` beside them."""
    folder.mkdir(parents=True)
    for i in range(1, k + 1):
        shutil.copy(root / "RawImage" / "TrainingData" / f"{i:03d}.jpg", folder / f"{i:03d}.jpg")
        shutil.copy(root / "AnnotationsByMD" / "400_senior" / f"{i:03d}.txt", folder / f"{i:03d}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "metrics/adapt.json")
    args = parser.parse_args()
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        corrections(args.root, args.k, Path(tmp) / "clinic")
        for run in tqdm(range(args.runs), desc="benchmark adapt", unit="run", disable=None):
            cmd = [sys.executable, "-m", "mahtnet", "adapt", f"{tmp}/clinic", "--out", f"{tmp}/model{run}"]
            cmd += ["--pixel-spacing", "0.1", "--threads", str(args.threads)]
            start = time.perf_counter()
            done = subprocess.run(
                cmd, capture_output=True, text=True, env=os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
            )
            seconds.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise RuntimeError(f"mahtnet adapt failed: {done.stderr.strip()}")
            tqdm.write(f"run {run + 1}: {seconds[-1]:.1f} s  {done.stdout.strip().split(' -> ')[0]}")
    result = {
        "what": f"mahtnet adapt, k = {args.k} ISBI images with annotation files, the released model, "
        f"{args.threads} threads, a fresh process per run (imports and model load included)",
        "cpu": cpu_name(),
        "k": args.k,
        "threads": args.threads,
        "runs": args.runs,
        "seconds": [round(s, 2) for s in seconds],
        "median_s": round(statistics.median(seconds), 2),
        "budget_s": 300,
        "method_output": done.stdout.strip().split(" -> ")[0],  # without the temporary folder
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine meanwhile
    }
    write_json(args.out, result)
    print(f"median {result['median_s']} s for k = {args.k} (budget 300 s) -> {args.out.relative_to(REPO)}")


if __name__ == "__main__":
    run_cli(main)
