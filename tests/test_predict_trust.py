"""``mahtnet predict`` with the released model's trust block: every verdict in one run (an ISBI
image, its mirror, its rotation, noise, an 8x8 image), the exit status 3 for refusals, the
one-line reasons, and ``--force``."""

import json
import subprocess

import cv2
import numpy as np
import pytest
from conftest import ISBI_ROOT
from test_serve import ENV, mahtnet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    if not (ISBI_ROOT / "RawImage").is_dir():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    folder = tmp_path_factory.mktemp("verdicts")
    x = cv2.imread(str(ISBI_ROOT / "RawImage" / "TrainingData" / "005.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "a_ok.png"), x)
    cv2.imwrite(str(folder / "b_mirrored.png"), x[:, ::-1])
    cv2.imwrite(str(folder / "c_rotated.png"), np.rot90(x))
    cv2.imwrite(
        str(folder / "d_noise.png"), np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    )
    cv2.imwrite(str(folder / "e_tiny.png"), np.zeros((8, 8), np.uint8))
    unusual = cv2.imread(str(ISBI_ROOT / "RawImage" / "Test1Data" / "194.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "f_unusual.png"), unusual)  # read, unlike every training image
    return folder


def predict(folder, out, *extra):
    cmd = mahtnet("predict", folder, "--pixel-spacing", "0.1", "--out", out, "--no-overlay", *extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


def test_every_verdict_in_one_run_and_force(images, tmp_path):
    r = predict(images, tmp_path / "out")
    assert r.returncode == 3, r.stderr  # refusals, no failure
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")}
    verdicts = {name: d["verdict"] for name, d in docs.items()}
    assert verdicts == {
        "a_ok": "ok",
        "b_mirrored": "mirrored",
        "c_rotated": "rotated",
        "d_noise": "not_a_lateral_cephalogram",
        "e_tiny": "too_small",
        "f_unusual": "unusual",
    }
    unusual = docs["f_unusual"]
    assert len(unusual["landmarks"]) == 19 and unusual["measurements"] is not None
    assert len(unusual["check_first"]) == 19 and all(row["check_first"] for row in unusual["landmarks"])
    assert any(line.startswith("unusual: ") and "f_unusual.png" in line for line in r.stderr.splitlines())
    ok, mirrored = docs["a_ok"], docs["b_mirrored"]
    width = ok["width_px"]
    for a, b in zip(ok["landmarks"], mirrored["landmarks"], strict=True):  # the same reading, mirrored back
        assert (
            abs((width - 1 - a["x_px"]) - b["x_px"]) * 0.1 < 0.05 and abs(a["y_px"] - b["y_px"]) * 0.1 < 0.05
        )
    assert all(0 <= row["confidence"] <= 1 and row["error_bound_mm"] > 0 for row in ok["landmarks"])
    assert ok["error_bound_coverage"] == 0.9 and isinstance(ok["check_first"], list)
    for name in ("c_rotated", "d_noise", "e_tiny"):
        d = docs[name]
        assert d["landmarks"] == [] and d["measurements"] is None and not d["forced"]
    refusals = [line for line in r.stderr.splitlines() if line.startswith("refused: ")]
    assert len(refusals) == 3 and any("turned 90 degrees counter-clockwise" in line for line in refusals)
    assert "3 of 6 images refused" in r.stderr
    rows = (tmp_path / "out" / "landmarks.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 19  # the three images read: no rows for a refused one

    forced = predict(images / "d_noise.png", tmp_path / "forced", "--force")
    assert forced.returncode == 0, forced.stderr
    doc = json.loads((tmp_path / "forced" / "d_noise.json").read_text())
    assert doc["forced"] and doc["verdict"] == "not_a_lateral_cephalogram" and len(doc["landmarks"]) == 19
    assert "error_bound_mm" not in doc["landmarks"][0]  # no bound for a reading the model refuses
