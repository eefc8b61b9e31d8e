"""Stage and command: evaluate a checkpoint, or an ensemble of checkpoints (several
``--checkpoint`` files: predictions averaged), with MRE, SD, median, SDR and per-landmark
errors at the original image resolution, on every evaluated set against the dataset's official
ground truth and against the mean of both doctors (``<set>.official.mre_mm``,
``<set>.mean.mre_mm``, ...).

Pipeline (DVC) use, on the prepared folder: the validation split, the test split
(``data.test_split``, named e.g. ``test1``) and each of ``data.extra_test_splits``
(``test2``)::

    python stages/evaluate.py --checkpoint data/models/baseline.pt \
        --prepared data/prepared --out metrics/baseline.json --plots plots/baseline

One prepared split (``--prepared data/prepared/test.npz``), or any checkpoint on any dataset
root and split::

    python stages/evaluate.py --checkpoint CKPT --data-root ../shared/datasets/isbi2015 \
        --split Test2Data --out FILE.json

Decoding beyond the arg-max, each a variant reported beside the previous one (``variants``
in the JSON; the headline figures are the last variant's): ``--shape-prior`` (the
shape_prior stage's model; used when ``evaluate.shape_decode``), then ``--refiner`` (a
train_refine checkpoint, on ``--fine`` images or, with ``--data-root``, images resampled
here). ``evaluate.tta_shifts_px`` / ``tta_scales`` add test-time augmentation. Plots and the
per-image CSVs (``compare``'s input) are of the test split; ``--sets-dir`` holds every set's
predictions in every variant. On a terminal, progress bars on stderr (per set, and per
image within one).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mahtnet.analysis.evaluation import evaluate_variants, load_ensemble, write_csv
from mahtnet.analysis.explain import attention_figures
from mahtnet.config import flatten, load_params, to_dict
from mahtnet.data.fine import FineSet, prepare_fine
from mahtnet.data.isbi import list_split
from mahtnet.data.preprocess import PreparedSet, prepare, split_key
from mahtnet.decoding.recipe import ReaderSpec
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.models.checkpoint import read_card
from mahtnet.tracking import start_run


def prepared_sets(args: argparse.Namespace, params) -> dict[str, tuple[Path, Path | None]]:
    """``{set name: (prepared file, fine file or None)}`` of ``--prepared`` / ``--fine``: a
    folder gives ``val``, the test split and every extra test split (named by
    :func:`split_key`), a file the one set (``test.npz``: the test split's name)."""
    test = split_key(params.data.test_split)
    if args.prepared.is_dir():
        files = {"val": "val.npz", test: "test.npz"}
        files.update({split_key(s): f"{split_key(s)}.npz" for s in params.data.extra_test_splits})
        fine = args.fine if args.fine is None or args.fine.is_dir() else None
        if args.fine is not None and fine is None:
            raise SystemExit(f"--prepared {args.prepared} is a folder, so --fine must be one too")
        return {k: (args.prepared / f, fine / f if fine else None) for k, f in files.items()}
    name = test if args.prepared.stem == "test" else args.prepared.stem
    return {name: (args.prepared, args.fine)}


def load_sets(args: argparse.Namespace, params) -> dict[str, tuple[PreparedSet, list | None, Path | None]]:
    """Each evaluated set: the prepared images, the dataset samples (``--data-root``) and the
    fine-resolution file of the refiner (``--fine``)."""
    if args.prepared:
        return {k: (PreparedSet.load(p), None, f) for k, (p, f) in prepared_sets(args, params).items()}
    height, width = read_card(args.checkpoint[0]).input_size
    root = Path(args.data_root)
    dataset = args.dataset or ("synthetic" if (root / "dataset.yaml").is_file() else "isbi2015")
    samples = list_split(root, args.split, "mean", dataset)
    return {split_key(args.split): (prepare(samples, height, width), samples, None)}


def reader_spec(args: argparse.Namespace, params) -> ReaderSpec:
    """The recipe evaluated: the (first) checkpoint with shape-consistent decoding, TTA and the
    refiner, as configured."""
    e = params.evaluate
    return ReaderSpec(
        args.checkpoint[0],
        shape_prior=args.shape_prior if e.shape_decode else None,
        refiner=args.refiner,
        tta_shifts_px=tuple(e.tta_shifts_px),
        tta_scales=tuple(e.tta_scales),
        candidates=e.shape_candidates,
        device=args.device,
    )


def fine_set(refiner, samples: list | None, fine: Path | None) -> FineSet | None:
    """The refiner's images of one set: the prepare_fine file, or (``--data-root``) the
    samples resampled here; None without a refiner."""
    if refiner is None:
        return None
    if fine:
        return FineSet.load(fine)
    if samples is not None:
        return prepare_fine(samples, refiner.card.spacing_mm)
    raise SystemExit("--refiner with --prepared needs --fine (the prepare_fine stage's split)")


def variant_summaries(results: dict, gt: str = "official") -> dict[str, dict]:
    """Each variant's scores against ``gt``, and how many landmarks shape decoding moved to
    another peak."""
    out = {name: r.summary(gt) for name, r in results.items()}
    if "shape" in results:
        moved = np.linalg.norm(results["shape"].pred - results["coarse"].pred, axis=-1) > 1e-6
        out["shape"]["n_switched"] = int(moved.sum())
    return out


def set_block(results: dict) -> dict:
    """One set's entry of the metrics JSON: the last variant's scores (:meth:`Evaluation.block`)
    and every variant's against the official ground truth and the mean of both doctors."""
    block = list(results.values())[-1].block()
    block["images"] = len(list(results.values())[-1].ids)
    block["variants"] = variant_summaries(results)
    block["variants_mean"] = variant_summaries(results, "mean")
    return block


SUMMARY_KEYS = ("mre_mm", "sdr_2mm", "sdr_4mm", "max_mm", "n_over_15mm")


def summary(out: dict) -> dict:
    """The dozen figures a reader compares, per set: the final variant against the official
    ground truth and the mean of both doctors, and the coarse + shape-consistent variant (the
    network without the refiner) against the official one."""
    figures = {}
    for name, block in out.items():
        s = {"official": {k: block["official"][k] for k in SUMMARY_KEYS}}
        s["mean"] = {k: block["mean"][k] for k in ("mre_mm", "sdr_2mm")}
        if "shape" in block["variants"]:
            s["shape_official"] = {"mre_mm": block["variants"]["shape"]["mre_mm"]}
        figures[name] = s
    return figures


def write_predictions(folder: Path, name: str, results: dict) -> None:
    """Every variant's landmarks (original px) and confidences of one set, and its per-image
    errors against the official ground truth and the mean of both doctors (paired tests)."""
    for variant, result in results.items():
        write_csv(folder / f"{name}_{variant}_predictions.csv", result.predictions())
        for gt in ("official", "mean"):
            write_csv(folder / f"{name}_{variant}_errors_{gt}.csv", result.per_image(gt))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, nargs="+", help="several: an ensemble")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prepared", type=Path, help="the preprocess stage's folder, or one prepared split (.npz) of it"
    )
    source.add_argument("--data-root", type=Path, help="dataset root in the ISBI 2015 layout")
    parser.add_argument("--split", default="Test1Data", help="with --data-root")
    parser.add_argument("--dataset", choices=("isbi2015", "synthetic"), help="default: auto")
    parser.add_argument("--out", required=True, type=Path, help="summary metrics JSON")
    parser.add_argument("--plots", type=Path, help="folder for per-landmark and SDR-curve CSVs")
    parser.add_argument("--per-image", type=Path, help="CSV of per-image, per-landmark errors")
    parser.add_argument("--shape-prior", type=Path, help="shape model (.npz) of the shape_prior stage")
    parser.add_argument("--refiner", type=Path, help="refinement checkpoint of the train_refine stage")
    parser.add_argument(
        "--fine", type=Path, help="with --prepared: the prepare_fine folder, or the split's file"
    )
    parser.add_argument("--coarse-per-image", type=Path, help="CSV of the coarse (arg-max) variant's errors")
    parser.add_argument("--sets-dir", type=Path, help="folder for every set's predictions in every variant")
    parser.add_argument(
        "--summary", type=Path, help="the headline figures of every set (dvc exp show's columns)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser


def print_summary(name: str, results: dict, checkpoints: list[Path]) -> None:
    result = list(results.values())[-1]
    for variant, r in results.items():
        v, m = r.summary(), r.summary("mean")
        print(
            f"  {name} {variant:8s} MRE {v['mre_mm']:.3f} mm (mean of doctors {m['mre_mm']:.3f}), "
            f"SDR 4 mm {v['sdr_4mm']:.1f} %, max {v['max_mm']:.1f} mm, {v['n_over_10mm']} over 10 mm"
        )
    summary = result.summary()
    sdr = " / ".join(f"{summary[k]:.1f}" for k in summary if k.startswith("sdr_"))
    print(
        f"{' + '.join(map(str, checkpoints))} on {name}: MRE {summary['mre_mm']:.3f} mm "
        f"({summary['mre_px']:.2f} px) against the official ground truth, SDR {sdr} %, "
        f"{summary['images']} images"
    )
    by_gt = result.by_ground_truth()
    print("  " + ", ".join(f"{gt} {v['mre_mm']:.3f} mm" for gt, v in by_gt.items()))
    acc = result.clinical()["accuracy"]
    print("  clinical classification accuracy %: " + ", ".join(f"{k} {v:.1f}" for k, v in acc.items()))


def write_primary(args: argparse.Namespace, results: dict) -> None:
    """Plots and per-image CSVs of the test split (the compare stage's input)."""
    result = list(results.values())[-1]
    result.write(args.plots, args.per_image)
    if args.plots and len(args.checkpoint) == 1:
        attention_figures(args.checkpoint[0], result, args.plots)  # MAHT-Net only
    if args.coarse_per_image:
        write_csv(args.coarse_per_image, results["coarse"].per_image())


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    params = load_params(args.params)
    sets = load_sets(args, params)
    primary = split_key(params.data.test_split) if len(sets) > 1 else next(iter(sets))
    logged = {
        "evaluate": to_dict(params.evaluate),
        "checkpoint": " ".join(map(str, args.checkpoint)),
        "data": str(args.prepared or f"{args.data_root}/{args.split}"),
        "sets": " ".join(sets),
        "refiner": str(args.refiner),
    }
    with start_run(params.tracking, f"evaluate:{args.out.stem}", logged) as run:
        e, t0, out, all_results = params.evaluate, time.perf_counter(), {}, {}
        readers = load_ensemble(reader_spec(args, params), args.checkpoint[1:], e.batch_size)
        for name, (data, samples, fine) in tqdm(sets.items(), desc="evaluate", unit="set", disable=None):
            fine_data = fine_set(readers[0].refiner, samples, fine)
            results = evaluate_variants(readers, data, e.sdr_thresholds_mm, fine_data, name)
            out[name], all_results[name] = set_block(results), results
            if args.sets_dir:
                write_predictions(args.sets_dir, name, results)
        write_primary(args, all_results[primary])
        write_json(args.out, {**out, "seconds": time.perf_counter() - t0})
        if args.summary:
            write_json(args.summary, summary(out))
        run.log_metrics({k: v for k, v in flatten(json.loads(args.out.read_text())).items()})
        for path in (args.out, args.per_image):
            if path:
                run.log_artifact(path)
        if args.plots:
            for path in sorted(args.plots.iterdir()):
                run.log_artifact(path, "plots")
    for name, results in all_results.items():
        print_summary(name, results, args.checkpoint)


if __name__ == "__main__":
    run_cli(main)
