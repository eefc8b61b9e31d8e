"""Stage and command: evaluate a checkpoint, or an ensemble of checkpoints (several
``--checkpoint`` files: predictions averaged), with MRE, SD, median, SDR and per-landmark
errors at the original image resolution.

Pipeline (DVC) use, on the prepared test split::

    python stages/evaluate.py --checkpoint data/models/baseline.pt \\
        --prepared data/prepared/test.npz --out metrics/baseline.json --plots plots/baseline

Any checkpoint on any dataset root and split::

    python stages/evaluate.py --checkpoint CKPT --data-root ../shared/datasets/isbi2015 \\
        --split Test1Data --gt mean --out FILE.json

Decoding beyond the arg-max, each a variant reported beside the previous one (``variants``
in the JSON; the headline figures are the last variant's): ``--shape-prior`` (the
shape_prior stage's model; used when ``evaluate.shape_decode``), then ``--refiner`` (a
train_refine checkpoint, on ``--fine`` images or, with ``--data-root``, images resampled
here). ``evaluate.tta_shifts_px`` / ``tta_scales`` add test-time augmentation.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mahtnet.checkpoint import load_checkpoint  # noqa: E402
from mahtnet.config import flatten, load_params, to_dict  # noqa: E402
from mahtnet.data.isbi import list_split  # noqa: E402
from mahtnet.data.preprocess import PreparedSet, prepare  # noqa: E402
from mahtnet.errors import run_cli  # noqa: E402
from mahtnet.evaluate import Decoding, evaluate_variants, write_csv  # noqa: E402
from mahtnet.explain import attention_figures  # noqa: E402
from mahtnet.refine import FineSet, prepare_fine  # noqa: E402
from mahtnet.refine_train import load_refiner  # noqa: E402
from mahtnet.shape_decode import ShapePrior  # noqa: E402
from mahtnet.tracking import start_run  # noqa: E402
from mahtnet.tta import tta_transforms  # noqa: E402


def load_data(args: argparse.Namespace) -> tuple[PreparedSet, str, list | None]:
    """The prepared images, their description, and the dataset samples (``--data-root``)."""
    if args.prepared:
        return PreparedSet.load(args.prepared), str(args.prepared), None
    height, width = load_checkpoint(args.checkpoint[0])["meta"]["input_size"]
    root = Path(args.data_root)
    dataset = args.dataset or ("synthetic" if (root / "dataset.yaml").is_file() else "isbi2015")
    samples = list_split(root, args.split, args.gt, dataset)
    return prepare(samples, height, width), f"{root}/{args.split} (gt {args.gt})", samples


def decoding(args: argparse.Namespace, params, samples: list | None) -> Decoding:
    """The variants to evaluate: shape-consistent decoding, TTA and the refiner, as configured."""
    e = params.evaluate
    how = Decoding(candidates=e.shape_candidates)
    if args.shape_prior and e.shape_decode:
        how.prior = ShapePrior.load(args.shape_prior)
    if e.tta_shifts_px or e.tta_scales:
        how.transforms = tta_transforms(e.tta_shifts_px, e.tta_scales)
    if args.refiner:
        how.refiner = load_refiner(args.refiner)
        if args.fine:
            how.fine = FineSet.load(args.fine)
        elif samples is not None:
            how.fine = prepare_fine(samples, how.refiner[1]["spacing_mm"])
        else:
            raise SystemExit("--refiner with --prepared needs --fine (the prepare_fine stage's split)")
    return how


def variant_summaries(results: dict) -> dict[str, dict]:
    """Each variant's scores, and how many landmarks shape decoding moved to another peak."""
    out = {name: r.summary() for name, r in results.items()}
    if "shape" in results:
        moved = np.linalg.norm(results["shape"].pred - results["coarse"].pred, axis=-1) > 1e-6
        out["shape"]["n_switched"] = int(moved.sum())
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, nargs="+", help="several: an ensemble")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prepared", type=Path, help="prepared split (.npz) from the preprocess stage")
    source.add_argument("--data-root", type=Path, help="dataset root in the ISBI 2015 layout")
    parser.add_argument("--split", default="Test1Data", help="with --data-root")
    parser.add_argument("--gt", default="mean", choices=("mean", "senior", "junior"))
    parser.add_argument("--dataset", choices=("isbi2015", "synthetic"), help="default: auto")
    parser.add_argument("--out", required=True, type=Path, help="summary metrics JSON")
    parser.add_argument("--plots", type=Path, help="folder for per-landmark and SDR-curve CSVs")
    parser.add_argument("--per-image", type=Path, help="CSV of per-image, per-landmark errors")
    parser.add_argument("--shape-prior", type=Path, help="shape model (.npz) of the shape_prior stage")
    parser.add_argument("--refiner", type=Path, help="refinement checkpoint of the train_refine stage")
    parser.add_argument("--fine", type=Path, help="with --prepared: the split at the refiner's resolution")
    parser.add_argument("--coarse-per-image", type=Path, help="CSV of the coarse (arg-max) variant's errors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser


def print_summary(result, extra: dict, checkpoints: list[Path], source_name: str) -> None:
    summary = result.summary()
    for name, v in extra["variants"].items():
        print(
            f"  {name:8s} MRE {v['mre_mm']:.3f} mm, SDR 4 mm {v['sdr_4mm']:.1f} %, max {v['max_mm']:.1f} mm, "
            f"{v['n_over_10mm']} over 10 mm" + (f", {v['n_switched']} switched" if "n_switched" in v else "")
        )
    sdr = " / ".join(f"{summary[k]:.1f}" for k in summary if k.startswith("sdr_"))
    print(
        f"{' + '.join(map(str, checkpoints))} on {source_name}: MRE {summary['mre_mm']:.3f} mm "
        f"({summary['mre_px']:.2f} px), SDR {sdr} %, {summary['images']} images"
    )
    by_gt = result.by_ground_truth()
    print("  " + ", ".join(f"{gt} {v['mre_mm']:.3f} mm" for gt, v in by_gt.items()))
    acc = result.clinical()["accuracy"]
    print("  clinical classification accuracy %: " + ", ".join(f"{k} {v:.1f}" for k, v in acc.items()))


def main() -> None:
    args = build_parser().parse_args()

    params = load_params(args.params)
    data, source_name, samples = load_data(args)
    how = decoding(args, params, samples)
    logged = {
        "evaluate": to_dict(params.evaluate),
        "checkpoint": " ".join(map(str, args.checkpoint)),
        "data": source_name,
        "variants": " ".join(how.variants()),
        "refiner": str(args.refiner),
    }
    with start_run(params.tracking, f"evaluate:{args.out.stem}", logged) as run:
        e = params.evaluate
        t0 = time.perf_counter()
        results = evaluate_variants(
            args.checkpoint, data, e.sdr_thresholds_mm, args.device, e.batch_size, how
        )
        result = results[how.variants()[-1]]
        extra = {"variants": variant_summaries(results), "seconds": time.perf_counter() - t0}
        result.write(args.out, args.plots, args.per_image, extra=extra)
        if args.plots and len(args.checkpoint) == 1:
            attention_figures(args.checkpoint[0], result, args.plots)  # MAHT-Net only
        if args.coarse_per_image:
            write_csv(args.coarse_per_image, results["coarse"].per_image())
        run.log_metrics({f"test/{k}": v for k, v in flatten(json.loads(args.out.read_text())).items()})
        for path in (args.out, args.per_image):
            if path:
                run.log_artifact(path)
        if args.plots:
            for path in sorted(args.plots.iterdir()):
                run.log_artifact(path, "plots")
    print_summary(result, extra, args.checkpoint, source_name)


if __name__ == "__main__":
    run_cli(main)
