"""Figures of the hand-written docs that follow a committed JSON, written between markers
(``<!-- doc-figures NAME: ... -->`` ... ``<!-- doc-figures NAME end -->``) so they cannot go
stale; ``tests/test_doc_figures.py`` fails when a section differs from what its JSON gives, and
checks a sample of the figures quoted in the prose against their JSON.

    python scripts/doc_figures.py calibration   # the release's ISBI calibration from
                                                # docs/trust/signals.json + the annotations
                                                # -> docs/trust/calibration.json (seconds)
    python scripts/doc_figures.py write         # every marked section from its JSON
    python scripts/doc_figures.py check         # exit 1 when a marked section is stale

The sections: ``calibration`` in docs/predict.md (docs/trust/calibration.json),
``synthetic-robustness`` in docs/evaluation.md (metrics/robustness.json) and
``synthetic-results`` in docs/results.md (metrics/baseline.json, maht_net.json, compare.json):
the last two change with every synthetic ``dvc repro``, so run ``write`` after one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = Path("docs/trust/calibration.json")
SIGNALS = Path("docs/trust/signals.json")
CARD = Path("src/mahtnet/release/card.json")


def load(path: Path | str) -> dict:
    return json.loads((REPO / path).read_text())


def p_value(p: float) -> str:
    """Two significant digits; below 0.001 as a power of ten (``3e-5``)."""
    if p < 1e-3:
        mantissa, exponent = f"{p:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{p:.2g}"


# ------------------------------------------------------------------------------- calibration


def calibration(root: Path) -> dict:
    """The `calibrate` stage's figures for the release (isbi-mean seed 42, shape decoding +
    refiner, the refiner's confidence) from its recorded readings of the 400 ISBI images:
    fitted on the 15 validation images of the seed-42 split (pooled), cross-validated on them,
    checked on Test1 and Test2, against the official ground truth and the mean of both doctors."""
    import numpy as np
    from scipy import stats

    from mahtnet.analysis.calibration import cross_validated, fit_calibration, flagged, reliability
    from mahtnet.data.preprocess import split_train_val
    from mahtnet.decoding.recipe import LOW_CONFIDENCE
    from mahtnet.studies.adaptation import truths

    doc, card = load(SIGNALS), load(CARD)
    seed = int(card["training"]["seed"])
    train = [f"{i:03d}" for i in range(1, 151)]
    _, val_idx = split_train_val(len(train), 0.1, seed)
    sets = {
        "validation": [train[i] for i in val_idx],
        "test1": [f"{i:03d}" for i in range(151, 301)],
        "test2": [f"{i:03d}" for i in range(301, 401)],
    }

    def read(ids: list[str], key: str) -> np.ndarray:
        return np.array([doc["images"][i][key] for i in ids], dtype=np.float64)

    threshold = LOW_CONFIDENCE["refined"]
    out = {
        "written_by": "python scripts/doc_figures.py calibration",
        "readings": f"{SIGNALS} (the release read by scripts/trust.py signals at {doc['spacing_mm']} mm/px)",
        "model": f"{card['name']}: {card['training']['experiment']}",
        "decoding": "refined",
        "confidence": "the refiner's (`confidence` in the readings; `coarse_confidence`: the coarse "
        "network's)",
        "fitted_on": f"{19 * len(sets['validation'])} validation landmarks "
        f"({len(sets['validation'])} images, the seed-{seed} split), pooled",
        "low_confidence_threshold": threshold,
    }
    for gt in ("official", "mean"):
        err, conf = {}, {}
        for name, ids in sets.items():
            pred = read(ids, "final")
            err[name] = np.linalg.norm(pred - truths(root, ids)[gt], axis=-1) * doc["spacing_mm"]
            conf[name] = read(ids, "confidence")
        cal = fit_calibration(conf["validation"], err["validation"], {})
        coarse = read(sets["validation"], "coarse_confidence")
        block = {
            "validation": {
                "landmarks": int(err["validation"].size),
                "mre_mm": float(err["validation"].mean()),
                "cross_validated": cross_validated(conf["validation"], err["validation"]),
                "spearman_refined_confidence": float(
                    stats.spearmanr(conf["validation"].ravel(), err["validation"].ravel()).statistic
                ),
                "spearman_coarse_confidence": float(
                    stats.spearmanr(coarse.ravel(), err["validation"].ravel()).statistic
                ),
                "low_confidence": flagged(conf["validation"], err["validation"], threshold),
                "share_below_0.4": float((conf["validation"] < 0.4).mean()),
            }
        }
        for name in ("test1", "test2"):
            expected = cal.expected_error(conf[name])
            block[name] = {
                "landmarks": int(err[name].size),
                "mre_mm": float(err[name].mean()),
                "expected_error_mae_mm": float(abs(expected - err[name]).mean()),
                "constant_guess_mae_mm": float(abs(err["validation"].mean() - err[name]).mean()),
                "calibration_error_mm": reliability(expected, err[name])["calibration_error_mm"],
                "low_confidence": flagged(conf[name], err[name], threshold),
            }
        out[gt] = block
    return out


def calibration_section() -> list[str]:
    c = load(CALIBRATION)
    gain = lambda ours, guess: f"{100 * (1 - ours / guess):.0f} %"  # noqa: E731
    lines = [
        "| ground truth | set | landmarks | expected error, mean \\|expected - observed\\| "
        "| a constant guess (the other folds' / the validation MRE) "
        "| calibration error (10 equal-count bins) | flagged < 0.2: share, MRE flagged vs rest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for gt, label in (("official", "official"), ("mean", "mean of both doctors")):
        v = c[gt]["validation"]
        cv = v["cross_validated"]
        lines.append(
            f"| {label} | validation, image-wise {cv['folds']}-fold | {v['landmarks']} "
            f"| {cv['expected_error_mae_mm']:.2f} mm | {cv['constant_guess_mae_mm']:.2f} mm | - | - |"
        )
        for name in ("test1", "test2"):
            t = c[gt][name]
            low = t["low_confidence"]
            lines.append(
                f"| {label} | {name.capitalize()} | {t['landmarks']} | {t['expected_error_mae_mm']:.2f} mm "
                f"| {t['constant_guess_mae_mm']:.2f} mm | {t['calibration_error_mm']:.2f} mm "
                f"| {100 * low['share']:.1f} %, {low['mre_flagged_mm']:.2f} vs {low['mre_other_mm']:.2f} mm |"
            )
    o = c["official"]
    cv = o["validation"]["cross_validated"]
    lines += [
        "",
        "Against the official ground truth the expected error beats a constant guess by "
        f"{gain(cv['expected_error_mae_mm'], cv['constant_guess_mae_mm'])} on validation, "
        f"{gain(o['test1']['expected_error_mae_mm'], o['test1']['constant_guess_mae_mm'])} on Test1 and "
        f"{gain(o['test2']['expected_error_mae_mm'], o['test2']['constant_guess_mae_mm'])} on Test2.",
    ]
    return lines


# ---------------------------------------------------------------------- synthetic robustness

STRONGEST = {
    "noise": "noise sd {:g}",
    "gamma": "gamma {:g}",
    "contrast": "contrast {:g}",
    "blur": "blur {:g} mm",
    "jpeg": "JPEG quality {:g}",
    "rotate": "rotation {:g} degrees",
    "scale": "zoom {:g}",
    "crop": "{:g} % crop",
}


def robustness_section() -> list[str]:
    r = load("metrics/robustness.json")
    images = load("metrics/baseline.json")["test1"]["official"]["images"]
    b, m = r["baseline"], r["maht_net"]
    rows = []
    for kind, label in STRONGEST.items():
        rb, rm = b["perturbations"][kind]["rows"][-1], m["perturbations"][kind]["rows"][-1]
        severity = 100 * rb["severity"] if kind == "crop" else rb["severity"]
        rows.append((label.format(severity), rb, rm))
    rows.sort(key=lambda row: -row[1]["mre_mm"])
    figures = ", ".join(f"{label} {rb['mre_mm']:.2f} / {rm['mre_mm']:.2f}" for label, rb, rm in rows)
    more = [label for label, rb, rm in rows if rm["mre_increase_mm"] - rb["mre_increase_mm"] > 0.01]
    less = [label for label, rb, rm in rows if rb["mre_increase_mm"] - rm["mre_increase_mm"] > 0.01]
    return [
        f"Synthetic default (`dvc repro`, {images} test images; clean U-Net {b['clean']['mre_mm']:.3f}, "
        f"MAHT-Net {m['clean']['mre_mm']:.3f} mm; `metrics/robustness.json`), MRE in mm at the strongest "
        f"severity, U-Net / MAHT-Net: {figures}. MAHT-Net's MRE rises more than the U-Net's (by more than "
        f"0.01 mm) under {', '.join(more) or 'none'}; less under {', '.join(less) or 'none'}.",
    ]


# ------------------------------------------------------------------------- synthetic results


def results_section() -> list[str]:
    names = {"baseline": "U-Net baseline", "maht_net": "MAHT-Net"}
    lines = [
        "| model | decoding | MRE (mm) | SDR 2 / 2.5 / 3 / 4 mm (%) | max (mm) | peaks switched |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model, name in names.items():
        for variant, v in load(f"metrics/{model}.json")["test1"]["variants"].items():
            sdr = " / ".join(f"{v[f'sdr_{t}mm']:.1f}" for t in ("2", "2.5", "3", "4"))
            switched = v.get("n_switched", "-")
            cells = [name, variant, f"{v['mre_mm']:.3f}", sdr, f"{v['max_mm']:.1f}", str(switched)]
            lines.append("| " + " | ".join(cells) + " |")
    c = load("metrics/compare.json")
    pairs = c["pairs"]

    def diff(pair: dict) -> str:
        return f"{pair['mre_diff']:+.3f} mm (Wilcoxon p = {p_value(pair['wilcoxon']['p_value'])})"

    lines += [
        "",
        f"On the {c['images']} test images (`metrics/compare.json`), refined minus arg-max: U-Net "
        f"{diff(pairs['baseline_vs_baseline_coarse'])}, MAHT-Net "
        f"{diff(pairs['maht_net_vs_maht_net_coarse'])}; MAHT-Net minus U-Net at the arg-max "
        f"{diff(pairs['maht_net_coarse_vs_baseline_coarse'])}, refined {diff(c['maht_net'])}.",
    ]
    return lines


SECTIONS: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "calibration": ("docs/predict.md", calibration_section),
    "synthetic-robustness": ("docs/evaluation.md", robustness_section),
    "synthetic-results": ("docs/results.md", results_section),
}


def markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- doc-figures {name}: written by scripts/doc_figures.py write -->",
        f"<!-- doc-figures {name} end -->",
    )


def render(name: str, text: str) -> str:
    """``text`` with section ``name`` rewritten from its JSON."""
    start, end = markers(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"error: {SECTIONS[name][0]}: markers of section {name!r} missing or repeated")
    body = "\n".join([start, "", *SECTIONS[name][1](), "", end])
    return pattern.sub(lambda _: body, text)


def stale() -> list[str]:
    """The sections whose text differs from what their JSON gives."""
    out = []
    for name, (doc, _) in SECTIONS.items():
        text = (REPO / doc).read_text()
        if render(name, text) != text:
            out.append(f"{doc}: section {name}")
    return out


def write() -> None:
    for name, (doc, _) in SECTIONS.items():
        path = REPO / doc
        text = path.read_text()
        new = render(name, text)
        if new != text:
            path.write_text(new)
            print(f"{doc}: section {name} rewritten")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibration", help="docs/trust/calibration.json from the release's readings")
    cal.add_argument("--root", type=Path, default=REPO.parent / "shared/datasets/isbi2015")
    sub.add_parser("write", help="every marked section from its JSON")
    sub.add_parser("check", help="exit 1 when a marked section differs from its JSON")
    args = parser.parse_args()
    if args.command == "calibration":
        from mahtnet.io import write_json

        print(write_json(REPO / CALIBRATION, calibration(args.root)))
    elif args.command == "write":
        write()
    else:
        bad = stale()
        for line in bad:
            print(f"stale: {line} (python scripts/doc_figures.py write)")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    from mahtnet.errors import run_cli

    run_cli(main)
