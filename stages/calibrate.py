"""Stage: calibrate a model's confidence into an expected radial error (mm), on the landmarks
``mahtnet predict`` emits with the same files (shape decoding with ``--shape-prior``, the
refiner with ``--refiner`` and ``--fine``): an isotonic map fitted on the validation images
(per landmark where there are enough of them, else pooled), cross-validated on them against a
constant guess, and checked on the test images (reliability, calibration error, per-landmark
correlation, the low-confidence flag). Errors are against the dataset's official ground truth::

    python stages/calibrate.py --checkpoint data/models/stage3.pt --shape-prior data/models/shape_prior.npz \\
        --refiner data/models/refine_maht_net.pt --fine data/fine --val data/prepared/val.npz \\
        --test data/prepared/test.npz --out data/models/calibration_maht_net.json \\
        --metrics metrics/calibration_maht_net.json --plot plots/calibration/maht_net.png

``mahtnet predict --calibration data/models/calibration_maht_net.json`` (with the same shape
prior and refiner) then reports the expected error of every landmark.
"""

import argparse
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mahtnet.analysis.calibration import (
    cross_validated,
    fit_calibration,
    flagged,
    per_landmark_spearman,
    reliability,
)
from mahtnet.analysis.plots import plot_reliability
from mahtnet.config import load_params
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader
from mahtnet.decoding.recipe import DECODING_NAMES, LOW_CONFIDENCE, ReaderSpec, load_reader
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.metrics import radial_errors_mm
from mahtnet.tracking import start_run


def load_split(
    reader: LandmarkReader, path: Path, fine_dir: Path | None
) -> tuple[PreparedSet, FineSet | None]:
    """A prepared split and, with a refiner, the same images at its resolution."""
    data = PreparedSet.load(path)
    return data, FineSet.load(fine_dir / path.name) if reader.refiner is not None else None


def errors_and_confidence(reader: LandmarkReader, data: PreparedSet, fine: FineSet | None, bar: tqdm):
    """The official-ground-truth errors ``(N, K)`` mm of the reader's final landmarks on a
    prepared split, and their confidence. Read in chunks of whole network and refiner batches
    (the same batches as the whole split's, so the same numbers), advancing ``bar`` by each
    chunk's images."""
    step = math.lcm(reader.batch_size, reader.refine_batch_size)
    final, confidence = [], []
    for start in range(0, len(data), step):
        rows = np.arange(start, min(start + step, len(data)))
        out = reader.read_prepared(data.subset(rows), None if fine is None else fine.subset(rows))
        final.append(out.final)
        confidence.append(out.confidence)
        bar.update(len(rows))
    final, confidence = np.concatenate(final), np.concatenate(confidence)
    return radial_errors_mm(final, data.official_orig, data.spacing), confidence


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--shape-prior", type=Path, help="shape_prior stage model (as predict gets it)")
    parser.add_argument("--refiner", type=Path, help="train_refine checkpoint (as predict gets it)")
    parser.add_argument("--fine", type=Path, help="prepare_fine folder (with --refiner)")
    parser.add_argument("--val", required=True, type=Path, help="validation split: the fit")
    parser.add_argument("--test", required=True, type=Path, help="test split: the check")
    parser.add_argument("--out", required=True, type=Path, help="the calibration (JSON)")
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plot", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    if args.refiner and not args.fine:
        raise SystemExit("--refiner needs --fine (the prepare_fine folder)")
    spec = ReaderSpec(
        args.checkpoint, shape_prior=args.shape_prior, refiner=args.refiner, device=params.train.device
    )  # the recipe `mahtnet predict` gets from the same files
    reader = load_reader(spec)
    card = reader.backend.card.to_dict()
    model = {
        k: card[k]
        for k in ("architecture", "input_size", "sigma", "stride", "landmark_names", "training_data")
    }
    decoding = DECODING_NAMES[reader.variants()[-1]]
    val, test = load_split(reader, args.val, args.fine), load_split(reader, args.test, args.fine)
    with tqdm(total=len(val[0]) + len(test[0]), desc="calibrate", unit="image", disable=None) as bar:
        val_err, val_conf = errors_and_confidence(reader, *val, bar)
        test_err, test_conf = errors_and_confidence(reader, *test, bar)
    fitted_for = model | {"checkpoint": str(args.checkpoint), "decoding": decoding}
    cal = fit_calibration(val_conf, val_err, fitted_for)
    write_json(args.out, cal.to_dict())
    expected = cal.expected_error(test_conf)
    rel = reliability(expected, test_err)
    summary = {
        "decoding": decoding,
        "fitted_on": f"{val_err.size} validation landmarks ({val_err.shape[0]} images)",
        "per_landmark": cal.per_landmark is not None,
        "validation_cross_validated": cross_validated(val_conf, val_err),
        "test_landmarks": int(test_err.size),
        "calibration_error_mm": rel["calibration_error_mm"],
        # per landmark: |expected - observed|, against a constant guess (the validation MRE)
        "expected_error_mae_mm": float(abs(expected - test_err).mean()),
        "constant_guess_mae_mm": float(abs(val_err.mean() - test_err).mean()),
        "reliability": rel["bins"],
        "per_landmark_spearman": per_landmark_spearman(test_conf, test_err, card["landmark_names"]),
        "low_confidence": flagged(test_conf, test_err, LOW_CONFIDENCE[decoding]),
    }
    write_json(args.metrics, summary)
    plot_reliability(rel, args.plot, f"{args.checkpoint.name}: expected vs observed error")
    with start_run(
        params.tracking, f"calibrate_{args.out.stem}", {"checkpoint": str(args.checkpoint)}
    ) as run:
        run.log_metrics({"calibration_error_mm": rel["calibration_error_mm"]})
        run.log_artifact(args.plot)
    low = summary["low_confidence"]
    mm = lambda v: "-" if v is None else f"{v:.3f}"  # no landmark on one side of the threshold
    print(
        f"{args.checkpoint}: calibration error {rel['calibration_error_mm']:.3f} mm on {test_err.size} test "
        f"landmarks; flagged {low['share']:.1%} "
        f"(MRE {mm(low['mre_flagged_mm'])} vs {mm(low['mre_other_mm'])} mm)"
    )


if __name__ == "__main__":
    run_cli(main)
