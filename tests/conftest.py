import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
ISBI_ROOT = REPO.parent / "shared" / "datasets" / "isbi2015"


@pytest.fixture
def isbi_root() -> Path:
    if not (ISBI_ROOT / "RawImage").is_dir():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    return ISBI_ROOT


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and inputs: one torch thread is faster than two that wait for each other (and
    for a busy CPU). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def params_raw() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


DELETE = object()


def edited(raw: dict, key: str, value=DELETE) -> dict:
    """A deep copy of parsed ``params.yaml`` with the dotted ``key`` set to ``value``
    (or removed when no value is given)."""
    import copy

    out = copy.deepcopy(raw)
    *parents, last = key.split(".")
    section = out
    for name in parents:
        section = section[name]
    if value is DELETE:
        del section[last]
    else:
        section[last] = value
    return out
