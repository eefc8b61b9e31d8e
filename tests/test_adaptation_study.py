"""mahtnet.studies.adaptation: the study of few-shot adaptation on planted conventions."""

import numpy as np
import pytest

from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.studies import adaptation

K = NUM_LANDMARKS


def _write(path, points):
    path.write_text("\n".join(f"{x:.0f},{y:.0f}" for x, y in points) + "\n")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Annotations of 001-400 and zero-shot predictions of the mean of both doctors: the junior
    doctor puts every landmark 3 mm right of and 2 mm above the senior (a convention)."""
    root = tmp_path_factory.mktemp("isbi")
    rng = np.random.default_rng(0)
    for who in ("senior", "junior", "challenge"):
        (root / "AnnotationsByMD" / f"400_{who}").mkdir(parents=True)
    preds = {}
    for i in range(1, 401):
        senior = rng.uniform(100, 1800, size=(K, 2)).round()
        junior = senior + rng.normal(0, 5, size=(K, 2)).round()
        junior += (30, -20)
        for who, p in (("senior", senior), ("junior", junior), ("challenge", senior)):
            _write(root / "AnnotationsByMD" / f"400_{who}" / f"{i:03d}.txt", p)
        preds[f"{i:03d}"] = ((senior + junior) / 2 + rng.normal(0, 8, size=(K, 2))).tolist()
    return root, {"model": {"name": "test model", "sha256": "0" * 64}, "predictions": preds}


def test_a_planted_convention_is_learned_and_the_default_chosen_on_one_target(planted):
    root, zero_shot = planted
    doc = adaptation.study(zero_shot, root, base_seed=42, ks=(1, 5), draws=4, seed=0)
    assert doc["default"]["on"] == "test1-junior" and doc["default"]["method"] in adaptation.STUDY_METHODS
    junior = doc["targets"]["test2-junior"]["5"]
    assert junior["methods"]["mean"]["mre_mm"]["mean"] < junior["zero_shot"]["mre_mm"]["mean"] - 0.05
    assert junior["methods"]["mean"]["worse_than_zero_shot"] == 0
    assert set(doc["targets"]) == set(adaptation.TARGETS) and len(doc["prior_variance_mm2"]) == K
    text = adaptation.markdown(doc)
    assert "Few-shot figures" in text and "### test2-official" in text and "| 5 |" in text
