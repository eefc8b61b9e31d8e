"""Several processes logging MLflow runs at once to one ``sqlite:///`` store, the way the pipeline's
stages do (``mahtnet.tracking.start_run``: experiment, params, tags, a dataset input, per-epoch
metrics, an artifact), as ``dvc queue start -j N`` runs N experiments side by side. Counted: runs
lost (not FINISHED with every metric step), errors, "database is locked" among them::

    python scripts/sqlite_concurrency.py --procs 4 --runs 3 --epochs 20          # a fresh store
    python scripts/sqlite_concurrency.py --procs 4 --existing                     # created first
    python scripts/sqlite_concurrency.py --existing --collide 3                    # same datasets
    python scripts/sqlite_concurrency.py --src /tmp/old/src                       # another mahtnet

``--src`` is the ``src`` folder whose ``mahtnet`` the workers import (default: this checkout's),
e.g. ``git archive HEAD src | tar -x -C /tmp/old`` for the code before a change. ``--collide S``:
run r of every worker logs the same new dataset at the same moment (start + r * S seconds), as two
experiments training on the same images do when they start together. Prints one JSON
object; exits 1 if a run was lost or a worker failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("train/loss", "val/loss", "val/mre_mm", "val/sdr_2mm", "train/lr_encoder", "monitor/epoch_time_s")


def worker(args: argparse.Namespace) -> None:
    """One process: ``--runs`` runs one after the other; a JSON line of its errors on stdout."""
    import numpy as np

    from mahtnet.config import TrackingParams
    from mahtnet.tracking import start_run

    p = TrackingParams(
        experiment="concurrency", uri=f"sqlite:///{args.store / 'mlflow.db'}", log_models=False
    )
    retried = []  # mahtnet.tracking's warnings of a conflict it retries (none in older code)
    handler = logging.Handler()
    handler.emit = lambda record: retried.append(record.getMessage())
    logging.getLogger("mahtnet.tracking").addHandler(handler)
    artifact = args.store / f"worker{args.worker}.txt"
    artifact.write_text("x" * 1000)
    errors = []
    wait_until(args.start_at)  # every worker begins at the same moment
    for r in range(args.runs):
        try:
            params = {"train": {"lr": 0.001, "epochs": args.epochs}, "worker": args.worker, "run": r}
            with start_run(p, f"worker{args.worker}/run{r}", params) as run:
                if args.collide:
                    wait_until(args.start_at + 1 + r * args.collide)
                features = np.full((4, 38), r if args.collide else 0, np.float32)
                run.log_dataset(features, "train", "data/prepared/train.npz", "training")
                for epoch in range(args.epochs):
                    run.log_metrics({k: epoch + 0.5 for k in METRICS}, step=epoch)
                run.log_artifact(artifact)
        except Exception as e:  # counted, not raised: the next run goes on as a stage would not
            errors.append({"run": r, "type": type(e).__name__, "message": str(e)[:300]})
            if args.verbose:
                traceback.print_exc()
    conflicts = sum("retrying" in m for m in retried)
    print(json.dumps({"worker": args.worker, "errors": errors, "retried": conflicts}))


def wait_until(t: float) -> None:
    while time.time() < t:
        time.sleep(0.001)


def count(db: Path, epochs: int) -> dict[str, int]:
    """Runs FINISHED with ``epochs`` steps of every metric, and all runs."""
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid, status from runs").fetchall()
        steps = dict(
            con.execute(
                "select run_uuid, count(*) from metrics group by run_uuid having count(*) = ?",
                (epochs * len(METRICS),),
            ).fetchall()
        )
    complete = sum(1 for uuid, status in runs if status == "FINISHED" and uuid in steps)
    return {"runs": len(runs), "complete": complete}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=4, help="processes logging at once")
    ap.add_argument("--runs", type=int, default=3, help="runs per process, one after the other")
    ap.add_argument("--epochs", type=int, default=20, help="metric steps per run")
    ap.add_argument("--existing", action="store_true", help="create the store first (not all at once)")
    ap.add_argument("--collide", type=float, default=0.0, help="seconds between dataset collisions")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="src folder of the mahtnet imported")
    ap.add_argument("--store", type=Path, help="folder of mlflow.db (default: a new temporary one)")
    ap.add_argument("--verbose", action="store_true", help="workers print their tracebacks")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    return ap


def worker_command(args: argparse.Namespace, store: Path) -> list[str]:
    """The command line of a worker, less ``--worker`` and ``--start-at``."""
    base = [sys.executable, __file__, "--store", str(store), "--src", str(args.src.resolve())]
    base += ["--runs", str(args.runs), "--epochs", str(args.epochs), "--collide", str(args.collide)]
    base += ["--verbose"] * args.verbose
    return base


def start_workers(args: argparse.Namespace, base: list[str], env: dict[str, str]) -> tuple[list, float]:
    """Start ``--procs`` workers that all begin at one moment; returns (processes, that moment)."""
    if args.existing:  # one process creates the store, experiment and tables before the others start
        one = [*base, "--worker", "-1", "--start-at", "0", "--runs", "1"]
        subprocess.run(one, env=env, check=True, capture_output=True, text=True)
    start_at = time.time() + 5 + 2 * args.procs  # after every worker imported mlflow
    procs = [
        subprocess.Popen(
            [*base, "--worker", str(i), "--start-at", str(start_at)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=None if args.verbose else subprocess.DEVNULL,
            text=True,
        )
        for i in range(args.procs)
    ]
    return procs, start_at


def collect(procs: list) -> tuple[list[dict], int, int]:
    """Wait for the workers; returns (their errors, how many failed, conflicts retried)."""
    errors, failed, retried = [], 0, 0
    for proc in procs:
        out, _ = proc.communicate()
        failed += proc.returncode != 0
        for line in out.splitlines():
            if line.startswith("{"):
                errors += json.loads(line)["errors"]
                retried += json.loads(line)["retried"]
    return errors, failed, retried


def summary(
    args: argparse.Namespace, store: Path, errors: list[dict], failed: int, retried: int, wall: float
) -> dict:
    """The printed JSON object."""
    counted = count(store / "mlflow.db", args.epochs)
    expected = args.procs * args.runs + (1 if args.existing else 0)
    return {
        "procs": args.procs,
        "runs_expected": expected,
        "runs_complete": counted["complete"],
        "runs_lost": expected - counted["complete"],
        "errors": len(errors),
        "database_is_locked": sum("database is locked" in e["message"] for e in errors),
        "workers_failed": failed,
        "conflicts_retried": retried,
        "error_types": sorted({f"{e['type']}: {e['message'][:120]}" for e in errors}),
        "store": str(store),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    args = build_parser().parse_args()
    if args.worker is not None:
        sys.path.insert(0, str(args.src.resolve()))
        return worker(args)

    store = args.store or Path(tempfile.mkdtemp(prefix="sqlite-concurrency-"))
    store.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(args.src.resolve())
    procs, start_at = start_workers(args, worker_command(args, store), env)
    errors, failed, retried = collect(procs)
    wall = time.time() - start_at  # from the common start to the last worker's end
    result = summary(args, store, errors, failed, retried, wall)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["runs_lost"] or failed else 0)


if __name__ == "__main__":
    main()
