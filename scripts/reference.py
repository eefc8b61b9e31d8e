"""Score another method's public ISBI 2015 predictions with this project's evaluator and pair
them per image with the recommended recipe's runs (:mod:`mahtnet.studies.reference`)::

    python scripts/reference.py                      # ../shared/reference/isbi2015-delr
    python scripts/protocol_study.py table           # the README's headline row follows

Writes ``docs/reference.json`` and ``docs/reference.md``. Never tune anything on a reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mahtnet.errors import run_cli
from mahtnet.studies.protocol import load_runs
from mahtnet.studies.reference import write

REPO = Path(__file__).resolve().parents[1]
DELR = {
    "label": "DeLR re-implementation (ConvNeXtV2-tiny)",
    "input": "1024x1024",
    "hardware": "GPU, ~14 h",
    "training_labels": "mean",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--predictions", type=Path, default=REPO.parent / "shared/reference/isbi2015-delr")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/datasets/isbi2015")
    parser.add_argument("--runs", type=Path, default=REPO / "docs/protocol/runs")
    parser.add_argument("--protocol", default="mean", help="the recommended recipe's training labels")
    parser.add_argument("--name", default="public DeLR re-implementation (ConvNeXtV2-tiny, 1024x1024)")
    parser.add_argument("--out", type=Path, default=REPO / "docs/reference.md")
    parser.add_argument("--json", type=Path, default=REPO / "docs/reference.json")
    args = parser.parse_args()
    runs = [r for r in load_runs(args.runs) if r["protocol"] == args.protocol and r["model"] == "maht_net"]
    if not runs:
        raise FileNotFoundError(f"{args.runs}: no MAHT-Net run snapshots of protocol {args.protocol!r}")
    doc = write(
        args.predictions, args.root, runs, args.json, args.out, args.name, DELR,
        model=f"MAHT-Net, {args.protocol} protocol",
    )  # fmt: skip
    for key, t in doc["paired"].items():
        d = t["mre_diff"]
        print(
            f"{key}: ours {t['ours_mre']['mean']:.3f} vs reference {t['reference_mre']:.3f} mm, "
            f"diff {d['mean']:+.3f} ± {d['sd']:.3f}, pooled p {t['pooled_p']:.2g}"
        )
    print(f"-> {args.out.relative_to(REPO)}, {args.json.relative_to(REPO)}")


if __name__ == "__main__":
    run_cli(main)
