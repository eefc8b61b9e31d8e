"""Another method's public predictions, scored side by side with this project's models.

A *reference* is a folder of landmark predictions made elsewhere on the ISBI 2015 test images
(``test1_predictions.json``, ``test2_predictions.json``: ``{"151": [[x, y] x 19], ...}`` in
original-image pixels, the ISBI landmark order; ``README.md`` says where they come from), such
as ``../shared/reference/isbi2015-delr/``. :func:`score` reads them with the project's own
metrics against every ground truth (the challenge's official files, the mean of both doctors,
each doctor), and :func:`paired` compares them per image with the recommended protocol's runs
(the protocol study's snapshots, :mod:`mahtnet.studies.snapshots`): ours minus the reference,
per seed and pooled over seeds, Wilcoxon signed-rank. Nothing is tuned on a reference: it is
read here, once per reported model, like a test set.

``scripts/reference.py`` writes ``docs/reference.json`` and ``docs/reference.md``; the README's
headline table (:mod:`mahtnet.studies.protocol`) shows its row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mahtnet import metrics
from mahtnet.analysis.stats import mean_sd
from mahtnet.data.isbi import ISBI_PIXEL_SPACING_MM, load_challenge, load_doctors
from mahtnet.io import atomic_write, write_json
from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.studies.snapshots import errors, paired_over_seeds

SET_FILES = {"test1": "test1_predictions.json", "test2": "test2_predictions.json"}
SET_IDS = {"test1": range(151, 301), "test2": range(301, 401)}
REFERENCE_GTS = ("official", "mean", "senior", "junior")
SDR_MM = (2.0, 2.5, 3.0, 4.0)
PAIRED_GTS = ("official", "mean")  # the ground truths the run snapshots keep per image


def load_predictions(folder: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each set's ``(image ids, points (N, 19, 2))``; a missing file, a missing or unknown
    image, a wrong landmark count or a non-finite value is a one-line error naming the file."""
    out = {}
    for s, name in SET_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: reference predictions not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
        want = [f"{i:03d}" for i in SET_IDS[s]]
        if not isinstance(raw, dict) or sorted(raw) != want:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            missing = sorted(set(want) - set(got)) if isinstance(raw, dict) else want
            extra = sorted(set(got) - set(want)) if isinstance(raw, dict) else []
            raise ValueError(
                f"{path}: expected images {want[0]}-{want[-1]}; missing {missing[:3]}, unexpected {extra[:3]}"
            )
        points = []
        for image_id in want:
            p = np.asarray(raw[image_id], dtype=np.float64)
            if p.shape != (NUM_LANDMARKS, 2):
                want_shape = (NUM_LANDMARKS, 2)
                raise ValueError(f"{path}: image {image_id} has shape {p.shape}, expected {want_shape}")
            if not np.all(np.isfinite(p)):
                raise ValueError(f"{path}: image {image_id} has a NaN or infinite coordinate")
            points.append(p)
        out[s] = (want, np.stack(points))
    return out


def ground_truths(root: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """``(N, 19, 2)`` per ground truth: the official files, the mean of both doctors, each doctor."""
    senior, junior = (np.stack(a) for a in zip(*(load_doctors(root, i) for i in ids), strict=True))
    challenge = np.stack([load_challenge(root, i) for i in ids])
    return {"official": challenge, "mean": (senior + junior) / 2.0, "senior": senior, "junior": junior}


def figures(err: np.ndarray) -> dict:
    """MRE, SDRs and gross errors of an ``(N, 19)`` error array, as the evaluate stage reports them."""
    out = metrics.summarize(err, SDR_MM)
    out.update(metrics.gross_errors(err))
    out["n_over_15mm"] = int((err > 15.0).sum())
    out["images"] = int(err.shape[0])
    return out


def score(predictions: dict[str, tuple[list[str], np.ndarray]], root: Path) -> dict:
    """Per set and ground truth: the figures and the per-image MRE (for the paired tests)."""
    out = {}
    for s, (ids, pred) in predictions.items():
        gts = ground_truths(root, ids)
        out[s] = {"image_id": ids, "scores": {}, "per_image": {}}
        for gt, points in gts.items():
            err = metrics.radial_errors_mm(pred, points, ISBI_PIXEL_SPACING_MM)
            out[s]["scores"][gt] = figures(err)
            out[s]["per_image"][gt] = [round(float(v), 4) for v in err.mean(axis=1)]
    return out


def paired(scored: dict, runs: list[dict], variant: str = "refined") -> dict:
    """Ours minus the reference on per-image MRE (negative: ours better), per set and ground
    truth, for each run's seed and pooled over seeds (:func:`paired_over_seeds`)."""
    out = {}
    for s, ref in scored.items():
        for gt in PAIRED_GTS:
            have = [r for r in runs if s in r["per_image"]]
            ref_errors = np.asarray(ref["per_image"][gt])
            a = {r["seed"]: (ref["image_id"], ref_errors) for r in have}
            b = {r["seed"]: errors(r, s, f"{variant}.{gt}") for r in have}
            res = paired_over_seeds(a, b)
            if res is None:
                continue
            ours = [float(np.mean(b[k][1])) for k in res["seeds"]]
            out[f"{s}.{gt}"] = {
                "seeds": res["seeds"],
                "ours_mre": mean_sd(ours),
                "reference_mre": float(ref_errors.mean()),
                "mre_diff": mean_sd([v["mre_diff"] for v in res["per_seed"].values()]),
                "per_seed": res["per_seed"],
                "pooled_p": res["pooled_p"],
                "ours_max": mean_sd([_max_error(r, s, variant, gt) for r in have]),
            }
            out[f"{s}.{gt}"]["verdict"] = verdict(out[f"{s}.{gt}"])
    return out


def verdict(t: dict, alpha: float = 0.05) -> str:
    """``ours closer`` / ``reference closer`` where the mean difference exceeds our seed-to-seed
    SD and the pooled test rejects at ``alpha``; otherwise ``no difference``."""
    d = t["mre_diff"]["mean"]
    if abs(d) <= t["ours_mre"]["sd"] or t["pooled_p"] >= alpha:
        return "no difference"
    return "ours closer" if d < 0 else "reference closer"


def _max_error(run: dict, s: str, variant: str, gt: str) -> float:
    block = run["scores"][s]["variants" if gt == "official" else "variants_mean"][variant]
    return float(block["max_mm"])


def markdown(name: str, source: str, scored: dict, tests: dict, model: str) -> str:
    lines = [
        f"# Side-by-side reference: {name}",
        "",
        f"Generated by `python scripts/reference.py` from `{source}` (its README says where the "
        "predictions come from and how that model was trained). Scored here with the project's own "
        "metrics (`mahtnet.metrics`, 0.1 mm/px) against each ground truth; `docs/reference.json` "
        "holds every figure. Nothing in this project was tuned or chosen on these predictions.",
        "",
        "| set | ground truth | MRE (mm) | SD (mm) | SDR 2 / 2.5 / 3 / 4 mm (%) | max (mm) | > 10 mm |",
        "|" + " --- |" * 7,
    ]
    for s, block in scored.items():
        for gt in REFERENCE_GTS:
            f = block["scores"][gt]
            sdr = " / ".join(f"{f[metrics.sdr_key(t)]:.1f}" for t in SDR_MM)
            cells = [s, gt, f"{f['mre_mm']:.3f}", f"{f['sd_mm']:.3f}", sdr, f"{f['max_mm']:.1f}"]
            lines.append("| " + " | ".join([*cells, str(f["n_over_10mm"])]) + " |")
    lines += [
        "",
        f"## Paired with {model} (per image, ours minus the reference)",
        "",
        "Per seed of the recommended recipe (the protocol study's runs, final decoding variant: "
        "coarse network, shape-consistent decoding, refiner; seed 42 is the released model) on the "
        "same images; Wilcoxon signed-rank per seed, and pooled on the per-image differences "
        "averaged over seeds. Negative: ours is closer.",
        "",
        "| set | ground truth | ours, MRE (mm) | reference (mm) | ours - reference (mm) | p per seed "
        "| p pooled | verdict | ours, max (mm) | reference, max (mm) |",
        "|" + " --- |" * 10,
    ]
    for key, t in tests.items():
        s, gt = key.split(".")
        ps = ", ".join(f"{k}: {v['p']:.2g}" for k, v in t["per_seed"].items())
        cells = [s, gt, _fmt(t["ours_mre"]), f"{t['reference_mre']:.3f}", _fmt(t["mre_diff"], sign=True), ps]
        cells += [f"{t['pooled_p']:.2g}", t["verdict"], _fmt(t["ours_max"], 1)]
        lines.append("| " + " | ".join([*cells, f"{scored[s]['scores'][gt]['max_mm']:.1f}"]) + " |")
    lines += [
        "",
        "Verdict: a difference counts only where it exceeds the seed-to-seed SD of our runs and the "
        "pooled test gives p < 0.05; otherwise no difference.",
        "",
    ]
    return "\n".join(lines)


def _fmt(v: dict, digits: int = 3, sign: bool = False) -> str:
    mean = f"{v['mean']:+.{digits}f}" if sign else f"{v['mean']:.{digits}f}"
    return f"{mean} ± {v['sd']:.{digits}f}" if v["sd"] else mean


def write(
    folder: Path,
    root: Path,
    runs: list[dict],
    out_json: Path,
    out_md: Path,
    name: str,
    row: dict,
    model: str = "MAHT-Net, mean protocol",
) -> dict:
    """Score the reference in ``folder``, pair it with ``runs``, write ``out_json`` and
    ``out_md``; ``row`` (``label``, ``input``, ``hardware``, ``training_labels``) is how the
    headline table names it. ``source`` is kept relative to the repository."""
    scored = score(load_predictions(folder), root)
    tests = paired(scored, runs)
    source = _relative(folder)
    doc = {"name": name, "source": source, "row": row, "sets": scored, "paired": tests, "paired_with": model}
    write_json(out_json, doc)
    atomic_write(out_md, lambda tmp: tmp.write_text(markdown(name, source, scored, tests, model)))
    return doc


def _relative(folder: Path) -> str:
    """The folder as the repository names it (``../shared/...``), never an absolute path."""
    repo = Path(__file__).resolve().parents[3]
    try:
        return "../" + folder.resolve().relative_to(repo.parent).as_posix()
    except ValueError:
        return folder.name
