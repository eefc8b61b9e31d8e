"""mahtnet.studies.reference: another method's public predictions, scored by our evaluator and
paired per image with our runs; its row in the README's headline table."""

import json

import numpy as np
import pytest

from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.studies import protocol, reference


def _write_points(path, points):
    path.write_text("\n".join(f"{int(x)},{int(y)}" for x, y in points) + "\n")


@pytest.fixture(scope="module")
def isbi_root(tmp_path_factory):
    """A tiny ISBI layout: both doctors and the challenge's files for 151-400 (no images: the
    reference is scored from annotations only). Junior = senior + 20 px in x, challenge = senior."""
    root = tmp_path_factory.mktemp("isbi")
    rng = np.random.default_rng(0)
    for who in ("senior", "junior", "challenge"):
        (root / "AnnotationsByMD" / f"400_{who}").mkdir(parents=True)
    for i in range(151, 401):
        senior = rng.integers(100, 1800, size=(NUM_LANDMARKS, 2))
        for who, p in (("senior", senior), ("junior", senior + [20, 0]), ("challenge", senior)):
            _write_points(root / "AnnotationsByMD" / f"400_{who}" / f"{i:03d}.txt", p)
    return root


def _predictions(folder, root, shift=(0.0, 10.0)):
    """Predictions = the mean of both doctors + ``shift`` px: 1.0 mm from the mean at 10 px."""
    folder.mkdir(exist_ok=True)
    for s, ids in reference.SET_IDS.items():
        preds = {}
        for i in ids:
            lines = (root / "AnnotationsByMD" / "400_senior" / f"{i:03d}.txt").read_text().split()
            senior = np.array([[float(v) for v in line.split(",")] for line in lines])
            preds[f"{i:03d}"] = (senior + [10.0, 0.0] + shift).tolist()
        (folder / reference.SET_FILES[s]).write_text(json.dumps(preds))
    return folder


def _run(seed, offset_mm, ids_by_set):
    """A snapshot of ours: per-image MRE = 1.0 + offset on every image of test1 and test2."""
    run = {"model": "maht_net", "protocol": "mean", "seed": seed, "scores": {}, "per_image": {}}
    for s, ids in ids_by_set.items():
        per = {"image_id": ids}
        for gt in ("official", "mean"):
            per[f"refined.{gt}"] = list(1.0 + offset_mm + np.linspace(0, 0.01, len(ids)) + seed * 1e-4)
        run["per_image"][s] = per
        block = {"refined": {"mre_mm": 1.0 + offset_mm, "max_mm": 5.0 + seed}}
        run["scores"][s] = {"variants": block, "variants_mean": block}
    return run


def test_scored_with_our_metrics_against_every_ground_truth(tmp_path, isbi_root):
    scored = reference.score(reference.load_predictions(_predictions(tmp_path / "p", isbi_root)), isbi_root)
    t1 = scored["test1"]["scores"]
    assert t1["mean"]["mre_mm"] == pytest.approx(1.0)  # 10 px at 0.1 mm/px
    assert t1["senior"]["mre_mm"] == pytest.approx(np.hypot(1.0, 1.0)) == t1["official"]["mre_mm"]
    assert t1["junior"]["mre_mm"] == pytest.approx(np.hypot(1.0, 1.0))
    assert t1["mean"]["sdr_2mm"] == 100.0 and t1["mean"]["images"] == 150
    assert len(scored["test2"]["per_image"]["mean"]) == 100


def test_paired_with_our_runs_per_seed_and_pooled(tmp_path, isbi_root):
    scored = reference.score(reference.load_predictions(_predictions(tmp_path / "p", isbi_root)), isbi_root)
    ids = {s: scored[s]["image_id"] for s in scored}
    runs = [_run(seed, -0.2, ids) for seed in (42, 43, 44)]  # ours ~0.2 mm closer than 1.0
    tests = reference.paired(scored, runs)
    t = tests["test1.mean"]
    assert t["seeds"] == [42, 43, 44] and t["reference_mre"] == pytest.approx(1.0)
    assert t["mre_diff"]["mean"] == pytest.approx(-0.195, abs=0.01) and t["pooled_p"] < 1e-6
    assert set(tests) == {"test1.official", "test1.mean", "test2.official", "test2.mean"}


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: d.pop("151"), "missing \\['151'\\]"),
        (lambda d: d.__setitem__("151", d["151"][:18]), "image 151 has shape \\(18, 2\\)"),
        (lambda d: d["152"][3].__setitem__(0, float("nan")), "image 152 has a NaN"),
    ],
)
def test_bad_predictions_are_one_line_errors_naming_the_file(tmp_path, isbi_root, break_it, message):
    folder = _predictions(tmp_path / "p", isbi_root)
    path = folder / "test1_predictions.json"
    d = json.loads(path.read_text())
    break_it(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"test1_predictions.json: .*{message}"):
        reference.load_predictions(folder)
    (folder / "test2_predictions.json").unlink()
    path.write_text("{}")
    with pytest.raises(ValueError, match="test1_predictions.json"):
        reference.load_predictions(folder)


def test_headline_row_and_published_rows_in_their_ground_truth_columns(tmp_path, isbi_root):
    runs = [_run(42, -0.2, {s: [f"{i:03d}" for i in r] for s, r in reference.SET_IDS.items()})]
    out_json = tmp_path / "reference.json"
    row = {"label": "other method", "input": "1024x1024", "hardware": "GPU", "training_labels": "mean"}
    doc = reference.write(
        _predictions(tmp_path / "p", isbi_root), isbi_root, runs, out_json, tmp_path / "r.md", "x", row
    )
    assert not doc["source"].startswith("/")  # never an absolute path
    (line,) = protocol.reference_rows(out_json)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0].startswith("*scored here* other method")
    assert cells[4:8] == ["1.414", "1.000", "1.414", "1.000"]
    assert protocol.reference_rows(tmp_path / "absent.json") == []
    published = protocol.published_rows()
    for line in published:
        cells = [c.strip() for c in line.strip("|").split("|")]
        official, mean = cells[4:8:2], cells[5:8:2]
        if "challenge" in cells[0]:  # scored by the organisers: the official columns only
            assert all(c == "-" for c in mean) and official[0] != "-"
        else:  # deep-learning rows: beside our mean-of-doctors columns, marked as inferred
            assert all(c == "-" for c in official) and mean[0].endswith("†")
