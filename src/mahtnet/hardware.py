"""What a measurement ran on: the CPU's name as the benchmarks, memory profiles and the
ablation study's snapshots record it beside their figures (a training minute on one CPU is not
a training minute on another)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """``model name`` from ``/proc/cpuinfo`` with its family and model numbers when they are
    there (a virtual machine may report only "AMD EPYC", which spans generations of very different
    speed), and the number of logical CPUs; ``platform.processor()`` elsewhere."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, sep, value = line.partition(":")
        if not sep:
            if info:
                break  # the first processor's block is enough
            continue
        info.setdefault(key.strip(), value.strip())
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return f"{name}, {os.cpu_count()} CPUs"
