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


@pytest.fixture
def params_raw() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())
