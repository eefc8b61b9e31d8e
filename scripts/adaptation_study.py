"""The adaptation study (:mod:`mahtnet.studies.adaptation`): the base model adapted to a
clinic's conventions from k corrected images, k in {1, 3, 5, 10, 20}, on five targets.

    python scripts/adaptation_study.py predict   # the release's zero-shot predictions of the 400
                                                 # ISBI images -> docs/adaptation/zero_shot.json
    python scripts/adaptation_study.py run       # -> docs/adaptation.md, .json, figure

``predict`` runs ``mahtnet predict`` (the released model, 0.1 mm/px) on the three ISBI folders;
``run`` reads only that file and the annotations, so the study repeats bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mahtnet.errors import run_cli
from mahtnet.io import atomic_write, write_json
from mahtnet.models.card import sha256
from mahtnet.studies.adaptation import markdown, prior_variance, readme_table, study, update_readme

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"
ZERO_SHOT = REPO / "docs/adaptation/zero_shot.json"
SPLITS = ("TrainingData", "Test1Data", "Test2Data")


def release_identity() -> dict:
    card = json.loads((REPO / "src/mahtnet/release/card.json").read_text())
    onnx = REPO / "src/mahtnet/release/maht_net.onnx"
    return {"name": card["name"], "sha256": sha256(onnx)}


def predict(root: Path, out: Path, threads: int, existing: Path | None = None) -> None:
    """Run ``mahtnet predict`` on the three folders (or read its outputs from ``existing``/<split>)
    and write the zero-shot predictions and confidences of the 400 images to ``out``."""
    preds, confidence = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in SPLITS:
            where = Path(existing or tmp) / split
            if existing is None:
                cmd = [sys.executable, "-m", "mahtnet", "predict", str(root / "RawImage" / split)]
                cmd += [
                    "--pixel-spacing",
                    "0.1",
                    "--out",
                    str(where),
                    "--no-overlay",
                    "--threads",
                    str(threads),
                ]
                subprocess.run(cmd, check=True, env=os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"})
            for path in sorted(where.glob("*.json")):
                doc = json.loads(path.read_text())
                preds[path.stem] = [[r["x_px"], r["y_px"]] for r in doc["landmarks"]]
                confidence[path.stem] = [r["confidence"] for r in doc["landmarks"]]
    if len(preds) != 400:
        raise RuntimeError(f"expected 400 ISBI predictions, got {len(preds)}")
    doc = {
        "model": release_identity(),
        "command": "mahtnet predict <RawImage/{split}> --pixel-spacing 0.1 (the released model)",
        "pixel_spacing_mm": 0.1,
        "predictions": preds,
        "confidence": confidence,
    }
    write_json(out, doc)


def figure(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    default = doc["default"]["method"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per_k in doc["targets"].items():
        ks = [int(k) for k in per_k]
        m = [per_k[k]["methods"][default]["mre_mm"]["mean"] for k in per_k]
        sd = [per_k[k]["methods"][default]["mre_mm"]["sd"] for k in per_k]
        zero = [per_k[k]["zero_shot"]["mre_mm"]["mean"] for k in per_k]
        line = ax.errorbar(ks, m, yerr=sd, marker="o", capsize=3, label=f"{name}")
        ax.plot(ks, zero, ls=":", color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xticks(doc["ks"], [str(k) for k in doc["ks"]])
    ax.set_xlabel("k corrected images (few-shot)")
    ax.set_ylabel("MRE on the remaining images (mm)")
    ax.set_title(f"Adapted with '{default}' (solid) vs zero-shot on the same images (dotted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="the release's zero-shot predictions of the 400 ISBI images")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--out", type=Path, default=ZERO_SHOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--from", dest="existing", type=Path, help="read mahtnet predict outputs from DIR/<split>")
    c = sub.add_parser("card", help="write the prior spread of corrections into the release's card")
    c.add_argument("--root", type=Path, default=ROOT)
    c.add_argument("--zero-shot", type=Path, default=ZERO_SHOT)
    r = sub.add_parser("run", help="the study from the zero-shot predictions")
    r.add_argument("--root", type=Path, default=ROOT)
    r.add_argument("--zero-shot", type=Path, default=ZERO_SHOT)
    r.add_argument("--draws", type=int, default=50)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, default=REPO / "docs/adaptation.md")
    r.add_argument("--json", type=Path, default=REPO / "docs/adaptation.json")
    r.add_argument("--figure", type=Path, default=REPO / "docs/figures/adaptation_k.png")
    r.add_argument("--readme", type=Path, default=REPO / "README.md", help="whose few-shot table to rewrite")
    r.add_argument("--no-readme", dest="readme", action="store_const", const=None)
    args = parser.parse_args()
    if args.command == "predict":
        predict(args.root, args.out, args.threads, args.existing)
        print(f"-> {args.out}")
        return
    zero_shot = json.loads(args.zero_shot.read_text())
    card_path = REPO / "src/mahtnet/release/card.json"
    card = json.loads(card_path.read_text())
    if args.command == "card":
        prior = prior_variance(zero_shot, args.root, int(card["training"]["seed"]))
        card["adaptation_prior_variance_mm2"] = [round(float(v), 6) for v in prior]
        card["adaptation_prior_from"] = (
            "scripts/adaptation_study.py card: the model's residual variance on its validation images "
            "(mean of both doctors) plus one doctor's scatter on the training images, per landmark and axis"
        )
        write_json(card_path, card)
        print(f"-> {card_path.relative_to(REPO)}: adaptation_prior_variance_mm2")
        return
    doc = study(zero_shot, args.root, int(card["training"]["seed"]), draws=args.draws, seed=args.seed)
    write_json(args.json, doc)
    pilot_path = REPO / "docs/adaptation/finetune_pilot.json"
    pilot = json.loads(pilot_path.read_text()) if pilot_path.is_file() else None
    atomic_write(args.out, lambda tmp: tmp.write_text(markdown(doc, pilot)))
    figure(doc, args.figure)
    if args.readme is not None:
        update_readme(args.readme, readme_table(doc))
    print(f"default (chosen on {doc['default']['on']}): {doc['default']['method']}")
    for name, per_k in doc["targets"].items():
        row = "  ".join(
            f"k={k}: {v['methods'][doc['default']['method']]['mre_mm']['mean']:.3f}"
            f" (0-shot {v['zero_shot']['mre_mm']['mean']:.3f})"
            for k, v in per_k.items()
        )
        print(f"{name}: {row}")


if __name__ == "__main__":
    run_cli(main)
