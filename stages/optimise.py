"""Stage: the deployment trade-off table (``metrics/optimise.json``) and its plot, MRE against
onnxruntime latency: the full MAHT-Net, its INT8 file, and smaller models (the U-Net, the
students with and without the teacher, the pruned MAHT-Nets), all on the same test images::

    python stages/optimise.py --full maht_net=data/models/stage3.pt --int8 data/models/maht_net.int8.onnx \\
        --model student=data/models/student.pt --model distilled=data/models/distill.pt \\
        --pruned data/models/pruned --prepared data/prepared/test.npz --out metrics/optimise.json \\
        --plot plots/optimise/mre_vs_latency.png
"""

import argparse
from pathlib import Path

from mahtnet.analysis.plots import plot_tradeoff
from mahtnet.config import load_params
from mahtnet.data.preprocess import PreparedSet
from mahtnet.deploy.export import named_path
from mahtnet.deploy.tradeoffs import pruned_models, tradeoff
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", required=True, type=named_path, help="NAME=CHECKPOINT of the full model")
    parser.add_argument("--int8", type=Path, help="the full model's INT8 ONNX file (quantize stage)")
    parser.add_argument("--model", type=named_path, action="append", default=[], help="NAME=CHECKPOINT")
    parser.add_argument("--pruned", type=Path, help="folder of the train_prune stages (sparsity_<pct>.pt)")
    parser.add_argument("--prepared", required=True, type=Path, help="test split (test.npz)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--plot", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = load_params()
    data = PreparedSet.load(args.prepared)
    with start_run(params.tracking, "optimise", {"full": str(args.full[1]), "int8": str(args.int8)}) as run:
        models = dict(args.model) | pruned_models(args.pruned)
        rows = tradeoff(
            args.full, args.int8, models, data, params.evaluate.sdr_thresholds_mm,
            params.compare.bootstrap_samples, args.repeats, params.optimise.peak_memory,
        )  # fmt: skip
        write_json(args.out, rows)
        plot_tradeoff(rows, args.plot)
        for name, row in rows.items():
            run.log_metrics({f"{name}_{k}": v for k, v in row.items() if isinstance(v, float)})
        run.log_artifact(args.plot)
    for name, r in rows.items():
        diff = f", {r['mre_diff_mm']:+.3f} mm (p {r['wilcoxon_p']:.3g})" if "mre_diff_mm" in r else ""
        ort = f"{r['onnxruntime_1_threads_ms']:.1f} / {r['onnxruntime_2_threads_ms']:.1f} ms"
        rss = f", peak RSS {r['onnxruntime_peak_rss_mb']:.0f} MB" if "onnxruntime_peak_rss_mb" in r else ""
        print(
            f"{name:16s} MRE {r['mre_mm']:.3f} mm{diff}, SDR 2 mm {r['sdr_2mm']:.1f} %, "
            f"{r['parameters'] / 1e6:.2f} M params, {r['onnx_mb']:.1f} MB, onnxruntime {ort} "
            f"(1 / 2 threads){rss}"
        )


if __name__ == "__main__":
    run_cli(main)
