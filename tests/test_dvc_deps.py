"""dvc.yaml lists, for each stage, every library module its script imports (transitively),
so that a code change re-runs exactly the stages it affects."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    for candidate in (SRC / f"{name.replace('.', '/')}.py", SRC / name.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """``mahtnet...`` modules named by ``path``'s imports, including ``from mahtnet import x``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("mahtnet")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mahtnet"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # kept if it is a module
    return names


def imported_modules(script: Path) -> set[str]:
    """Files under src/ that ``script`` imports, directly or through other modules."""
    seen: set[Path] = set()
    stack = [script]
    while stack:
        for name in _imported_names(stack.pop()):
            path = _module_file(name)
            if path and path not in seen:
                seen.add(path)
                stack.append(path)
    return {str(p.relative_to(REPO)) for p in seen if p.stat().st_size > 0 and p.name != "__init__.py"}


def _stages() -> list[tuple[str, dict]]:
    out = []
    for path in (REPO / "dvc.yaml", REPO / "crossval" / "dvc.yaml", REPO / "search" / "dvc.yaml"):
        stages = yaml.safe_load(path.read_text())["stages"]
        out += [(name, s.get("do", s)) for name, s in stages.items()]
    return out


@pytest.mark.parametrize("name,stage", _stages(), ids=[n for n, _ in _stages()])
def test_stage_deps_cover_imports(name, stage):
    script = REPO / stage["cmd"].split()[1]
    deps = set(stage["deps"])
    missing = imported_modules(script) - deps
    assert not missing, f"stage {name}: add {sorted(missing)} to its deps in dvc.yaml"
    assert str(script.relative_to(REPO)) in deps


def test_stage_deps_are_exactly_its_imports():
    """No library module that the script does not import (a change to it would re-run the stage
    for nothing); ``python scripts/sync_dvc_deps.py`` rewrites them."""
    for name, stage in _stages():
        script = REPO / stage["cmd"].split()[1]
        listed = {d for d in stage["deps"] if d.startswith("src/mahtnet/") and d.endswith(".py")}
        extra = listed - imported_modules(script)
        assert not extra, f"stage {name}: {sorted(extra)} are not imported by {script.name}"


COARSE_TRAINING = (
    "train_baseline",
    "train_stage1",
    "train_stage2",
    "train_stage3",
    "train_student",
    "train_distill",
)
REFINER_MODULES = ("refiner.py", "refiner_task.py", "finetune_refiner.py")


def test_coarse_training_does_not_depend_on_the_refiner():
    """An edit of the refiner's training (its patch dataset, say) re-trains no coarse network."""
    stages = dict(_stages())
    for name in COARSE_TRAINING:
        refiner = [
            d
            for d in stages[name]["deps"]
            if d.startswith("src/mahtnet/training/") and d.endswith(REFINER_MODULES)
        ]
        assert not refiner, f"stage {name} lists the refiner's modules {refiner}"


def test_coarse_training_script_does_not_load_the_refiner():
    """What stages/train.py imports, run for real: no refiner (nor pruning) module is loaded."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='imported'); "
        "print(' '.join(m for m in sys.modules if m.startswith('mahtnet.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "stages" / "train.py")],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    loaded = set(out.stdout.split())
    assert "mahtnet.training.stages" in loaded
    for module in ("mahtnet.training.refiner", "mahtnet.training.refiner_task", "mahtnet.training.prune"):
        assert module not in loaded
