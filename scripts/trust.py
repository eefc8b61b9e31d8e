"""Know when it is wrong (:mod:`mahtnet.decoding.trust`): the signals of the released model on
the ISBI images, the fitted trust block of its card, and the trust benchmark.

    python scripts/trust.py signals     # the release on the 400 ISBI images -> docs/trust/signals.json
    python scripts/trust.py fit         # thresholds from training + validation images -> the card's "trust"
    python scripts/trust.py benchmark   # positives, mirrored, negatives, flags, bound -> metrics/trust.json,
                                        # docs/trust.md

``fit`` reads the training images (001-150; the validation ones are the release's seed-42 split)
only; ``benchmark`` reads Test1 and Test2 once, to report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mahtnet.data.images import read_xray
from mahtnet.data.preprocess import split_train_val
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.decoding.trust import BLUR_MM, TrustModel, fit, read_checked, sharpness
from mahtnet.errors import run_cli
from mahtnet.io import atomic_write, write_json
from mahtnet.studies.adaptation import truths

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared/datasets/isbi2015"
SIGNALS = REPO / "docs/trust/signals.json"
CARD = REPO / "src/mahtnet/release/card.json"
SPLITS = {"train": ("TrainingData", range(1, 151)), "test1": ("Test1Data", range(151, 301))}
SPLITS["test2"] = ("Test2Data", range(301, 401))
SPACING = 0.1
KEYS = ("coarse_confidence", "argmax_residual_sd", "residual_sd", "shape_shift_mm", "refine_shift_mm")
KEYS += ("members_spread_mm",)  # an ensemble's (the release's); absent for one network


def image_path(root: Path, image_id: str) -> Path:
    i = int(image_id)
    split = next(folder for folder, ids in SPLITS.values() if i in ids)
    return root / "RawImage" / split / f"{image_id}.jpg"


def reader():
    r = load_reader(ReaderSpec.release(threads=2))
    return lambda pixels, spacing: r.read_images([pixels], [spacing])


def signals(root: Path, out: Path) -> None:
    read = reader()
    doc = {"spacing_mm": SPACING, "images": {}}
    ids = [f"{i:03d}" for _, r in SPLITS.values() for i in r]
    for image_id in tqdm(ids, desc="signals", unit="image", disable=None):
        x = read_xray(image_path(root, image_id))
        r = read(x.pixels, SPACING)
        doc["images"][image_id] = {
            "shape": list(x.pixels.shape),
            "final": np.round(r.final[0], 3).tolist(),
            "confidence": np.round(r.confidence[0], 4).tolist(),
            **{k: np.round(r.signals[k][0], 4).tolist() for k in KEYS if k in r.signals},
        }
    write_json(out, doc)


def _errors(doc: dict, root: Path, ids: list[str], gt: str = "mean") -> np.ndarray:
    pred = np.array([doc["images"][i]["final"] for i in ids])
    return np.linalg.norm(pred - truths(root, ids)[gt], axis=-1) * doc["spacing_mm"]


def _sig(doc: dict, ids: list[str]) -> list[dict]:
    return [{k: np.asarray(doc["images"][i][k]) for k in KEYS if k in doc["images"][i]} for i in ids]


MADE = {  # training images made into what the model must not read as upright cephalograms
    "mirrored": lambda im: im[:, ::-1],
    "rotated 90": lambda im: np.rot90(im, 1),
    "rotated 180": lambda im: np.rot90(im, 2),
    "rotated 270": lambda im: np.rot90(im, 3),
    "left half": lambda im: im[:, : im.shape[1] // 2],
    "top half": lambda im: im[: im.shape[0] // 2],
}


def made_negatives(root: Path, ids: list[str]) -> tuple[list[dict], list[float], list[float]]:
    """For the looser limits (:meth:`TrustModel.readable`): the signals of every 10th training
    image made into each of :data:`MADE`; the sharpness of every training image, and of each
    blurred by :data:`BLUR_MM`."""
    read = reader()
    made, sharp, blurred = [], [], []
    for n, image_id in enumerate(tqdm(ids, desc="made negatives", unit="image", disable=None)):
        px = read_xray(image_path(root, image_id)).pixels
        sharp.append(sharpness(px))
        blurred.append(sharpness(cv2.GaussianBlur(px, (0, 0), BLUR_MM / SPACING)))
        if n % 10 == 0:
            for turn in MADE.values():
                r = read(np.ascontiguousarray(turn(px)), SPACING)
                made.append({k: v[0] for k, v in r.signals.items()})
    return made, sharp, blurred


def fit_card(root: Path, doc: dict, card_path: Path) -> TrustModel:
    card = json.loads(card_path.read_text())
    seed = int(card["training"]["seed"])
    ids = [f"{i:03d}" for i in SPLITS["train"][1]]
    _, val_idx = split_train_val(len(ids), 0.1, seed)
    val = [ids[i] for i in val_idx]
    made, sharp, blurred = made_negatives(root, ids)
    trust = fit(
        _sig(doc, ids),
        [tuple(doc["images"][i]["shape"]) for i in ids],
        doc["spacing_mm"],
        _sig(doc, val),
        np.array([doc["images"][i]["confidence"] for i in val]),
        _errors(doc, root, val),
        _errors(doc, root, ids),
        train_sharpness=sharp,
        blurred_sharpness=blurred,
        negative_signals=made,
        min_side_px=min(load_reader(ReaderSpec.release()).codec.input_size),  # the network's input side
        fitted_on=(
            f"scripts/trust.py fit: image level and the bound's scale on the 150 ISBI training images "
            f"(the looser limits against every 10th of them mirrored, turned and halved, and all of them "
            f"blurred by {BLUR_MM:g} mm), "
            f"flags and the conformal quantile on the {len(val)} validation images of the seed-{seed} split "
            "(errors against the mean of both doctors, the model's training labels)"
        ),
    )
    card["trust"] = trust.to_dict()
    write_json(card_path, card)
    return trust


# ------------------------------------------------------------------------------------ benchmark


def negatives(root: Path) -> dict[str, list[np.ndarray]]:
    """At least ten kinds of images that are not (whole, upright) lateral cephalograms: made here
    or shipped by installed packages (matplotlib's sample photographs, pydicom's CT and MR test
    files), and changed ISBI Test2 images (halves, heavy blur, rotations)."""
    import matplotlib
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    h, w = 2400, 1935
    photos = Path(matplotlib.get_data_path()) / "sample_data"

    def gray(path: Path, side: int = 2000) -> np.ndarray:
        im = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        scale = side / max(im.shape)
        return cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)

    def dicom(name: str, side: int | None = None) -> np.ndarray:
        px = read_xray(Path(get_testdata_file(name))).pixels
        if side is None:
            return px
        return cv2.resize(px, (side, side), interpolation=cv2.INTER_CUBIC)

    test2 = [read_xray(image_path(root, f"{i:03d}")).pixels for i in range(301, 306)]
    return {
        "uniform noise": [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(3)],
        "flat grey": [np.full((h, w), v, np.uint8) for v in (0, 128, 255)],
        "gradient": [
            np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1)),
            np.tile(np.linspace(0, 255, h).astype(np.uint8)[:, None], (1, w)),
        ],
        "tiny (8x8)": [np.zeros((8, 8), np.uint8), np.full((8, 8), 200, np.uint8)],
        "huge and empty (6000x6000)": [np.zeros((6000, 6000), np.uint8)],
        "photograph (matplotlib sample)": [
            gray(photos / "grace_hopper.jpg"),
            gray(photos / "Minduka_Present_Blue_Pack.png"),
        ],
        "CT (pydicom test file)": [dicom("CT_small.dcm"), dicom("CT_small.dcm", 2000)],
        "MR (pydicom test file)": [dicom("MR_small.dcm"), dicom("MR_small.dcm", 2000)],
        "half a skull (crop)": [np.ascontiguousarray(im[:, : im.shape[1] // 2]) for im in test2[:3]]
        + [np.ascontiguousarray(im[: im.shape[0] // 2]) for im in test2[3:]],
        "heavy blur (sigma 3 mm)": [cv2.GaussianBlur(im, (0, 0), 30) for im in test2],
        "rotated 90": [np.ascontiguousarray(np.rot90(im, 1)) for im in test2],
        "rotated 180": [np.ascontiguousarray(np.rot90(im, 2)) for im in test2],
        "rotated 270": [np.ascontiguousarray(np.rot90(im, 3)) for im in test2],
    }


def landmark_level(doc: dict, root: Path, trust: TrustModel, s: str, unusual: set[str]) -> dict:
    """Flags and the bound on one test set against the mean of both doctors, all landmarks and
    those where the doctors agree within 2 mm (a reliable label); every landmark of an
    ``unusual`` image is flagged (:meth:`TrustModel.check_first`)."""
    ids = [f"{i:03d}" for i in SPLITS[s][1]]
    t = truths(root, ids)
    err = _errors(doc, root, ids)
    agree = np.linalg.norm(t["senior"] - t["junior"], axis=-1) * doc["spacing_mm"] <= 2.0
    flags = np.stack(
        [
            trust.check_first(i in unusual, sig, np.asarray(doc["images"][i]["confidence"]))
            for sig, i in zip(_sig(doc, ids), ids, strict=True)
        ]
    )
    expected, bound = trust.bounds()
    out = {}
    for name, mask in (("all", np.ones_like(agree)), ("doctors_agree_2mm", agree)):
        e, f = err[mask], flags[mask]
        out[name] = {
            "landmarks": int(mask.sum()),
            "flagged": int(f.sum()),
            "flag_rate": float(f.mean()),
            **{
                f"over_{t}mm": {"n": int((e > t).sum()), "flagged": int(((e > t) & f).sum())} for t in (4, 10)
            },
            "bound_coverage": float((err <= bound)[mask].mean()),
            "mre_mm": float(e.mean()),
            "mean_expected_mm": float(np.broadcast_to(expected, err.shape)[mask].mean()),
        }
    return out


def benchmark(root: Path, doc: dict, trust: TrustModel, out_json: Path, out_md: Path) -> dict:
    read = reader()
    ids = sorted(doc["images"])
    positives = {"refused": [], "unusual": [], "verdicts": {}}
    for i in tqdm(ids, desc="positives", unit="image", disable=None):
        c = read_checked(read, trust, read_xray(image_path(root, i)).pixels, SPACING)
        positives["verdicts"][c.verdict] = positives["verdicts"].get(c.verdict, 0) + 1
        if c.refused:
            positives["refused"].append(i)
        elif c.unusual:
            positives["unusual"].append(i)
    mirrored = {"verdicts": {}, "unusual": 0, "max_abs_diff_mm": 0.0, "mre_diff_mm": []}
    start = time.perf_counter()
    for i in tqdm(ids, desc="mirrored", unit="image", disable=None):
        px = read_xray(image_path(root, i)).pixels
        c = read_checked(read, trust, np.ascontiguousarray(px[:, ::-1]), SPACING)
        mirrored["verdicts"][c.verdict] = mirrored["verdicts"].get(c.verdict, 0) + 1
        mirrored["unusual"] += int(c.unusual)
        if c.readout is not None:
            back = c.readout.final[0].copy()
            back[:, 0] = px.shape[1] - 1 - back[:, 0]  # the mirrored image's points -> the original's
            d = np.linalg.norm(back - np.asarray(doc["images"][i]["final"]), axis=-1) * SPACING
            mirrored["max_abs_diff_mm"] = max(mirrored["max_abs_diff_mm"], float(d.max()))
    mirrored["seconds_per_image"] = (time.perf_counter() - start) / len(ids)
    neg = {}
    for kind, images in tqdm(negatives(root).items(), desc="negatives", unit="kind", disable=None):
        verdicts = [read_checked(read, trust, im, SPACING).verdict for im in images]
        neg[kind] = {
            "images": len(images),
            "verdicts": verdicts,
            "all_refused": all(v in ("rotated", "not_a_lateral_cephalogram", "too_small") for v in verdicts),
        }
    result = {
        "trust": trust.to_dict(),
        "positives": {"images": len(ids), **positives},
        "mirrored": mirrored,
        "negatives": neg,
        "landmarks": {
            s: landmark_level(doc, root, trust, s, set(positives["unusual"])) for s in ("test1", "test2")
        },
    }
    write_json(out_json, result)
    atomic_write(out_md, lambda tmp: tmp.write_text(markdown(result)))
    return result


def trust_keys() -> tuple[str, ...]:
    return KEYS


def markdown(r: dict) -> str:
    t = r["trust"]
    lines = [
        "# Know when it is wrong: the trust benchmark",
        "",
        "Generated by `python scripts/trust.py benchmark` (every figure: `metrics/trust.json`), on the "
        "released model with the `trust` block of its card (`python scripts/trust.py fit`: fitted on the "
        "training and validation images only).",
        "",
        "## Image-level verdict",
        "",
        f"A reading fits when the median coarse confidence is at least {t['min_median_confidence']:.3f} and "
        f"the median shape residual of the arg-max landmarks at most {t['max_median_residual_sd']:.2f} SD; "
        f"too small below {t['min_side_px']} px or {t['min_fov_mm']:.0f} mm on the short side. "
        f"One that does not fit, as it is or mirrored or turned, is read as **unusual** (every landmark "
        f"to check) while its median confidence is at least {t['refuse_min_median_confidence']:.3f}, its "
        f"median residual at most {t['refuse_max_median_residual_sd']:.2f} SD and its sharpness at least "
        f"{t['refuse_min_sharpness']:.4f} (halfway between the training images and the same images "
        "mirrored, turned, halved or blurred by 3 mm); otherwise it is refused.",
        "",
        f"- **Positives**: {r['positives']['images']} ISBI images, verdicts "
        + ", ".join(f"{k} {v}" for k, v in r["positives"]["verdicts"].items())
        + f"; refused: {len(r['positives']['refused'])} ({', '.join(r['positives']['refused']) or 'none'}); "
        f"unusual: {', '.join(r['positives']['unusual']) or 'none'}.",
        f"- **Mirrored** (all {r['positives']['images']} flipped left-right): verdicts "
        + ", ".join(f"{k} {v}" for k, v in r["mirrored"]["verdicts"].items())
        + f" (of which unusual {r['mirrored']['unusual']})"
        + "; largest landmark difference from the unflipped reading "
        + f"{r['mirrored']['max_abs_diff_mm']:.4f} mm; "
        f"{r['mirrored']['seconds_per_image']:.2f} s per image (two readings).",
        "",
        "| negative kind | images | verdicts | all refused |",
        "| --- | --- | --- | --- |",
    ]
    for kind, n in r["negatives"].items():
        v = ", ".join(f"{x} {n['verdicts'].count(x)}" for x in sorted(set(n["verdicts"])))
        lines.append(f"| {kind} | {n['images']} | {v} | {'yes' if n['all_refused'] else '**no**'} |")
    lines += [
        "",
        "## Landmarks: flags and the error bound (against the mean of both doctors)",
        "",
        f"Flagged: refiner confidence below {t['flag_min_confidence']:.3f}, or moved more than "
        f"{t['flag_max_refine_shift_mm']:.2f} mm by the refiner, or more than "
        f"{t['flag_max_residual_sd']:.2f} SD from where the shape prior puts it"
        + (
            ""
            if t.get("flag_max_spread_mm") is None
            else f", or the ensemble's members more than {t['flag_max_spread_mm']:.2f} mm apart "
            "(mean distance from their mean)"
        )
        + "; every landmark of an unusual image. "
        f"Bound: {t['coverage']:.0%} split-conformal, "
        f"{t['bound_quantile']:.2f} x each landmark's scale.",
        "",
        "| set | landmarks | flagged | > 4 mm (flagged) | > 10 mm (flagged) | bound coverage | MRE "
        "| mean expected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s, block in r["landmarks"].items():
        for name, b in block.items():
            cells = [
                f"{s}, {name.replace('_', ' ')}",
                str(b["landmarks"]),
                f"{b['flagged']} ({b['flag_rate']:.1%})",
                f"{b['over_4mm']['n']} ({b['over_4mm']['flagged']})",
                f"{b['over_10mm']['n']} ({b['over_10mm']['flagged']})",
                f"{b['bound_coverage']:.1%}",
                f"{b['mre_mm']:.3f}",
                f"{b['mean_expected_mm']:.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("signals", "fit", "benchmark"))
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.command == "signals":
        signals(args.root, SIGNALS)
        return
    doc = json.loads(SIGNALS.read_text())
    if args.command == "fit":
        t = fit_card(args.root, doc, CARD)
        print(json.dumps(t.to_dict(), indent=1))
        return
    trust = TrustModel.from_dict(json.loads(CARD.read_text())["trust"])
    r = benchmark(args.root, doc, trust, REPO / "metrics/trust.json", REPO / "docs/trust.md")
    print(markdown(r))


if __name__ == "__main__":
    run_cli(main)
