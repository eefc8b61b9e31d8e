"""Stage and command: evaluate a checkpoint, or an ensemble of checkpoints (several
``--checkpoint`` files: predictions averaged), with MRE, SD, median, SDR and per-landmark
errors at the original image resolution.

Pipeline (DVC) use, on the prepared test split::

    python stages/evaluate.py --checkpoint data/models/baseline.pt \\
        --prepared data/prepared/test.npz --out metrics/baseline.json --plots plots/baseline

Any checkpoint on any dataset root and split::

    python stages/evaluate.py --checkpoint CKPT --data-root ../shared/datasets/isbi2015 \\
        --split Test1Data --gt mean --out FILE.json
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mahtnet.checkpoint import load_checkpoint  # noqa: E402
from mahtnet.config import flatten, load_params, to_dict  # noqa: E402
from mahtnet.data.isbi import list_split  # noqa: E402
from mahtnet.data.preprocess import PreparedSet, prepare  # noqa: E402
from mahtnet.evaluate import evaluate  # noqa: E402
from mahtnet.tracking import start_run  # noqa: E402


def load_data(args: argparse.Namespace) -> tuple[PreparedSet, str]:
    if args.prepared:
        return PreparedSet.load(args.prepared), str(args.prepared)
    height, width = load_checkpoint(args.checkpoint[0])["meta"]["input_size"]
    root = Path(args.data_root)
    dataset = args.dataset or ("synthetic" if (root / "dataset.yaml").is_file() else "isbi2015")
    samples = list_split(root, args.split, args.gt, dataset)
    return prepare(samples, height, width), f"{root}/{args.split} (gt {args.gt})"


def main() -> None:
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
    parser.add_argument("--device", default="auto")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    params = load_params(args.params)
    data, source_name = load_data(args)
    logged = {
        "evaluate": to_dict(params.evaluate),
        "checkpoint": " ".join(map(str, args.checkpoint)),
        "data": source_name,
    }
    with start_run(params.tracking, f"evaluate:{args.out.stem}", logged) as run:
        result = evaluate(
            args.checkpoint, data, params.evaluate.sdr_thresholds_mm, args.device, params.evaluate.batch_size
        )
        result.write(args.out, args.plots, args.per_image)
        summary = result.summary()
        run.log_metrics(flatten(json.loads(args.out.read_text())))
        for path in (args.out, args.per_image):
            if path:
                run.log_artifact(path)
        if args.plots:
            for path in sorted(args.plots.iterdir()):
                run.log_artifact(path, "plots")
    sdr = " / ".join(f"{summary[k]:.1f}" for k in summary if k.startswith("sdr_"))
    print(
        f"{' + '.join(map(str, args.checkpoint))} on {source_name}: MRE {summary['mre_mm']:.3f} mm "
        f"({summary['mre_px']:.2f} px), SDR {sdr} %, {summary['images']} images"
    )
    by_gt = result.by_ground_truth()
    print("  " + ", ".join(f"{gt} {v['mre_mm']:.3f} mm" for gt, v in by_gt.items()))
    acc = result.clinical()["accuracy"]
    print("  clinical classification accuracy %: " + ", ".join(f"{k} {v:.1f}" for k, v in acc.items()))


if __name__ == "__main__":
    main()
