"""scripts/ablations.py, mahtnet.studies.ablation and the model-variant registry: the queued
study's commands, every variant's settings valid for params.yaml, and the table / forest plot
from run snapshots."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import ablations  # noqa: E402

from mahtnet.config import with_settings  # noqa: E402
from mahtnet.models.variants import VARIANTS, get_variant, register_variant  # noqa: E402
from mahtnet.studies import ablation as study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_variant_and_recipe_is_valid_for_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in [*VARIANTS, *study.LOSSES]:
        with_settings(raw, study.settings_of(name))  # raises ParamsError naming a bad key
    assert {
        "no-transformer",
        "transformer-6",
        "no-attention-gates",
        "no-cbam",
        "no-imagenet",
        "one-stage",
    } <= set(study.ablation_names())
    with pytest.raises(KeyError, match="unknown model variant 'nope'"):
        get_variant("nope")
    with pytest.raises(ValueError, match="twice"):
        register_variant("unet", "unet", "again")


def test_the_study_queues_each_variant_and_seed_up_to_the_evaluation():
    cmds = ablations.queue_commands(["no-transformer", "one-stage"], "isbi-mean", [42, 43], [])
    assert len(cmds) == 4
    first = cmds[0]
    assert first[:6] == ["dvc", "exp", "run", "--queue", "-n", "ablation-no-transformer-s42"]
    assert first[-1] == "evaluate@maht_net"  # the U-Net's stages are not targets
    sets = [first[i + 1] for i, a in enumerate(first) if a == "-S"]
    assert "seed=42" in sets and "model.transformer_layers=0" in sets and "data.gt=mean" in sets
    assert "refine.train.epochs=1" in sets and "tracking.experiment=mahtnet/ablation-isbi-mean" in sets
    assert "++tracking.tags.variant=no-transformer" in sets and "++tracking.tags.seed='42'" in sets
    one_stage = [cmds[2][i + 1] for i, a in enumerate(cmds[2]) if a == "-S"]
    assert "stage1.bypass_transformer=false" in one_stage and "stage1.epochs=48" in one_stage


def _snapshot(variant: str, seed: int, offset: float, n: int = 15, refined: float = 0.0) -> dict:
    """A run record: shape decoding ``offset`` mm from a seed's images, the refiner ``refined``
    mm from them (less 0.3 mm)."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng([seed, len(variant)])
    size = study.INPUT_SIZES.get(variant, {"preprocess.height": 320, "preprocess.width": 256})
    record = {"variant": variant, "seed": seed, "parameters": 3_000_000, "training_minutes": 30.0}
    record["params"] = {"seed": seed, **size}
    record["scores"], record["per_image"] = {}, {}
    for s in ("val", "test1", "test2"):
        base = rng.uniform(1.0, 2.0, n) + noise.normal(0, 0.002, n)
        per = {"image_id": [f"{i:03d}" for i in range(n)]}
        scores = {"official": {}, "mean": {}}
        for read, shift in (("shape", offset), ("refined", refined - 0.3)):
            for gt, gt_shift in (("official", 0.0), ("mean", -0.2)):
                mre = base + shift + gt_shift
                per[f"{read}.{gt}"] = mre.tolist()
                scores[gt][read] = {
                    "mre_mm": float(mre.mean()),
                    "sdr_2mm": 80.0,
                    "sdr_4mm": 95.0,
                    "max_mm": 9.0,
                }
        record["per_image"][s] = per
        record["scores"][s] = {"variants": scores["official"], "variants_mean": scores["mean"]}
    return record


def test_table_verdicts_and_forest_plot(tmp_path):
    runs = {}
    for variant, offset in (("maht_net", 0.0), ("no-transformer", 0.2), ("no-cbam", 0.001)):
        runs[variant] = {seed: _snapshot(variant, seed, offset) for seed in (42, 43, 44)}
    runs["no-cbam"][44]["host"] = "CPU B"  # a run's CPU, as its snapshot records it (older ones: none)
    table = study.build_table(runs, {"maht_net": {"predict_ms": 40.0, "train_step_ms": 900.0}})
    rows = {r["variant"]: r for r in table["rows"]}
    worse = rows["no-transformer"]["test2.official"]["vs_reference"]
    assert worse["mre_diff"] == pytest.approx(0.2, abs=0.01) and worse["verdict"] == "worse"
    assert worse["ci95"][0] > 0 and set(worse["per_seed"]) == {"42", "43", "44"}
    assert rows["no-cbam"]["test2.official"]["vs_reference"]["verdict"] == "no difference"
    two = study.compare(
        runs["maht_net"], {k: runs["no-transformer"][k] for k in (42, 43)}, "test2", "official"
    )
    d = [v["mre_diff"] for v in two["per_seed"].values()]
    half = 12.706 * np.std(d, ddof=1) / np.sqrt(2)  # t(0.975, 1): two seeds give a wide interval
    assert two["ci95"] == pytest.approx((np.mean(d) - half, np.mean(d) + half))
    split = {42: _snapshot("split", 42, 0.3), 43: _snapshot("split", 43, -0.1)}  # seeds disagree
    c = study.compare(runs["maht_net"], split, "test2", "official")
    assert c["mre_diff"] == pytest.approx(0.1, abs=0.01) and c["pooled_p"] < 0.05
    assert c["ci95"][0] < 0 < c["ci95"][1] and c["verdict"] == "no difference"  # the interval spans 0
    assert rows["maht_net"]["val.mean"]["over_4mm"]["mean"] == pytest.approx(5.0)
    md = study.markdown(table)
    assert (
        "| no-transformer | 42,43,44 | 3.00 | 30 | - | - |" in md
        and "| maht_net | 42,43,44 | 3.00 | 30 | 900 | 40 |" in md
    )
    assert f"{rows['maht_net']['val.mean']['mre_mm']['mean']:.3f} +- " in md  # three seeds: mean +- SD
    assert "| no-transformer | test2 | official | " in md and "worse" in md.split("## Every set")[1]
    assert "- CPU B: no-cbam\n" in md  # one line per CPU, with the variants that trained on it
    assert f"- {study.UNRECORDED}: maht_net, no-transformer, no-cbam\n" in md
    png = study.forest(table, tmp_path / "forest.png")
    assert png.stat().st_size > 1000
    json.dumps(table)  # JSON-safe


def test_the_resolution_section_reads_the_refiner_and_decides_on_validation(tmp_path):
    """An input-size variant gets its own section: with the refiner, beside its compute, and
    "more seeds" only when validation improves by more than the reference's seed SD."""
    memory = {"cases": [{"input": [320, 256], "batch": b, "train_peak_mb": 1000.0 + b} for b in (1, 4)]}
    memory["cases"].append({"input": [512, 416], "batch": 4, "train_peak_mb": 3000.0})
    for refined, decision in ((-0.3, "run more seeds"), (0.0, "no gain")):
        runs = {
            "maht_net": {seed: _snapshot("maht_net", seed, 0.0) for seed in (42, 43, 44)},
            "input-512x416": {42: _snapshot("input-512x416", 42, 0.3, refined=refined)},
        }
        res = study.build_table(runs, {}, memory)["resolution"]
        ref, hires = res["rows"]
        assert ref["input"] == [320, 256] and hires["input"] == [512, 416] and hires["seeds"] == [42]
        assert ref["train_peak_mb"] == 1004.0 and hires["train_peak_mb"] == 3000.0  # the largest batch
        val = hires["val.mean"]["vs_reference"]
        assert val["mre_diff"] == pytest.approx(refined, abs=0.01)  # the refiner's, not shape's +0.3
        assert hires["val.mean"]["shape"]["mean"] > hires["val.mean"]["refined"]["mean"]
        assert decision in hires["decision"]
        coarse = hires["val.mean"]["vs_reference_coarse"]  # shape decoding alone: +0.3, no gain
        assert coarse["mre_diff"] == pytest.approx(0.3, abs=0.01) and "gains nothing" in hires["coarse"]
    md = study.markdown(study.build_table(runs, {}, None))
    assert "## The resolution hypothesis" in md and "| 512x416 | 42 | 30 | - | - | - |" in md
    assert "no gain on validation" in md and "gains nothing on validation" in md
    assert "  - test1.mean: with the refiner " in md and "; coarse +0.3" in md
    assert "resolution" not in study.build_table({"maht_net": runs["maht_net"]}, {})


def test_cost_times_a_prediction_and_a_training_step_that_reaches_every_parameter():
    from mahtnet.models.factory import build_model

    p = with_settings(yaml.safe_load((ROOT / "params.yaml").read_text()), {"model.encoder_weights": None})
    model = build_model("maht_net", p.model)
    cost = ablations._cost(model, (64, 64), 2)
    assert set(cost) == {"predict_ms", "train_step_ms"} and all(v > 0 for v in cost.values())
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)


def test_record_adds_the_variant_its_cost_and_the_cpu(tmp_path):
    from test_protocol_study import _workspace_run

    _workspace_run(tmp_path, seed=43)
    for i, stage in enumerate(("stage1", "stage2", "stage3")):
        (tmp_path / "metrics" / f"train_{stage}.json").write_text(
            json.dumps({"parameters": 100 + i, "wall_time_s": 60.0})
        )
    r = study.record("workspace", "no-cbam", tmp_path)
    assert (r["variant"], r["seed"], r["parameters"], r["training_minutes"]) == ("no-cbam", 43, 102, 3.0)
    assert r["settings"] == get_variant("no-cbam").settings and r["host"]
    assert study.record("workspace", "maht_net", tmp_path)["settings"] == {}
