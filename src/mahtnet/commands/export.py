"""Stage: export each trained model to ONNX (``<out-dir>/<name>.onnx``) and measure it against
PyTorch on the prepared test split: the largest and mean landmark difference in original
pixels, each MRE, and the network latency at batch 1 (1 and 2 threads). Each ``--refiner
NAME=CHECKPOINT`` (the refiner of model NAME) goes to ``<out-dir>/refine_<NAME>.onnx``, its
parity measured from the same coarse landmarks on the fine-resolution test split (``--fine``)::

    python stages/export.py --model maht_net=data/models/stage3.pt --model baseline=data/models/baseline.pt \\
        --refiner maht_net=data/models/refine_maht_net.pt --fine data/fine/test.npz \\
        --prepared data/prepared/test.npz --out-dir data/models --metrics metrics/export.json
"""

import argparse
from pathlib import Path

from mahtnet.config import load_params
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.deploy.export import (
    OPSET,
    export_onnx,
    export_refiner_onnx,
    named_path,
    parity,
    refiner_parity,
)
from mahtnet.deploy.mlflow_models import log_onnx_export
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, type=named_path, action="append", help="NAME=CHECKPOINT")
    parser.add_argument(
        "--refiner", type=named_path, action="append", default=[], help="NAME=REFINER_CHECKPOINT"
    )
    parser.add_argument("--prepared", required=True, type=Path, help="the test split (test.npz)")
    parser.add_argument("--fine", type=Path, help="the fine-resolution test split (with --refiner)")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    args = parser.parse_args(argv)
    params = load_params()
    data = PreparedSet.load(args.prepared)
    summary = {}
    for name, checkpoint in args.model:
        with start_run(
            params.tracking, f"export:{name}", {"checkpoint": str(checkpoint), "opset": OPSET}
        ) as run:
            onnx_path = export_onnx(checkpoint, args.out_dir / f"{name}.onnx")
            summary[name] = parity(checkpoint, onnx_path, data, args.repeats)
            run.log_metrics({k: v for k, v in summary[name].items() if isinstance(v, float)})
            if params.tracking.log_models:
                log_onnx_export(run, checkpoint, onnx_path, tags={"opset": OPSET})
        s = summary[name]
        lat = s["latency_batch1"]
        print(
            f"{name}: {onnx_path} ({s['onnx_mb']:.1f} MB), max diff {s['max_diff_px']:.4f} px, MRE "
            f"{s['mre_mm_pytorch']:.4f} (PyTorch) / {s['mre_mm_onnx']:.4f} mm (ONNX); batch-1 latency "
            f"PyTorch {lat['pytorch_1_threads_ms']:.1f} / {lat['pytorch_2_threads_ms']:.1f} ms, onnxruntime "
            f"{lat['onnxruntime_1_threads_ms']:.1f} / {lat['onnxruntime_2_threads_ms']:.1f} ms "
            "(1 / 2 threads)"
        )
    models = dict(args.model)
    for name, checkpoint in args.refiner:
        if name not in models or args.fine is None:
            raise SystemExit(f"--refiner {name}=...: needs --model {name}=... and --fine")
        onnx_path = export_refiner_onnx(checkpoint, args.out_dir / f"refine_{name}.onnx")
        s = summary[f"refine_{name}"] = refiner_parity(
            checkpoint, onnx_path, models[name], data, FineSet.load(args.fine)
        )
        print(
            f"refine_{name}: {onnx_path} ({s['onnx_mb']:.1f} MB), max diff {s['max_diff_px']:.4f} px, "
            f"refined MRE {s['mre_mm_pytorch']:.4f} (PyTorch) / {s['mre_mm_onnx']:.4f} mm (ONNX)"
        )
    write_json(args.metrics, summary)


if __name__ == "__main__":
    run_cli(main)
