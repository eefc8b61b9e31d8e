"""Print the Markdown table of published ISBI 2015 results (src/mahtnet/data/literature.yaml)
with this project's evaluated models beside them (docs/results.md)::

    python scripts/literature_table.py --ours "MAHT-Net (refined)=docs/isbi2015-senior/maht_net.json" \\
        --input 320x256 --hardware "2-core CPU"
"""

import argparse
import json
from pathlib import Path

from mahtnet.analysis.literature import HEADER, comparison_rows
from mahtnet.analysis.report import table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ours", action="append", default=[], help="NAME=evaluate-stage metrics JSON (per set, both GTs)"
    )
    parser.add_argument("--input", default="320x256")
    parser.add_argument("--hardware", default="2-core CPU")
    args = parser.parse_args()
    ours = []
    for item in args.ours:
        name, _, path = item.partition("=")
        m = json.loads(Path(path).read_text())
        # per-set metrics (test1 / test2), one row per ground truth (official, mean of both doctors)
        for gt in ("official", "mean"):
            sets = {k: m[k][gt] for k in ("test1", "test2") if gt in m.get(k, {})}
            if not sets:
                continue
            row = {"name": name, "input": args.input, "hardware": args.hardware, "ground_truth": gt}
            row["note"] = str(path)
            for split, s in sets.items():
                row[split] = {
                    "mre_mm": s["mre_mm"],
                    "sdr": [s[k] for k in ("sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm")],
                }
            ours.append(row)
    print(table(HEADER, comparison_rows(ours)))


if __name__ == "__main__":
    main()
