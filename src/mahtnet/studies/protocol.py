"""The training-protocol study: which training labels generalise (issue: "Generalisation first").

From every run snapshot (:mod:`mahtnet.studies.snapshots`, one per protocol, model and seed):
mean +- SD over seeds per protocol and model, paired Wilcoxon tests per seed and pooled against
the reference protocol, MAHT-Net against the U-Net under each protocol, and the protocol chosen
**on validation only** (validation images scored against the mean of both doctors);
``docs/protocol.md``, ``docs/protocol.json`` and the README's headline table (between
:data:`README_START` and :data:`README_END`: the study's rows, then the published results).
``scripts/protocol_study.py`` snapshots runs and writes the table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mahtnet.analysis.literature import load_literature
from mahtnet.analysis.stats import mean_sd
from mahtnet.io import atomic_write, write_json
from mahtnet.studies.snapshots import GTS, SETS, errors, paired_over_seeds, scores

FIGURES = ("mre_mm", "sd_mm", "sdr_2mm", "sdr_4mm", "max_mm", "n_over_10mm", "n_over_15mm")


def load_runs(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        raise FileNotFoundError(f"no run snapshots in {folder} (protocol_study.py snapshot first)")
    return runs


def final_variant(run: dict, s: str) -> str:
    return list(run["scores"][s]["variants"])[-1]


def score(run: dict, s: str, gt: str) -> dict:
    """The final decoding variant's figures."""
    return scores(run, s, gt, final_variant(run, s))


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

    def by_seed(runs: list[dict]) -> dict:
        return {r["seed"]: errors(r, s, f"{final_variant(r, s)}.{gt}") for r in runs if s in r["per_image"]}

    res = paired_over_seeds(by_seed(a_runs), by_seed(b_runs))
    if res is None:
        return None
    return {
        "seeds": res["seeds"],
        "per_seed": res["per_seed"],
        "mre_diff": mean_sd([v["mre_diff"] for v in res["per_seed"].values()]),
        "pooled_p": res["pooled_p"],
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
    """The literature's Test1 / Test2 MREs as rows of the headline table, each in the columns of
    the ground truth it was scored against (``compare_with``; marked † where that is inferred):
    the deep-learning rows beside our mean-of-doctors columns, the challenge rows beside the
    official ones. Best Test1 first within each ground truth."""
    methods = sorted(
        load_literature()["methods"],
        key=lambda m: (m["compare_with"] != "mean", m["test1"]["mre_mm"], m["name"]),
    )
    rows = []
    for m in methods:
        mark = "†" if m["ground_truth"] == "unknown" else ""
        named = ", ".join(v for v in (m["name"], m["input"], m["hardware"]) if v != "not printed")
        cells = [f"*published* {named}", "-", "-", "-"]
        for split in ("test1", "test2"):
            mre = m.get(split, {}).get("mre_mm")
            for col in GTS:
                cells.append(f"{mre:.2f}{mark}" if col == m["compare_with"] and mre is not None else "-")
        rows.append("| " + " | ".join([*cells, "-"]) + " |")
    return rows


PUBLISHED_NOTE = (
    "† ground truth not stated in any text readable here; set beside the mean-of-doctors columns, "
    "as the deep-learning loaders of this benchmark average both doctors (evidence per row: "
    "`src/mahtnet/data/literature.yaml`). The challenge rows were scored by the organisers against "
    "the official files. Published figures as printed in Table 1 of Ao & Wu 2022."
)


def reference_rows(path: Path | None) -> list[str]:
    """Another method's public predictions scored here (``docs/reference.json``,
    :mod:`mahtnet.studies.reference`): every column filled, by our evaluator."""
    if path is None or not path.is_file():
        return []
    doc = json.loads(path.read_text())
    row = doc["row"]
    named = f"*scored here* {row['label']}, {row['input']}, {row['hardware']}"
    cells = [named, row["training_labels"], "1", "-"]
    for s in ("test1", "test2"):
        cells += [f"{doc['sets'][s]['scores'][gt]['mre_mm']:.3f}" for gt in GTS]
    cells.append(f"{doc['sets']['test2']['scores']['official']['max_mm']:.1f}")
    return ["| " + " | ".join(cells) + " |"]


def update_readme(readme: Path, lines: list[str]) -> None:
    """Replace what lies between the README's protocol-table markers with ``lines``."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no '{README_START}' ... '{README_END}' block to rewrite")
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


def table(
    runs_dir: Path,
    out_md: Path,
    out_json: Path,
    reference: str,
    readme: Path | None = None,
    side_by_side: Path | None = None,
) -> dict:
    """Writes ``out_md``, ``out_json`` (and ``readme``'s headline table, with the row of the
    scored public predictions in ``side_by_side`` where given); returns the choice."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in load_runs(runs_dir):
        groups[(run["protocol"], run["model"])].append(run)
    rows = summary_rows(groups)
    tests = comparisons(groups, reference)
    choice = choose_protocol(rows)
    write_json(out_json, {"chosen": choice, "rows": rows, "tests": tests, "reference": reference})
    atomic_write(out_md, lambda tmp: tmp.write_text(markdown(rows, tests, choice)))
    if readme is not None:
        lines = [*headline(rows), *reference_rows(side_by_side), *published_rows()]
        update_readme(readme, [*lines, "", PUBLISHED_NOTE])
    return choice | {"rows": len(rows), "tests": sum(len(v) for v in tests.values())}
