"""Stage: post-training static INT8 of the exported MAHT-Net (``quantize`` params), and what it
costs and buys on the test split against the float model: MRE, SDR, the paired Wilcoxon test,
the largest landmark shift, file size and batch-1 latency with 1 and 2 threads::

    python stages/quantize.py --checkpoint data/models/stage3.pt --onnx data/models/maht_net.onnx \\
        --calibration data/prepared/train.npz --prepared data/prepared/test.npz \\
        --out data/models/maht_net.int8.onnx --metrics metrics/quantize.json
"""

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mahtnet.analysis.stats import compare_paired
from mahtnet.config import load_params, to_dict
from mahtnet.data.preprocess import PreparedSet
from mahtnet.deploy.export import onnx_latency_ms
from mahtnet.deploy.mlflow_models import log_onnx_export
from mahtnet.deploy.quantize import quantize_int8
from mahtnet.deploy.tradeoffs import score_onnx
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def score(path: Path, data: PreparedSet, thresholds, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Summary (MRE, SDR, size, latency), errors ``(N, K)`` mm and landmarks of one ONNX file."""
    out, errors, pred = score_onnx(path, data, thresholds)
    out["file_mb"] = path.stat().st_size / 2**20
    out |= onnx_latency_ms(path, data.images[0], repeats, key="latency_{}_threads_ms")
    return out, errors, pred


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the exported model's checkpoint")
    parser.add_argument("--onnx", required=True, type=Path, help="the float ONNX file (export stage)")
    parser.add_argument("--calibration", required=True, type=Path, help="training split (train.npz)")
    parser.add_argument("--prepared", required=True, type=Path, help="test split (test.npz)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = load_params()
    q, thresholds = params.quantize, params.evaluate.sdr_thresholds_mm
    calibration = PreparedSet.load(args.calibration).images[: q.calibration_images]
    data = PreparedSet.load(args.prepared)
    with start_run(params.tracking, "quantize", {"quantize": to_dict(q)}) as run:
        with tqdm(total=3, desc="quantize", unit="step", disable=None) as bar:
            bar.set_postfix_str("INT8 calibration")
            quantize_int8(args.onnx, args.out, calibration, q)
            bar.update()
            bar.set_postfix_str("float model")
            fp32, err_fp32, pred_fp32 = score(args.onnx, data, thresholds, args.repeats)
            bar.update()
            bar.set_postfix_str("INT8 model")
            int8, err_int8, pred_int8 = score(args.out, data, thresholds, args.repeats)
            bar.update()
        test = compare_paired(err_fp32, err_int8, thresholds, n_boot=params.compare.bootstrap_samples)
        summary = {
            "fp32": fp32,
            "int8": int8,
            "calibration_images": len(calibration),
            "mre_diff_mm": int8["mre_mm"] - fp32["mre_mm"],
            "wilcoxon_p": test["wilcoxon"]["p_value"],
            "max_shift_px": float(np.linalg.norm(pred_int8 - pred_fp32, axis=-1).max()),
            "speedup_1_thread": fp32["latency_1_threads_ms"] / int8["latency_1_threads_ms"],
            "speedup_2_threads": fp32["latency_2_threads_ms"] / int8["latency_2_threads_ms"],
            "size_ratio": int8["file_mb"] / fp32["file_mb"],
        }
        write_json(args.metrics, summary)
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        run.log_artifact(args.metrics)
        if params.tracking.log_models:
            log_onnx_export(run, args.checkpoint, args.out, tags={"quantization": "int8 static QDQ"})
    s = summary
    print(
        f"INT8 {args.out} ({int8['file_mb']:.1f} MB vs {fp32['file_mb']:.1f}): MRE {int8['mre_mm']:.4f} vs "
        f"{fp32['mre_mm']:.4f} mm (p {s['wilcoxon_p']:.3g}), max shift {s['max_shift_px']:.2f} px; "
        f"latency x{s['speedup_1_thread']:.2f} (1 thread), x{s['speedup_2_threads']:.2f} (2 threads)"
    )


if __name__ == "__main__":
    run_cli(main)
