"""The plan's ablations of MAHT-Net: queue them as DVC experiments, snapshot each finished run,
and turn the snapshots into the study's table and forest plot.

The variants are the model registry's (:mod:`mahtnet.models.variants`, tag ``ablation``) and the
loss recipes and input sizes of :mod:`mahtnet.studies.ablation`, which also builds the table,
the forest plot and the resolution section; this script queues, snapshots and measures.

    python scripts/ablations.py list                                  # variants and their -S settings
    python scripts/ablations.py queue no-transformer                  # one variant on the synthetic default
    python scripts/ablations.py queue --study isbi-mean --seeds 42 43 44   # the ISBI study (every
                                                                      # ablation variant x seed)
    dvc queue start -j 1                                              # run them, one at a time
    python scripts/ablations.py snapshot --rev ablation-no-transformer-s42 --variant no-transformer
    python scripts/ablations.py snapshot --rev isbi-mean-s42 --variant maht_net     # the reference
    python scripts/ablations.py table [--latency]                     # docs/ablation.md, .json, figure

**The study** (``--study PROFILE``): each variant runs the profile's settings plus its own, with
seed N (the same validation split as the full model's run of that seed, so comparisons are
paired per image), up to ``evaluate@maht_net``: the U-Net's stages are not in its graph, so
they are neither trained nor restored. The study reads the coarse network with shape
decoding (``shape``), so the refiner trains one epoch only (its figures are not used). Its MLflow
runs go to the experiment ``mahtnet/ablation-<profile>`` with tags ``study``, ``variant`` and
``seed``. The reference (``maht_net``) is the profile's own run of each seed.

**The resolution hypothesis** is the profile ``isbi-mean-hires`` (the coarse input at 512x416,
the refiner trained fully), snapshotted as the input-size variant ``input-512x416``; the table
then adds a section comparing it with the reference *with the refiner*, beside its compute
(training minutes, latency, and peak training memory from ``metrics/memory_resolution.json``)::

    python scripts/run_profile.py isbi-mean-hires --queue -S seed=42 -n isbi-mean-hires-s42 \\
        --target evaluate@maht_net
    python scripts/ablations.py snapshot --rev isbi-mean-hires-s42 --variant input-512x416
    python scripts/profile_memory.py --profile isbi-mean --sizes 320x256,512x416 --batches 4 \\
        --device cpu --out metrics/memory_resolution.json

**The table** compares each variant with the reference on validation, Test1 and Test2, against
the official ground truth and the mean of both doctors: mean +- SD over seeds of MRE, SDR 2 / 4
mm, share beyond 4 mm and largest error; the paired difference per seed (Wilcoxon on per-image
MRE) and pooled over seeds (per-image MRE averaged over seeds); parameters, training wall
minutes (median over seeds) and, measured in one process so that variants compare on the same
machine load (``--latency``), one end-to-end training step and one prediction at the profile's
input size. A difference is reported only when it exceeds the reference's seed-to-seed SD, its
95 % interval over seeds excludes zero and the pooled p < 0.05; otherwise "no difference".
Nothing is chosen on a test set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import yaml

from mahtnet.config import PATH_KEYS, load_profiles, yaml_value
from mahtnet.errors import run_cli
from mahtnet.io import write_json, write_text
from mahtnet.models.variants import VARIANTS
from mahtnet.paths import relative_to_repo
from mahtnet.studies.ablation import (
    INPUT_SIZES,
    LOSSES,
    REFERENCE,
    ablation_names,
    build_table,
    forest,
    load,
    markdown,
    record,
    settings_of,
)

REPO = Path(__file__).resolve().parents[1]
RUNS = Path("docs/ablation/runs")


# ---------------------------------------------------------------------------------------- queue


def queue_commands(
    names: list[str], study: str | None, seeds: list[int], extra: list[str]
) -> list[list[str]]:
    """One ``dvc exp run --queue`` per variant (and seed, with ``--study``)."""
    if study is None:
        return [_command(f"ablation-{n}", _absolute(settings_of(n)), extra, []) for n in names]
    profiles = load_profiles(REPO / "profiles.yaml", REPO)
    if study not in profiles:
        raise SystemExit(f"unknown profile '{study}'; valid: {', '.join(profiles)}")
    base = dict(profiles[study]["set"])
    out = []
    for n in names:
        for seed in seeds:
            tags = {"study": f"ablation-{study}", "variant": n, "seed": str(seed)}
            settings = base | _absolute(settings_of(n)) | {"seed": seed, "refine.train.epochs": 1}
            settings |= {"tracking.experiment": f"mahtnet/ablation-{study}", "tracking.tags": tags}
            out.append(_command(f"ablation-{n}-s{seed}", settings, extra, ["evaluate@maht_net"]))
    return out


def _absolute(settings: dict[str, object]) -> dict[str, object]:
    """``settings`` with the relative paths of :data:`mahtnet.config.PATH_KEYS` (a variant's
    ``model.encoder_weights``) made absolute, as profiles' are: queued runs work in a copy."""
    return {
        k: str((REPO / v).resolve())
        if k in PATH_KEYS and isinstance(v, str) and not Path(v).is_absolute()
        else v
        for k, v in settings.items()
    }


def _command(name: str, settings: dict[str, object], extra: list[str], targets: list[str]) -> list[str]:
    cmd = ["dvc", "exp", "run", "--queue", "-n", name]
    for key, value in settings.items():
        if isinstance(value, dict):  # a mapping (tracking.tags): each entry, added or replaced
            cmd += [a for k, v in value.items() for a in ("-S", f"++{key}.{k}={yaml_value(v)}")]
        else:
            cmd += ["-S", f"{key}={yaml_value(value)}"]
    for s in extra:
        cmd += ["-S", s]
    return cmd + targets


# ---------------------------------------------------------------------------------------- snapshot


def snapshot(rev: str, variant: str, out_dir: Path) -> Path:
    """The run's record (:func:`mahtnet.studies.ablation.record`) in ``out_dir``."""
    r = record(rev, variant, REPO)
    return write_json(out_dir / f"{variant}-seed{r['seed']}.json", r)


# ---------------------------------------------------------------------------------------- latency


def _cost(model, shape: tuple[int, int], batch: int, calls: int = 5, warmup: int = 2) -> dict[str, float]:
    """One model's ``predict_ms`` (batch 1, no grad) and ``train_step_ms`` (forward + backward
    of every parameter at ``batch``), each the median of ``calls`` timed calls after ``warmup``."""
    import torch

    from mahtnet.deploy.export import median_ms

    x1, xb = torch.zeros(1, 1, *shape), torch.rand(batch, 1, *shape)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(xb)
        (out.heatmaps.float().logsumexp((-2, -1)).mean() + out.coords.mean()).backward()

    with torch.no_grad():
        model.eval()
        predict = median_ms(lambda: model(x1), calls, warmup)
    model.train()
    return {"predict_ms": predict, "train_step_ms": median_ms(train_step, calls, warmup)}


def measure_latency(study: str, names: list[str], rounds: int = 15) -> dict[str, dict[str, float]]:
    """Each variant's compute at the profile's input, measured in one process (2 threads, random
    weights: the cost does not depend on them) in interleaved rounds, so that drift in the
    machine's speed falls on every variant alike and they compare as ratios: ``predict_ms``, the
    median forward at batch 1, and ``train_step_ms``, the median end-to-end forward + backward at
    the profile's batch (every parameter trainable)."""
    import torch

    from mahtnet.config import with_settings
    from mahtnet.models.factory import build_model

    torch.set_num_threads(2)
    profile = load_profiles(REPO / "profiles.yaml", REPO)[study]["set"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    models = {}
    for name in names:
        settings = {k: v for k, v in (profile | settings_of(name)).items() if k != "model.encoder_weights"}
        p = with_settings(raw, settings | {"model.encoder_weights": None})
        shape = (p.preprocess.height, p.preprocess.width)
        models[name] = (build_model("maht_net", p.model), shape, int(p.train.batch_size))
    times: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for i in range(rounds + 1):  # round 0 warms every model up, untimed
        for name, (model, shape, batch) in models.items():
            cost = _cost(model, shape, batch, calls=1, warmup=0)
            if i:
                times[name].append(cost)
    return {n: {k: float(np.median([t[k] for t in ts])) for k in ts[0]} for n, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the variants and their settings")
    q = sub.add_parser("queue", help="dvc exp run --queue each variant (default: every ablation variant)")
    q.add_argument("names", nargs="*")
    q.add_argument("--study", help="a profile (profiles.yaml): the ISBI study, every variant x --seeds")
    q.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    q.add_argument("--print", action="store_true", help="print the commands only")
    q.add_argument("--set", nargs="*", default=[], help="extra key=value for every run")
    s = sub.add_parser("snapshot", help="one finished run into docs/ablation/runs/")
    s.add_argument("--rev", required=True)
    s.add_argument("--variant", required=True)
    t = sub.add_parser("table", help="docs/ablation.md, docs/ablation.json, docs/figures/ablation_forest.png")
    t.add_argument(
        "--latency", metavar="PROFILE", help="also measure each variant's latency at this profile's input"
    )
    args = parser.parse_args()
    if args.command == "list":
        for n in [REFERENCE, *ablation_names(), *LOSSES, *INPUT_SIZES]:
            what = VARIANTS[n].what if n in VARIANTS else "input size" if n in INPUT_SIZES else "loss recipe"
            print(f"{n}: {what}: {' '.join(f'{k}={yaml_value(v)}' for k, v in settings_of(n).items())}")
    elif args.command == "queue":
        names = args.names or ablation_names()
        unknown = [n for n in names if n not in VARIANTS and n not in LOSSES]
        if unknown:
            raise SystemExit(
                f"unknown ablation(s) {unknown}; valid: {', '.join([*ablation_names(), *LOSSES])}"
            )
        for cmd in queue_commands(names, args.study, args.seeds, args.set):
            print(" ".join(cmd), flush=True)
            if not args.print:
                subprocess.run(cmd, check=True, cwd=REPO)
    elif args.command == "snapshot":
        print(relative_to_repo(snapshot(args.rev, args.variant, REPO / RUNS)))
    else:
        runs = load(REPO / RUNS)
        latency_file = REPO / "docs/ablation/latency.json"
        latency = json.loads(latency_file.read_text()) if latency_file.is_file() else {}
        if args.latency:
            latency = measure_latency(args.latency, list(runs))
            write_json(latency_file, latency)
        memory_file = REPO / "metrics/memory_resolution.json"
        memory = json.loads(memory_file.read_text()) if memory_file.is_file() else None
        table = build_table(runs, latency, memory)
        write_json(REPO / "docs/ablation.json", table)
        forest(table, REPO / "docs/figures/ablation_forest.png")
        write_text(REPO / "docs/ablation.md", markdown(table))
        print("docs/ablation.md, docs/ablation.json, docs/figures/ablation_forest.png")


if __name__ == "__main__":
    run_cli(main)
