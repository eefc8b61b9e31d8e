"""Speed and memory benchmark of the U-Net and the MAHT-Net variants -> ``metrics/benchmark.json``.

For every variant (the ``model`` block of ``params.yaml`` with the overrides in ``VARIANTS``)
at 256x256 and 512x512, batch 1 and 8:

- parameters (total and per part) and forward FLOPs per image (``torch.utils.flop_counter``);
- latency: median wall time of repeated forward passes (eval mode, no grad) after one warm-up,
  and of forward+backward passes (train mode); fewer repeats for the large cases (the JSON
  records how many);
- peak memory of one forward (eval, no grad) and one forward+backward (train): on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's peak resident set
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) over the resident set before
  the call, with glibc told to return large blocks to the system at once
  (glibc ``mallopt(M_MMAP_THRESHOLD)``, set after all latencies are measured, since it slows
  allocation) so that it tracks live memory;
- the MAHT-Net / U-Net latency ratio per case, and the issue's targets: MAHT-Net
  (efficientnet_b0, 4 transformer layers) latency <= 1.3x the U-Net's, batch 8 at 512x512
  forward+backward within 16 GB.

Usage::

    python scripts/benchmark_speed.py [--out metrics/benchmark.json] [--threads N] [--device auto]
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from mahtnet.config import load_params
from mahtnet.hardware import cpu_name
from mahtnet.io import write_json
from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.models.device import select_device
from mahtnet.models.factory import build_model
from mahtnet.models.variants import variants_tagged

ROOT = Path(__file__).resolve().parents[1]
MMAP_THRESHOLD = 65536  # bytes; see track_live_memory()

REFERENCE = "maht_net_b0_tf4"  # the variant the latency target is about
VARIANTS = {  # the registry's benchmark variants (mahtnet.models.variants): network + model.* overrides
    v.name: {"name": v.network, **v.model_settings()} for v in variants_tagged("benchmark")
}
SIZES = (256, 512)
BATCHES = (1, 8)
MAX_RATIO = 1.3
MEMORY_LIMIT_GB = 16.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def track_live_memory() -> bool:
    """glibc only: serve allocations >= MMAP_THRESHOLD with mmap, so freed blocks leave the
    resident set at once and its peak tracks live memory. It slows allocation, so it is set
    only after all latencies are measured."""
    libc = _libc()
    return libc is not None and libc.mallopt(-3, MMAP_THRESHOLD) == 1  # -3 = M_MMAP_THRESHOLD


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory that ``fn()`` adds (MiB): CUDA allocator peak, or CPU resident-set peak."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # hand freed heap back, so reused memory counts as growth
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    fn()
    return (_rss_kb("VmHWM") - base) / 1024


def median_time(fn, device: torch.device, budget_s: float, max_repeats: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` after one warm-up; as many repeats (2..max) as fit ``budget_s``."""
    sync(device)
    t0 = time.perf_counter()
    fn()  # warm-up
    sync(device)
    first = time.perf_counter() - t0
    repeats = int(max(2, min(max_repeats, budget_s // max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), repeats


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    return {"total": sum(p.numel() for p in model.parameters()), **parts}


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def _inputs(model, size: int, batch: int, device):
    x = torch.randn(batch, 1, size, size, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(x).heatmaps.float().square().mean().backward()

    return x, forward, forward_backward


def latency_case(model, size: int, batch: int, device, budget_s: float, max_repeats: int) -> dict:
    x, forward, forward_backward = _inputs(model, size, batch, device)
    model.eval()
    fwd_s, fwd_n = median_time(forward, device, budget_s, max_repeats)
    model.train()
    fb_s, fb_n = median_time(forward_backward, device, budget_s, max_repeats)
    model.zero_grad(set_to_none=True)
    return {
        "input": [size, size],
        "batch": batch,
        "gflops_forward_per_image": round(forward_flops(model, x[:1]) / 1e9, 3),
        "latency_ms_per_image": round(1000 * fwd_s / batch, 2),
        "latency_ms_batch": round(1000 * fwd_s, 2),
        "forward_repeats": fwd_n,
        "forward_backward_ms_batch": round(1000 * fb_s, 2),
        "forward_backward_repeats": fb_n,
    }


def memory_case(model, size: int, batch: int, device) -> dict:
    _, forward, forward_backward = _inputs(model, size, batch, device)
    model.eval()
    fwd_mem = peak_memory_mb(forward, device)
    model.train()
    model.zero_grad(set_to_none=True)
    fb_mem = peak_memory_mb(forward_backward, device)
    model.zero_grad(set_to_none=True)
    return {"peak_memory_mb_forward": round(fwd_mem, 1), "peak_memory_mb_forward_backward": round(fb_mem, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "benchmark.json")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing budget per measurement")
    parser.add_argument("--max-repeats", type=int, default=10)
    return parser


def build_variants(names: list[str], base, device: torch.device):
    """Yield ``(name, model params, model)`` per variant, each model built from seed 0."""
    for name in names:
        keys = {k: v for k, v in VARIANTS[name].items() if k != "name"}
        p = dataclasses.replace(base, **keys, encoder_weights=None)
        torch.manual_seed(0)
        yield name, p, build_model(VARIANTS[name]["name"], p, 1, NUM_LANDMARKS).to(device)


def progress(args: argparse.Namespace, grid: list, phase: str) -> tqdm:
    """A progress bar on stderr (on a terminal only): one step per variant and case, drawn
    between measurements."""
    return tqdm(total=len(args.variants) * len(grid), desc=phase, unit="case", disable=None)


def say(line: str) -> None:
    """A line on stdout, above the progress bar, at once."""
    tqdm.write(line)
    sys.stdout.flush()


def measure_latencies(args: argparse.Namespace, base, device: torch.device, grid: list) -> dict:
    """Phase 1, with the default allocator: per variant its settings, parameters and latency cases."""
    results = {}
    with progress(args, grid, "latency") as bar:
        for name, p, model in build_variants(args.variants, base, device):
            cases = []
            for s, b in grid:
                bar.set_postfix_str(f"{name} {s}x{s} batch {b}")
                cases.append(latency_case(model, s, b, device, args.budget_s, args.max_repeats))
                bar.update()
            results[name] = {
                "model": {"name": VARIANTS[name]["name"]}
                | {k: v for k, v in dataclasses.asdict(p).items() if k in VARIANTS[name]},
                "parameters": count_parameters(model),
                "cases": cases,
            }
            say(f"{name} latency: {cases}")
    return results


def measure_memory(args: argparse.Namespace, base, device: torch.device, grid: list, results: dict) -> None:
    """Phase 2: add the peak memory to every case of ``results``."""
    with progress(args, grid, "memory") as bar:
        for name, _, model in build_variants(args.variants, base, device):
            for case, (s, b) in zip(results[name]["cases"], grid, strict=True):
                bar.set_postfix_str(f"{name} {s}x{s} batch {b}")
                case.update(memory_case(model, s, b, device))
                bar.update()
            peaks = [c["peak_memory_mb_forward_backward"] for c in results[name]["cases"]]
            say(f"{name} forward+backward peak MiB: {peaks}")


def case_key(c: dict) -> str:
    return f"{c['input'][0]}x{c['input'][1]}_b{c['batch']}"


def latency_ratios(results: dict) -> dict:
    """Per variant other than the U-Net, its batch latency over the U-Net's, per case."""
    ratios = {}
    if "unet" in results:
        unet = {case_key(c): c["latency_ms_batch"] for c in results["unet"]["cases"]}
        for name, r in results.items():
            if name != "unet":
                ratios[name] = {
                    case_key(c): round(c["latency_ms_batch"] / unet[case_key(c)], 3) for c in r["cases"]
                }
    return ratios


def targets(results: dict, ratios: dict) -> dict:
    """The issue's latency and memory targets for the REFERENCE variant, and whether they are met."""
    target = {"variant": REFERENCE, "max_latency_ratio": MAX_RATIO, "memory_limit_gb": MEMORY_LIMIT_GB}
    if REFERENCE in ratios:
        target["latency_ratios"] = ratios[REFERENCE]
        target["latency_target_met"] = all(v <= MAX_RATIO for v in ratios[REFERENCE].values())
    big = [
        c for c in results.get(REFERENCE, {}).get("cases", []) if c["input"] == [512, 512] and c["batch"] == 8
    ]
    if big:
        target["forward_backward_512_b8_peak_gb"] = round(big[0]["peak_memory_mb_forward_backward"] / 1024, 2)
        target["memory_target_met"] = target["forward_backward_512_b8_peak_gb"] <= MEMORY_LIMIT_GB
    return target


def environment(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def describe_method(args: argparse.Namespace, device: torch.device, live: bool) -> dict:
    return {
        "latency": "median wall time after one warm-up; forward in eval mode without grad, "
        "forward+backward in train mode (loss: mean squared heatmap logits)",
        "repeats": f"2 to {args.max_repeats}, as many as fit {args.budget_s} s per measurement",
        "memory": "CUDA: max_memory_allocated growth"
        if device.type == "cuda"
        else "CPU: peak resident-set growth (VmHWM reset via /proc/self/clear_refs), measured "
        f"after all latencies with glibc mallopt(M_MMAP_THRESHOLD={MMAP_THRESHOLD}): {live}",
        "flops": "torch.utils.flop_counter.FlopCounterMode, forward, batch 1 (a multiply-add = 2 FLOPs)",
        "variants": "params.yaml model block with the overrides listed per variant",
    }


def main() -> None:
    args = build_parser().parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = select_device(args.device)
    base = load_params(args.params).model
    start = time.perf_counter()
    grid = [(size, batch) for size in args.sizes for batch in args.batches]
    results = measure_latencies(args, base, device, grid)
    live = device.type == "cuda" or track_live_memory()
    measure_memory(args, base, device, grid, results)
    ratios = latency_ratios(results)
    target = targets(results, ratios)
    report = environment(device) | {
        "method": describe_method(args, device, live),
        "variants": results,
        "latency_ratio_vs_unet": ratios,
        "target": target,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, report)
    print(f"wrote {args.out} in {report['wall_time_s']} s; target: {target}")


if __name__ == "__main__":
    main()
