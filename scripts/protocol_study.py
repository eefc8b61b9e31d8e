"""The training-protocol study: which training labels generalise (issue: "Generalisation first").

Two steps. ``snapshot`` copies what the study needs of one finished run (a DVC experiment, or
the workspace) into ``docs/protocol/runs/<protocol>-<model>-seed<N>.json``: its params, each
evaluated set's scores (validation, Test1, Test2; official ground truth and mean of both
doctors; every decoding variant) and the per-image MREs for paired tests. ``table`` turns every
snapshot into ``docs/protocol.md`` and ``docs/protocol.json``: mean +- SD over seeds per
protocol and model, paired Wilcoxon tests per seed and pooled against the reference protocol,
MAHT-Net against the U-Net under each protocol, and the protocol chosen **on validation only**
(validation images scored against the mean of both doctors).

    python scripts/protocol_study.py snapshot --rev isbi-doctors-s42 --model maht_net
    python scripts/protocol_study.py snapshot --rev workspace --model baseline
    python scripts/protocol_study.py table

``table`` also rewrites the README's headline table, between the ``README_START`` and
``README_END`` markers: the study's rows, then the published results (``literature.yaml``).
Snapshots stay in git, so the study grows over sessions without the DVC cache of old runs.
"""

from __future__ import annotations

import argparse
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mahtnet.analysis.literature import load_literature
from mahtnet.analysis.stats import mean_sd, signed_rank_test
from mahtnet.io import atomic_write, write_json

REPO = Path(__file__).resolve().parents[1]
RUNS = Path("docs/protocol/runs")
SETS = ("val", "test1", "test2")
GTS = ("official", "mean")
FIGURES = ("mre_mm", "sd_mm", "sdr_2mm", "sdr_4mm", "max_mm", "n_over_10mm", "n_over_15mm")
PARAM_KEYS = ("seed", "data.gt", "data.dataset", "preprocess.height", "preprocess.width", "model.encoder")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def _reader(rev: str):
    """``read(path) -> str`` of the workspace or of a git / DVC revision (an experiment)."""
    if rev == "workspace":
        return lambda path: (REPO / path).read_text()
    import dvc.api

    return lambda path: dvc.api.read(path, repo=str(REPO), rev=rev)


def snapshot(rev: str, model: str, out_dir: Path) -> Path:
    """One run's study record (see the module docstring); returns its path."""
    read = _reader(rev)
    params = yaml.safe_load(read("params.yaml"))
    metrics = json.loads(read(f"metrics/{model}.json"))
    sets = [s for s in SETS if s in metrics]
    if not sets:
        raise SystemExit(f"{rev}: metrics/{model}.json has no per-set scores (val / test1 / test2)")
    record = {
        "rev": rev,
        "model": model,
        "protocol": _get(params, "data.gt"),
        "seed": int(params["seed"]),
        "params": {k: _get(params, k) for k in PARAM_KEYS},
        "scores": {s: {v: metrics[s][v] for v in ("variants", "variants_mean")} for s in sets},
        "per_image": {},
    }
    for s in sets:
        for variant in metrics[s]["variants"]:
            for gt in GTS:
                text = read(f"data/eval/{model}_sets/{s}_{variant}_errors_{gt}.csv")
                df = pd.read_csv(io.StringIO(text), dtype={"image_id": str})
                record["per_image"].setdefault(s, {"image_id": df["image_id"].tolist()})
                record["per_image"][s][f"{variant}.{gt}"] = [round(float(v), 4) for v in df["mre_mm"]]
    name = f"{record['protocol']}-{model}-seed{record['seed']}.json"
    return write_json(out_dir / name, record)


def load_runs(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        raise SystemExit(f"no run snapshots in {folder} (protocol_study.py snapshot first)")
    return runs


def final_variant(run: dict, s: str) -> str:
    return list(run["scores"][s]["variants"])[-1]


def score(run: dict, s: str, gt: str, variant: str | None = None) -> dict:
    key = "variants" if gt == "official" else "variants_mean"
    return run["scores"][s][key][variant or final_variant(run, s)]


def summary_rows(groups: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """Mean and SD over seeds of every figure, per protocol, model, set and ground truth."""
    rows = []
    for (protocol, model), runs in sorted(groups.items()):
        for s in SETS:
            have = [r for r in runs if s in r["scores"]]
            for gt in GTS if have else ():
                row = {"protocol": protocol, "model": model, "set": s, "gt": gt}
                row["seeds"] = sorted(r["seed"] for r in have)
                for f in FIGURES:
                    row[f] = mean_sd([score(r, s, gt)[f] for r in have])
                rows.append(row)
    return rows


def paired(a_runs: list[dict], b_runs: list[dict], s: str, gt: str) -> dict | None:
    """B - A on per-image MRE (final variants), per common seed and pooled (per-image MRE
    averaged over the common seeds); None without a common seed."""
    a = {r["seed"]: r for r in a_runs if s in r["per_image"]}
    b = {r["seed"]: r for r in b_runs if s in r["per_image"]}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    per_seed, diffs = {}, []
    for seed in seeds:
        ra, rb = a[seed], b[seed]
        if ra["per_image"][s]["image_id"] != rb["per_image"][s]["image_id"]:
            raise SystemExit(f"seed {seed}: the runs scored different {s} images")
        ea = np.array(ra["per_image"][s][f"{final_variant(ra, s)}.{gt}"])
        eb = np.array(rb["per_image"][s][f"{final_variant(rb, s)}.{gt}"])
        d = eb - ea
        per_seed[str(seed)] = {"mre_diff": float(d.mean()), "p": float(signed_rank_test(d)["p_value"])}
        diffs.append(d)
    pooled = np.mean(diffs, axis=0)
    spread = mean_sd([v["mre_diff"] for v in per_seed.values()])
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "mre_diff": spread,
        "pooled_p": float(signed_rank_test(pooled)["p_value"]),
    }


def choose_protocol(rows: list[dict], model: str = "maht_net") -> dict:
    """The protocol with the lowest validation MRE against the mean of both doctors; a lead
    smaller than the seed-to-seed SD is no lead (then: the one that generalised at least as
    well on validation with the smaller SD is not preferred over the other; both are named)."""
    val = [r for r in rows if r["model"] == model and r["set"] == "val" and r["gt"] == "mean"]
    if not val:
        return {"chosen": None, "why": "no validation scores yet"}
    val.sort(key=lambda r: r["mre_mm"]["mean"])
    best = val[0]
    ties = [
        r["protocol"]
        for r in val[1:]
        if r["mre_mm"]["mean"] - best["mre_mm"]["mean"] <= max(best["mre_mm"]["sd"], r["mre_mm"]["sd"])
    ]
    seeds = len(best["seeds"])
    why = (
        f"lowest validation MRE against the mean of both doctors ({best['mre_mm']['mean']:.3f} mm, "
        f"{seeds} seed{'s' * (seeds > 1)})"
    )
    if ties:
        why += f"; not distinguishable from {', '.join(ties)} (difference within the seed SD)"
    if seeds < 3:
        why += "; provisional until three seeds"
    return {"chosen": best["protocol"], "tied_with": ties, "why": why}


def _fmt(v: dict, digits: int = 3) -> str:
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}" if v["sd"] else f"{v['mean']:.{digits}f}"


def headline(rows: list[dict]) -> list[str]:
    """One line per protocol and model: validation (mean of doctors), Test1 and Test2 against
    both ground truths, Test2's largest error (the README's table)."""
    by = {(r["protocol"], r["model"], r["set"], r["gt"]): r for r in rows}
    cols = ["model", "training labels", "seeds", "val, mean", "Test1, official", "Test1, mean"]
    cols += ["Test2, official", "Test2, mean", "Test2 max (mm)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for protocol, model in sorted(
        {(r["protocol"], r["model"]) for r in rows}, key=lambda k: (k[1] != "maht_net", k)
    ):
        key = (protocol, model)
        seeds = ",".join(map(str, by[(*key, "test1", "official")]["seeds"]))
        cells = [MODEL_NAMES.get(model, model), protocol, seeds]
        for s, gt, f, d in (
            ("val", "mean", "mre_mm", 3),
            ("test1", "official", "mre_mm", 3),
            ("test1", "mean", "mre_mm", 3),
            ("test2", "official", "mre_mm", 3),
            ("test2", "mean", "mre_mm", 3),
            ("test2", "official", "max_mm", 1),
        ):
            cells.append(_fmt(by[(*key, s, gt)][f], d) if (*key, s, gt) in by else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


MODEL_NAMES = {"maht_net": "MAHT-Net", "baseline": "U-Net"}
README_START = "<!-- protocol-study table: written by scripts/protocol_study.py table -->"
README_END = "<!-- protocol-study table end -->"


def published_rows() -> list[str]:
    """The literature's Test1 / Test2 MREs as rows of the headline table (best Test1 first)."""
    methods = sorted(load_literature()["methods"], key=lambda m: (m["test1"]["mre_mm"], m["name"]))
    rows = []
    for m in methods:
        cells = [f"*published* {m['name']}, {m['input']}, {m['hardware']}", "senior", "-", "-"]
        for split in ("test1", "test2"):
            cells += [f"{m[split]['mre_mm']:.2f}" if split in m else "-", "-"]
        rows.append("| " + " | ".join([*cells, "-"]) + " |")
    return rows


def update_readme(readme: Path, lines: list[str]) -> None:
    """Replace what lies between the README's protocol-table markers with ``lines``."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no '{README_START}' ... '{README_END}' block to rewrite")
    block = "\n".join([README_START, "", *lines, "", README_END])
    new = text[:start] + block + text[end + len(README_END) :]
    atomic_write(readme, lambda tmp: tmp.write_text(new))


def markdown(rows: list[dict], tests: dict, choice: dict) -> str:
    cols = ["protocol", "model", "seeds", "set", "ground truth", "MRE (mm)", "SDR 2 mm (%)", "SDR 4 mm (%)"]
    head = "| " + " | ".join([*cols, "max (mm)", "> 15 mm"]) + " |"
    lines = [
        "# Training-protocol study",
        "",
        "Generated by `python scripts/protocol_study.py table` from the run snapshots in "
        "`docs/protocol/runs/` (`docs/protocol.json` holds every figure). Final decoding variant "
        "(shape-consistent + refiner where trained); mean ± SD over seeds (no SD: one seed).",
        "",
        "The protocols (`data.gt`, the only setting that differs; `profiles.yaml`): **senior**, "
        "the official annotation of 001-300 (the literature's protocol); **mean**, the mean of both "
        "doctors; **doctors**, each training draw labelled with one doctor's annotation at random "
        "(their disagreement as label noise, at the same compute). Every model is scored on its "
        "validation images, Test1 and Test2 against the challenge's official ground truth and "
        "against the mean of both doctors. The protocol is chosen on validation against the mean "
        "of both doctors only; Test1 and Test2 are read once per reported model.",
        "",
        f"**Chosen on validation:** {choice['chosen']} ({choice['why']}).",
        "",
        "MRE (mm) of the final decoding variant, mean ± SD over seeds:",
        "",
        *headline(rows),
        "",
        "## Every figure",
        "",
        head,
        "|" + " --- |" * (head.count("|") - 1),
    ]
    for r in rows:
        seeds = ",".join(map(str, r["seeds"]))
        cells = [r["protocol"], r["model"], seeds, r["set"], r["gt"], _fmt(r["mre_mm"])]
        cells += [_fmt(r[k], 1) for k in ("sdr_2mm", "sdr_4mm", "max_mm", "n_over_15mm")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Paired tests (B - A, per-image MRE, Wilcoxon)", ""]
    lines += [
        "| comparison | set | ground truth | seeds | MRE diff (mm) | p per seed | p pooled |",
        "|" + " --- |" * 7,
    ]
    for name, by_set in tests.items():
        for key, t in by_set.items():
            s, gt = key.split(".")
            ps = ", ".join(f"{k}: {v['p']:.2g}" for k, v in t["per_seed"].items())
            cells = [name, s, gt, str(len(t["seeds"])), _fmt(t["mre_diff"]), ps, f"{t['pooled_p']:.2g}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A difference smaller than the seed-to-seed SD is no difference.", ""]
    return "\n".join(lines)


def comparisons(groups: dict[tuple[str, str], list[dict]], reference: str) -> dict[str, dict]:
    """Each protocol against the reference protocol (MAHT-Net), and MAHT-Net against the U-Net
    under each protocol where both ran."""
    pairs = []
    for protocol, model in sorted(groups):
        if model == "maht_net" and protocol != reference and (reference, model) in groups:
            pairs.append(
                (f"maht_net: {protocol} - {reference}", groups[(reference, model)], groups[(protocol, model)])
            )
        if model == "maht_net" and (protocol, "baseline") in groups:
            pairs.append(
                (
                    f"{protocol}: maht_net - baseline",
                    groups[(protocol, "baseline")],
                    groups[(protocol, model)],
                )
            )
    out = defaultdict(dict)
    for name, a, b in pairs:
        for s in SETS:
            for gt in GTS:
                t = paired(a, b, s, gt)
                if t is not None:
                    out[name][f"{s}.{gt}"] = t
    return dict(out)


def table(runs_dir: Path, out_md: Path, out_json: Path, reference: str, readme: Path | None = None) -> None:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in load_runs(runs_dir):
        groups[(run["protocol"], run["model"])].append(run)
    rows = summary_rows(groups)
    tests = comparisons(groups, reference)
    choice = choose_protocol(rows)
    write_json(out_json, {"chosen": choice, "rows": rows, "tests": tests, "reference": reference})
    atomic_write(out_md, lambda tmp: tmp.write_text(markdown(rows, tests, choice)))
    if readme is not None:
        update_readme(readme, [*headline(rows), *published_rows()])
    print(f"{len(rows)} rows, {sum(len(v) for v in tests.values())} paired tests -> {out_md}, {out_json}")
    print(f"chosen on validation: {choice['chosen']} ({choice['why']})")


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
    args = parser.parse_args()
    if args.command == "snapshot":
        for rev in args.rev:
            print(f"{rev} -> {snapshot(rev, args.model, args.out_dir)}")
    else:
        table(args.runs, args.out, args.json, args.reference, args.readme)


if __name__ == "__main__":
    main()
