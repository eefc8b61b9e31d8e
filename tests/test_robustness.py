"""Robustness perturbations: the truth moves with the image, photometric changes keep it."""

import numpy as np
import pytest

from mahtnet.analysis.robustness import PERTURBATIONS, perturb, robustness
from mahtnet.config import ParamsError, parse_params


def dot_image(points, h=120, w=100):
    image = np.zeros((h, w), np.uint8)
    for x, y in points:
        image[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    return image


def bright_centre(image, near, r=6):
    x0, y0 = np.rint(near).astype(int)
    patch = image[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].astype(float)
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
    return np.array([x0 + (xs * patch).sum() / patch.sum(), y0 + (ys * patch).sum() / patch.sum()])


@pytest.mark.parametrize(
    ("name", "severity"), [("rotate", 15.0), ("scale", 1.2), ("scale", 0.85), ("crop", 0.1)]
)
def test_geometric_perturbations_move_the_landmarks_with_the_image(name, severity):
    points = np.array([[30.0, 40.0], [70.0, 50.0], [50.0, 80.0]])
    image, moved, spacing = perturb(name, severity, dot_image(points), points, 0.1, np.random.default_rng(0))
    for p in moved:
        np.testing.assert_allclose(bright_centre(image, p), p, atol=0.6)
    assert spacing == pytest.approx(0.1 / severity if name == "scale" else 0.1)


def test_photometric_perturbations_keep_the_landmarks_and_the_size():
    points = np.array([[30.0, 40.0]])
    image = np.maximum(dot_image(points), np.tile(np.linspace(20, 200, 100).astype(np.uint8), (120, 1)))
    rng = np.random.default_rng(0)
    for name, (field, _) in PERTURBATIONS.items():
        if name in ("rotate", "scale", "crop"):
            continue
        level = {"jpeg_quality": 20, "blur_mm": 0.3, "noise_sd": 10.0}.get(field, 1.5)
        out, moved, spacing = perturb(name, level, image, points, 0.1, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(moved, points) and spacing == 0.1
        assert not np.array_equal(out, image), name


def test_robustness_rows_and_bad_params(params_raw):
    params = parse_params(params_raw)

    class S:  # a sample of the test split
        def __init__(self, i):
            self.image_id, self.landmarks, self.pixel_spacing_mm = f"{i:03d}", np.full((19, 2), 40.0), 0.1

    def score(data):  # errors (N, K) mm: the landmarks' distance from where they started
        return np.linalg.norm(data.landmarks_orig - 40.0, axis=-1) * data.spacing[:, None] + 1.0

    def compare(a, b):
        return {"mre_diff": float(b.mean() - a.mean()), "wilcoxon": {"p_value": 1.0}}

    images = [dot_image([(40, 40)], 96, 96) for _ in range(2)]
    out = robustness(score, [S(0), S(1)], images, params.robustness, (64, 64), compare)
    assert out["clean"]["mre_mm"] == pytest.approx(1.0)
    assert set(out["perturbations"]) == set(PERTURBATIONS)
    noise = out["perturbations"]["noise"]["rows"]
    assert [r["severity"] for r in noise] == params.robustness.noise_sd and noise[0]["mre_increase_mm"] == 0.0
    assert out["perturbations"]["rotate"]["rows"][-1]["mre_mm"] > 1.0  # the truth moved
    params_raw["robustness"]["crop_fraction"] = [0.6]
    with pytest.raises(ParamsError, match=r"robustness.crop_fraction\[0\]"):
        parse_params(params_raw)


def test_robustness_over_seeds_summary():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    from robustness_seeds import summarise

    def run(unet: float, maht: float) -> dict:
        def model(increase: float) -> dict:
            rows = [{"severity": 0.5, "mre_increase_mm": increase}]
            return {"clean": {"mre_mm": 1.0}, "perturbations": {"contrast": {"rows": rows}}}

        return {"baseline": model(unet), "maht_net": model(maht)}

    summary = summarise({"a": run(0.4, 0.1), "b": run(0.2, 0.3)})
    (row,) = summary["rows"]
    assert row["perturbation"] == "contrast" and row["severity"] == 0.5
    assert row["maht_minus_unet_mm"]["mean"] == pytest.approx(-0.1)  # (-0.3 + 0.1) / 2
    assert row["maht_minus_unet_mm"]["sd"] == pytest.approx(np.std([-0.3, 0.1], ddof=1))
    assert row["runs_maht_net_loses_less"] == 1
    assert summary["clean_mre_mm"]["baseline"] == {"mean": 1.0, "sd": 0.0}
