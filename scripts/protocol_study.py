"""The training-protocol study (:mod:`mahtnet.studies.protocol`): which training labels
generalise (issue: "Generalisation first").

``snapshot`` copies what the study needs of one finished run (a DVC experiment, or the
workspace) into ``docs/protocol/runs/<protocol>-<model>-seed<N>.json``
(:mod:`mahtnet.studies.snapshots`); ``table`` turns every snapshot into ``docs/protocol.md``,
``docs/protocol.json`` and the README's headline table.

    python scripts/protocol_study.py snapshot --rev isbi-doctors-s42 --model maht_net
    python scripts/protocol_study.py snapshot --rev workspace --model baseline
    python scripts/protocol_study.py table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.studies.protocol import table
from mahtnet.studies.snapshots import record

REPO = Path(__file__).resolve().parents[1]
RUNS = Path("docs/protocol/runs")


def snapshot(rev: str, model: str, out_dir: Path) -> Path:
    """One run's record in ``out_dir``; returns its path."""
    r = record(rev, model, REPO)
    return write_json(out_dir / f"{r['protocol']}-{model}-seed{r['seed']}.json", r)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="record one finished run")
    snap.add_argument("--rev", required=True, action="append", help="experiment name, commit or 'workspace'")
    snap.add_argument("--model", default="maht_net", choices=("maht_net", "baseline"))
    snap.add_argument("--out-dir", type=Path, default=RUNS)
    tab = sub.add_parser("table", help="the study's table and tests from every snapshot")
    tab.add_argument("--runs", type=Path, default=RUNS)
    tab.add_argument("--out", type=Path, default=Path("docs/protocol.md"))
    tab.add_argument("--json", type=Path, default=Path("docs/protocol.json"))
    tab.add_argument("--reference", default="mean", help="the protocol every other one is tested against")
    tab.add_argument("--readme", type=Path, default=Path("README.md"), help="whose headline table to rewrite")
    tab.add_argument("--no-readme", dest="readme", action="store_const", const=None)
    tab.add_argument(
        "--side-by-side", type=Path, default=Path("docs/reference.json"),
        help="public predictions scored by scripts/reference.py: a row of the headline table",
    )  # fmt: skip
    args = parser.parse_args()
    if args.command == "snapshot":
        for rev in args.rev:
            print(f"{rev} -> {snapshot(rev, args.model, args.out_dir)}")
    else:
        c = table(args.runs, args.out, args.json, args.reference, args.readme, args.side_by_side)
        print(f"{c['rows']} rows, {c['tests']} paired tests -> {args.out}, {args.json}")
        print(f"chosen on validation: {c['chosen']} ({c['why']})")


if __name__ == "__main__":
    run_cli(main)
