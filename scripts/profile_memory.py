"""Peak memory of training and inference per input size and batch -> ``metrics/memory.json``.

For each device (CPU, and CUDA when there is one), input size and batch, two measurements,
each in a fresh Python process (so that no earlier case's allocations hide a peak):

- training: two steps (forward, loss, backward, AdamW step; the second with the optimizer's
  state) of the stage's model as ``stages/train.py`` builds it (``--model maht_net``: stage 3,
  every part trained; ``baseline``: the U-Net), with its loss and autocast (``train.amp``,
  ``train.cpu_bf16``) on random images and heatmap targets of that size;
- inference: two forward passes in eval mode without gradients.

``peak_mb``: CUDA ``max_memory_allocated`` (tensors); CPU the process's peak resident set
(``VmHWM``, interpreter and libraries included). ``step_mb``: the peak less what was in use
just before the steps (model, optimizer and inputs), i.e. what the passes add; the figure that
``train.batch_size: auto`` extrapolates (docs/training.md, "Memory controls").

Usage::

    python scripts/profile_memory.py --model maht_net --batch_size 4 \\
        [--sizes 160x128,320x256] [--batches 1,2,4] [--device cpu|cuda|auto|all] \\
        [--params params.yaml] [--profile isbi-mean] [--out metrics/memory.json] [--threads N]

Sizes are height x width (default: ``preprocess`` of the params file); batches 1 to
``--batch_size`` unless ``--batches`` lists them; ``--profile`` applies a ``profiles.yaml``
profile's settings (its encoder, say) to the params; ``--device all`` (the default) measures the
CPU and, when present, CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

STAGE_OF_MODEL = {"maht_net": "stage3", "baseline": "baseline"}
MODES = ("train", "infer")


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x", 1)) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are HxW[,HxW...], got {text!r}") from None


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="maht_net", choices=sorted(STAGE_OF_MODEL))
    parser.add_argument("--batch_size", "--batch-size", type=int, default=4, help="batches 1..N")
    parser.add_argument("--batches", type=_ints, help="comma-separated batches (instead of 1..N)")
    parser.add_argument("--sizes", type=_sizes, help="HxW[,HxW...] (default: preprocess of params)")
    parser.add_argument("--device", default="all", choices=("all", "auto", "cpu", "cuda"))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", help="apply this profiles.yaml profile's settings to the params")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "memory.json")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measurement (JSON)
    return parser.parse_args(argv)


def load_case_params(path: str | Path, profile: str | None):
    """The params file, with a ``profiles.yaml`` profile's settings applied when one is named."""
    from mahtnet.config import load_params, load_profiles, with_settings

    if profile is None:
        return load_params(path)
    profiles = load_profiles(ROOT / "profiles.yaml", ROOT)
    if profile not in profiles:
        raise SystemExit(f"unknown profile '{profile}'; valid: {', '.join(profiles)}")
    return with_settings(yaml.safe_load(Path(path).read_text()), profiles[profile]["set"])


def case_params(case: dict):
    """The params (and profile) with the case's input size and no pretrained encoder weights."""
    h, w = case["size"]
    params = load_case_params(case["params"], case.get("profile"))
    return dataclasses.replace(
        params,
        preprocess=dataclasses.replace(params.preprocess, height=h, width=w),
        model=dataclasses.replace(params.model, encoder_weights=None),
    )


def random_batch(params, stage: str, b: int, device) -> dict:
    """``b`` random images and landmarks of the params' input size, with the stage's targets."""
    import torch

    from mahtnet.codec import encode_set
    from mahtnet.training.stages import stage_codec

    h, w = params.preprocess.height, params.preprocess.width
    landmarks = torch.rand(b, 19, 2).numpy() * [w - 1, h - 1]
    targets, visible = encode_set(stage_codec(params, stage), landmarks)
    return {
        "image": torch.rand(b, 1, h, w, device=device),
        "target": torch.from_numpy(targets),
        "landmarks": torch.from_numpy(landmarks),
        "visible": torch.from_numpy(visible),
    }


def measured_steps(model, params, s, groups, batch: dict, device) -> dict:
    """The measured passes by mode: a training step (with the stage's loss, AdamW and
    autocast) and an inference pass."""
    import torch

    from mahtnet.config import to_dict
    from mahtnet.models.device import autocast
    from mahtnet.training.losses import CompositeLoss
    from mahtnet.training.stages import batch_loss

    tp = params.train
    loss_fn = CompositeLoss.from_params(params.loss, to_dict(s.loss_weights), s.uncertainty_weighting)
    loss_fn.to(device)
    optimizer = torch.optim.AdamW(groups, lr=s.lr, weight_decay=tp.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=tp.amp and device.type == "cuda")

    def train_step() -> None:
        with autocast(device, tp.amp, tp.cpu_bf16):
            out = model(batch["image"])
        total, _ = batch_loss(loss_fn, out, batch, device)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step() -> None:
        with autocast(device, tp.amp, tp.cpu_bf16):
            model(batch["image"])

    return {"train": train_step, "infer": infer_step}


def peak_of_two(step, device) -> dict:
    """``step()`` twice: ``{"peak_mb", "step_mb"[, "reserved_mb"]}``, or the out-of-memory marker."""
    import torch

    from mahtnet.training import autobatch

    before = autobatch.reset_peak(device)
    try:
        step()
        step()
    except torch.OutOfMemoryError:
        return {"peak_mb": None, "step_mb": None, "out_of_memory": True}
    peak = autobatch.peak_mb(device)
    out = {"peak_mb": round(peak, 1), "step_mb": round(peak - before, 1)}
    if device.type == "cuda":
        out["reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def measure_case(case: dict) -> dict:
    """One measurement, in this (fresh) process: ``{"peak_mb", "step_mb", ...}``."""
    import torch

    from mahtnet.training.kinds import stage_params
    from mahtnet.training.stages import build_stage_model, configure_stage

    if case["threads"] > 0:
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    device, stage = torch.device(case["device"]), case["stage"]
    params = case_params(case)
    s = stage_params(params, stage)
    model = build_stage_model(params, stage, None).to(device)
    groups, frozen_bn = configure_stage(model, s)
    batch = random_batch(params, stage, case["batch"], device)
    steps = measured_steps(model, params, s, groups, batch, device)
    model.train(case["mode"] == "train")
    for m in frozen_bn:
        m.eval()
    out = peak_of_two(steps[case["mode"]], device)
    if not out.get("out_of_memory"):
        out["parameters"] = sum(p.numel() for p in model.parameters())
    return out


def run_case(case: dict) -> dict:
    """:func:`measure_case` in a fresh Python process."""
    src = str(ROOT / "src")
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"memory case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def devices(choice: str) -> list[str]:
    import torch

    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device is available")
    if choice == "all":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    if choice == "auto":
        return ["cuda" if cuda else "cpu"]
    return [choice]


def device_name(device: str) -> str:
    import torch

    from mahtnet.hardware import cpu_name

    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def profile(args: argparse.Namespace) -> dict:
    """Every (device, size, batch) case, training and inference; the table is printed as it goes."""
    p = load_case_params(args.params, args.profile)
    sizes = args.sizes or [(p.preprocess.height, p.preprocess.width)]
    batches = args.batches or list(range(1, args.batch_size + 1))
    stage, cases, parameters = STAGE_OF_MODEL[args.model], [], None
    columns = [f"{f'{m} {k}':>11}" for m in MODES for k in ("peak", "step")]
    print(f"{'device':6} {'input':>9} {'batch':>5} {' '.join(columns)}  (MiB)", flush=True)
    for device in devices(args.device):
        for h, w in sizes:
            for b in batches:
                row = {"device": device, "input": [h, w], "batch": b}
                for mode in MODES:
                    spec = {"device": device, "size": [h, w], "batch": b, "stage": stage, "mode": mode}
                    result = run_case(
                        spec | {"params": str(args.params), "profile": args.profile, "threads": args.threads}
                    )
                    parameters = result.pop("parameters", parameters)
                    row |= {f"{mode}_{k}": v for k, v in result.items()}
                cases.append(row)
                cells = [f"{row[f'{m}_{k}']:>11}" for m in MODES for k in ("peak_mb", "step_mb")]
                print(f"{device:6} {f'{h}x{w}':>9} {b:>5} {' '.join(cells)}", flush=True)
    return {"model": args.model, "stage": stage, "parameters": parameters, "sizes": sizes, "cases": cases}


def main() -> None:
    args = parse_args()
    if args.case:
        print(json.dumps(measure_case(json.loads(args.case))))
        return
    import torch

    from mahtnet.io import write_json

    t0 = time.perf_counter()
    report = profile(args)
    report["devices"] = {d: device_name(d) for d in devices(args.device)}
    report["torch"] = torch.__version__
    report["threads"] = args.threads or torch.get_num_threads()
    report["method"] = {
        "train": "two steps (forward, loss, backward, AdamW step) of a fresh process's model",
        "infer": "two forward passes, eval mode, no grad",
        "peak_mb": "CUDA: max_memory_allocated; CPU: peak resident set (VmHWM) of the process",
        "step_mb": "peak_mb less the memory in use before the steps (model, optimizer, inputs)",
    }
    report["profile"] = args.profile
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, report)
    print(f"wrote {args.out} in {report['wall_time_s']} s")


if __name__ == "__main__":
    main()
