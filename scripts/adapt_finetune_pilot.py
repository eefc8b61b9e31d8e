"""Pilot (issue 40): fine-tune the released refiner on a clinic's k corrected images, against the
per-landmark offsets of the adaptation study, on the study's own random draws.

    python scripts/adapt_finetune_pilot.py prepare    # the release on Test1 + Test2: positions
                                                      # before refinement and the fine images
                                                      # (a cache outside the repository) + checks
    python scripts/adapt_finetune_pilot.py run --target test1-junior --setting lr1e-4 --ks 10 --draws 0 1
    python scripts/adapt_finetune_pilot.py report     # chosen setting, table -> the JSON

Per adaptation: the refiner (``refiner.onnx`` mapped onto the project's U-Net,
:mod:`mahtnet.training.finetune_refiner`) is fine-tuned on the k training images of a draw (patches around
the release's shape-consistent positions, jittered / rotated / zoomed), then refines the draw's
other images of the target from the same positions; scored against the target doctor beside
zero-shot, the ``mean`` and ``shrunk`` offsets (:func:`mahtnet.studies.adaptation.adapt_points`,
the study's prior) and the fine-tuned refiner plus a ``shrunk`` offset fitted on its own
predictions of the k images. Draws: the study's (``default_rng(seed + target index)``, 50
permutations per k in ``KS`` order; draw ``d`` is the d-th of its k). Settings are chosen on
``test1-junior`` only. Every result is written to ``docs/adaptation/finetune_pilot.json`` as
soon as it exists (a rerun skips what is there). One thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"
ZERO_SHOT = REPO / "docs/adaptation/zero_shot.json"
OUT = REPO / "docs/adaptation/finetune_pilot.json"
CACHE = Path(tempfile.gettempdir()) / "mahtnet-finetune-pilot"
STUDY_DRAWS, STUDY_SEED = 50, 0  # the study's (scripts/adaptation_study.py run)
SPACING = 0.1
SETS = {"test1": ("Test1Data", range(151, 301)), "test2": ("Test2Data", range(301, 401))}
METHODS = ("zero_shot", "mean", "shrunk", "finetuned", "finetuned+shrunk")


def settings_table():
    from mahtnet.training.finetune_refiner import FinetuneSettings

    return {
        "lr1e-4": FinetuneSettings(steps=100, lr=1e-4),
        "lr5e-4": FinetuneSettings(steps=100, lr=5e-4),
        "lr5e-4-decoder": FinetuneSettings(steps=100, lr=5e-4, train="decoder"),
    }


# ----------------------------------------------------------------------------- prepare


def cache_path(name: str) -> Path:
    return CACHE / f"{name}.npz"


def prepare(root: Path, zero_shot: dict) -> dict:
    """The release (ONNX, 1 thread) on Test1 and Test2: every variant's landmarks and the fine
    (0.3 mm) images, cached; checks that the refined landmarks are ``zero_shot.json``'s and that
    the PyTorch refiner reproduces them from the shape-consistent positions."""
    import torch

    from mahtnet.data.fine import fine_from_images
    from mahtnet.data.isbi import read_image
    from mahtnet.decoding.recipe import ReaderSpec, load_reader
    from mahtnet.training.finetune_refiner import refine, refiner_from_onnx

    reader = load_reader(ReaderSpec.release(pixel_spacing_mm=SPACING, threads=1, device="cpu"))
    spacing_fine = reader.refiner.card.spacing_mm
    checks = {}
    for name, (folder, ids) in SETS.items():
        ids = [f"{i:03d}" for i in ids]
        start = time.perf_counter()
        shape, refined, fine_parts = [], [], []
        for b in range(0, len(ids), 8):
            images = [read_image(root / "RawImage" / folder / f"{i}.jpg") for i in ids[b : b + 8]]
            out = reader.read_images(images, [SPACING] * len(images))
            shape.append(out.landmarks["shape"])
            refined.append(out.landmarks["refined"])
            blank = np.zeros((len(images), 19, 2))
            fine_parts.append(fine_from_images(images, [SPACING] * len(images), spacing_fine, blank))
        seconds = time.perf_counter() - start
        fine = {
            "images": np.concatenate([f.images for f in fine_parts]),
            "sizes": np.concatenate([f.sizes for f in fine_parts]),
            "scales": np.concatenate([f.scales for f in fine_parts]),
        }
        shape, refined = np.concatenate(shape), np.concatenate(refined)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path(name), ids=np.array(ids), shape=shape, refined=refined, **fine)
        zs = np.array([zero_shot["predictions"][i] for i in ids])
        checks[name] = {
            "images": len(ids),
            "release_seconds_1_thread": round(seconds, 1),
            "refined_vs_zero_shot_json_max_px": float(np.abs(refined - zs).max()),
            "shape_vs_refined_mean_mm": float(np.linalg.norm(refined - shape, axis=-1).mean() * SPACING),
        }
    # the PyTorch refiner (mapped from the ONNX) on the shape positions of 10 Test2 images
    torch.set_num_threads(1)
    model, card = refiner_from_onnx(REPO / "src/mahtnet/release/refiner.onnx")
    data = load_set("test2", np.zeros((100, 19, 2)))
    sub = np.arange(10)
    ours = refine(model, card, data["fine"].subset(sub), data["shape"][sub])
    checks["torch_refiner_vs_onnx_refined_max_px_10_test2_images"] = float(
        np.abs(ours - data["refined"][sub]).max()
    )
    return checks


def load_set(name: str, truth: np.ndarray) -> dict:
    """The cached set: ids, shape / refined landmarks and a FineSet whose labels are ``truth``."""
    from mahtnet.data.fine import FineSet

    z = np.load(cache_path(name))
    n = len(z["ids"])
    fine = FineSet(
        ids=z["ids"],
        images=z["images"],
        sizes=z["sizes"],
        scales=z["scales"],
        landmarks_orig=np.asarray(truth, np.float64),
        spacing=np.full(n, SPACING),
        senior_orig=np.asarray(truth, np.float64),
        junior_orig=np.asarray(truth, np.float64),
    )
    return {"ids": list(z["ids"]), "shape": z["shape"], "refined": z["refined"], "fine": fine}


# ----------------------------------------------------------------------------- run


def study_draws(name: str, n: int) -> dict[int, list[np.ndarray]]:
    """The study's permutations of the target's images per k (studies.adaptation.run_target)."""
    from mahtnet.studies.adaptation import KS, TARGETS

    rng = np.random.default_rng(STUDY_SEED + list(TARGETS).index(name))
    return {k: [rng.permutation(n) for _ in range(STUDY_DRAWS)] for k in KS}


def figures(points: np.ndarray, truth: np.ndarray) -> dict:
    from mahtnet import metrics

    e = metrics.radial_errors_mm(points, truth, SPACING)
    return {"mre_mm": metrics.mre(e), "sdr_2mm": metrics.sdr(e, 2.0), "n_over_10mm": int((e > 10).sum())}


def load_doc() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def save_doc(doc: dict) -> None:
    from mahtnet.io import write_json

    write_json(OUT, doc)


def run(root: Path, zero_shot: dict, name: str, setting: str, ks, draw_ids) -> None:
    import torch

    from mahtnet.decoding.conventions import fit
    from mahtnet.studies.adaptation import adapt_points, prior_variance, target
    from mahtnet.training.finetune_refiner import finetune_refiner, refine, refiner_from_onnx

    torch.set_num_threads(1)
    s = settings_table()[setting]
    card_seed = json.loads((REPO / "src/mahtnet/release/card.json").read_text())["training"]["seed"]
    prior = prior_variance(zero_shot, root, int(card_seed))
    t = target(zero_shot, root, name)
    data = load_set(name.split("-")[0], t.truth)
    if data["ids"] != t.ids:
        raise RuntimeError("cached images are not the target's")
    base, card = refiner_from_onnx(REPO / "src/mahtnet/release/refiner.onnx")
    perms = study_draws(name, len(t.ids))
    doc = load_doc()
    doc.setdefault("settings", {})[setting] = dataclasses.asdict(s)
    runs = doc.setdefault("runs", {}).setdefault(setting, {}).setdefault(name, {})
    for k in ks:
        for d in draw_ids:
            if str(d) in runs.get(str(k), {}):
                print(f"{setting} {name} k={k} draw {d}: done, skipped")
                continue
            perm = perms[k][d]
            train, test = perm[:k], perm[k:]
            row = {"train_ids": [t.ids[i] for i in train], "n_test": len(test)}
            row["zero_shot"] = figures(t.predicted[test], t.truth[test])
            for m in ("mean", "shrunk"):
                row[m] = figures(adapt_points(m, t, train, test, prior)[0], t.truth[test])
            model = copy.deepcopy(base)
            info = finetune_refiner(model, card, data["fine"].subset(train), data["shape"][train], s)
            start = time.perf_counter()
            pred = refine(model, card, data["fine"].subset(test), data["shape"][test])
            own = refine(model, card, data["fine"].subset(train), data["shape"][train])
            eval_s = time.perf_counter() - start
            row["finetuned"] = figures(pred, t.truth[test])
            conv = fit("shrunk", own, t.truth[train], SPACING, prior)
            row["finetuned+shrunk"] = figures(conv.apply(pred, SPACING), t.truth[test])
            row["finetune"] = {**info, "predict_seconds": round(eval_s, 1)}
            row["finetuned_train_images_mre_mm"] = figures(own, t.truth[train])["mre_mm"]
            row["load_average_1min"] = round(os.getloadavg()[0], 2)
            doc = load_doc()  # re-read: write only this row into what is there
            doc.setdefault("settings", {})[setting] = dataclasses.asdict(s)
            slot = doc.setdefault("runs", {}).setdefault(setting, {}).setdefault(name, {})
            slot.setdefault(str(k), {})[str(d)] = row
            runs = slot
            save_doc(doc)
            print(
                f"{setting} {name} k={k} draw {d}: "
                + "  ".join(f"{m} {row[m]['mre_mm']:.3f}" for m in METHODS)
                + f"  ({info['seconds']:.0f} s fine-tuning, loss {info['loss_first']:.3f} -> "
                f"{info['loss_last']:.3f}, {eval_s:.0f} s predicting)",
                flush=True,
            )


# ----------------------------------------------------------------------------- report


def summarise(rows: dict) -> dict:
    from mahtnet.analysis.stats import mean_sd

    out = {m: mean_sd([r[m]["mre_mm"] for r in rows.values()]) for m in METHODS}
    out["finetuned_minus_shrunk"] = mean_sd(
        [r["finetuned"]["mre_mm"] - r["shrunk"]["mre_mm"] for r in rows.values()]
    )
    out["finetuned_better_than_shrunk_draws"] = int(
        sum(r["finetuned"]["mre_mm"] < r["shrunk"]["mre_mm"] for r in rows.values())
    )
    out["finetune_seconds"] = mean_sd([r["finetune"]["seconds"] for r in rows.values()])
    out["draws"] = [int(d) for d in rows]
    return out


def check_draws(root: Path, zero_shot: dict, names, ks) -> dict:
    """The draws are the study's: the mean over all its 50 draws of the ``mean`` / ``shrunk`` MRE
    recomputed from :func:`study_draws` against ``docs/adaptation.json`` (NumPy only, seconds)."""
    from mahtnet.studies.adaptation import adapt_points, prior_variance, target

    card_seed = json.loads((REPO / "src/mahtnet/release/card.json").read_text())["training"]["seed"]
    prior = prior_variance(zero_shot, root, int(card_seed))
    study = json.loads((REPO / "docs/adaptation.json").read_text())["targets"]
    out = {}
    for name in names:
        t = target(zero_shot, root, name)
        perms = study_draws(name, len(t.ids))
        for k in ks:
            for m in ("mean", "shrunk"):
                ours = np.mean(
                    [
                        figures(adapt_points(m, t, p[:k], p[k:], prior)[0], t.truth[p[k:]])["mre_mm"]
                        for p in perms[int(k)]
                    ]
                )
                theirs = study[name][str(k)]["methods"][m]["mre_mm"]["mean"]
                out[f"{name} k={k} {m}"] = {"recomputed": float(ours), "docs/adaptation.json": theirs}
    return out


def report(root: Path, zero_shot: dict) -> dict:
    from mahtnet.studies.adaptation import SELECTION_TARGET

    doc = load_doc()
    runs = doc["runs"]
    # the choice: lowest fine-tuned MRE on the selection target over the (k, draw) pairs every
    # setting ran
    pairs = None
    for per in runs.values():
        have = {(k, d) for k, rows in per.get(SELECTION_TARGET, {}).items() for d in rows}
        pairs = have if pairs is None else pairs & have
    pairs = sorted(pairs or [])
    score = {
        s: float(np.mean([per[SELECTION_TARGET][k][d]["finetuned"]["mre_mm"] for k, d in pairs]))
        for s, per in runs.items()
        if pairs
    }
    chosen = min(score, key=score.get)
    doc["chosen"] = {
        "setting": chosen,
        "on": SELECTION_TARGET,
        "by": "lowest fine-tuned MRE averaged over the (k, draw) pairs every setting ran",
        "pairs": [[int(k), int(d)] for k, d in pairs],
        "mre_mm": score,
        "finetuned+shrunk_mre_mm": {  # not the criterion; shown beside it
            s: float(np.mean([per[SELECTION_TARGET][k][d]["finetuned+shrunk"]["mre_mm"] for k, d in pairs]))
            for s, per in runs.items()
        },
        "shrunk_mre_mm": float(
            np.mean([next(iter(runs.values()))[SELECTION_TARGET][k][d]["shrunk"]["mre_mm"] for k, d in pairs])
        ),
    }
    doc["table"] = {
        s: {name: {k: summarise(rows) for k, rows in per_k.items()} for name, per_k in per.items()}
        for s, per in runs.items()
    }
    for per in doc["table"].values():
        for per_k in per.values():
            for row in per_k.values():
                d = row["finetuned_minus_shrunk"]
                row["finding"] = (
                    f"fine-tuned {'worse' if d['mean'] > 0 else 'better'} than shrunk by "
                    f"{abs(d['mean']):.3f} ± {d['sd']:.3f} mm over {len(row['draws'])} draws"
                )
    names = sorted({name for per in runs.values() for name in per})
    ks = sorted({int(k) for per in runs.values() for p in per.values() for k in p})
    doc.setdefault("checks", {})["draws_match_study"] = check_draws(root, zero_shot, names, ks)
    save_doc(doc)
    print(f"chosen on {SELECTION_TARGET}: {chosen} ({', '.join(f'{s} {v:.3f}' for s, v in score.items())})")
    print("| setting | target | k | draws | " + " | ".join(METHODS) + " | s fine-tuning |")
    print("|" + " --- |" * (len(METHODS) + 5))
    for s, per in doc["table"].items():
        for name, per_k in per.items():
            for k, row in sorted(per_k.items(), key=lambda kv: int(kv[0])):
                cells = [f"{row[m]['mean']:.3f} ± {row[m]['sd']:.3f}" for m in METHODS]
                sec = row["finetune_seconds"]
                print(
                    f"| {s} | {name} | {k} | {len(row['draws'])} | "
                    + " | ".join(cells)
                    + f" | {sec['mean']:.0f} ± {sec['sd']:.0f} |"
                )
    return doc


def header(checks: dict | None = None) -> None:
    from mahtnet.studies.adaptation import KS

    doc = load_doc()
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    doc.update(
        {
            "what": (
                "Pilot of issue 40: the released refiner fine-tuned on k corrected images of a target "
                "vs the adaptation study's per-landmark offsets (mean, shrunk), on the study's draws. "
                "Few-shot figures: scored on the target's other images against the target doctor."
            ),
            "base_model": json.loads(ZERO_SHOT.read_text())["model"],
            "draws_from": (
                f"studies.adaptation.run_target's RNG: default_rng({STUDY_SEED} + target index in TARGETS), "
                f"{STUDY_DRAWS} permutations per k in KS={list(KS)} order; draw d = the d-th of its k; "
                "train = perm[:k], test = perm[k:]"
            ),
            "methods": {
                "zero_shot": "the release as shipped (zero_shot.json)",
                "mean": "conventions.fit('mean') on the k images' zero-shot predictions",
                "shrunk": (
                    "conventions.fit('shrunk', prior = "
                    "studies.adaptation.prior_variance(zero_shot, root, 42))"
                ),
                "finetuned": (
                    "the refiner (refiner.onnx mapped onto the project's U-Net, BatchNorm fused) "
                    "fine-tuned on the k images, applied to the shape-consistent positions of the test images"
                ),
                "finetuned+shrunk": (
                    "finetuned plus a shrunk offset fitted on the fine-tuned refiner's own predictions of "
                    "the k training images (in-sample: those residuals understate the test ones)"
                ),
            },
            "scope": (
                "refiner only (19 landmark channels, one shared network); the coarse network "
                "(maht_net.onnx) and its head were not fine-tuned in this pilot; 3 draws per target and "
                "k (the study has 50), so SDs are rough"
            ),
            "cpu": {
                "model": cpu,
                "torch_threads": 1,
                "note": "2 cores shared with other jobs: wall-clock seconds are an upper bound",
                "python": platform.python_version(),
            },
        }
    )
    if checks is not None:
        doc["checks"] = checks
    save_doc(doc)


def main() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=ROOT)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("run")
    r.add_argument("--target", required=True)
    r.add_argument("--setting", required=True)
    r.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    r.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    sub.add_parser("report")
    args = parser.parse_args()
    zero_shot = json.loads(ZERO_SHOT.read_text())
    if args.command == "prepare":
        checks = prepare(args.root, zero_shot)
        header(checks)
        print(json.dumps(checks, indent=2))
    elif args.command == "run":
        header()
        run(args.root, zero_shot, args.target, args.setting, args.ks, args.draws)
    else:
        report(args.root, zero_shot)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    from mahtnet.errors import run_cli

    run_cli(main)
