"""The tiny DVC pipeline of the tests: the real ``dvc.yaml`` on a few small synthetic images,
built once per test session (tests/conftest.py ``pipeline``) and read by tests/test_pipeline.py
(its outputs) and tests/test_pipeline_commands.py (commands run against it)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

TIMEOUT_S = 1800  # a hang guard, not a speed goal: the tiny repro takes 4-10 min by CPU


def tiny_params(tmp: Path) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["synthetic"].update(n_train=10, n_test=3, width=192, height=240)
    p["preprocess"].update(height=64, width=64)
    p["model"].update(unet_channels=4, encoder="efficientnet_lite0", transformer_layers=1, transformer_dim=16)
    p["model"].update(transformer_heads=2, transformer_pos_size=2, decoder_channels=8)
    p["train"].update(batch_size=4, threads=1)
    for stage in ("stage1", "stage2", "stage3"):
        p[stage].update(epochs=1, warmup_epochs=1)
    p["baseline"]["epochs"] = 3  # the same budget
    p["refine"].update(patch_size=16, channels=4, depth=2, batch_size=16)
    p["refine"]["train"].update(epochs=1, warmup_epochs=1)
    p["distill"]["student_channels"] = 2
    p["prune"]["sparsities_pct"] = [50]
    p["optimise"]["peak_memory"] = False  # 14 fresh processes; tests/test_optimise.py measures one
    p["robustness"].update({k: v[-1:] for k, v in p["robustness"].items() if isinstance(v, list)})
    p["prune"]["train"].update(epochs=1, warmup_epochs=1)
    p["data"]["val_fraction"] = 0.2
    p["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    p["tracking"]["log_models"] = False  # a torch.export per training stage; test_mlflow_models.py
    # and test_tracking_server.py (training stages through a server) register models
    return p


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1", "HOME": str(cwd)}
    env["OMP_NUM_THREADS"] = "1"  # tiny models, the other xdist worker on the other core: 269 -> 236 s alone
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def run_ok(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """:func:`run`, failing with the command and its output's tail unless it succeeds."""
    result = run(args, cwd)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def build(tmp: Path) -> Path:
    """``dvc repro`` twice in ``tmp/repo`` (the second's output in ``second_repro.txt``); the
    MLflow store of those runs alone is copied to ``tmp/mlflow_pipeline.db`` (later tests add
    runs to ``tmp/mlflow.db``). Returns the repository; a failed command raises."""
    work = tmp / "repo"
    work.mkdir(parents=True)
    for name in ("src", "stages"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", work)
    shutil.copy(REPO / ".gitignore", work)  # git add -A there commits what a clone of ours would
    (work / "scripts").mkdir()  # the stage weights: its script and its dependency requirements.txt
    shutil.copy(REPO / "scripts" / "convert_efficientnet_lite.py", work / "scripts")
    shutil.copy(REPO / "requirements.txt", work)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp), sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        run_ok(cmd, work)
    run_ok([dvc, "repro"], work)
    (tmp / "second_repro.txt").write_text(run_ok([dvc, "repro"], work).stdout)
    shutil.copy(tmp / "mlflow.db", tmp / "mlflow_pipeline.db")
    return work
