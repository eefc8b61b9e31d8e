"""Figures in README.md and docs/*.md equal the committed JSON they come from, rounded as printed.

Two checks: the sections ``scripts/doc_figures.py`` writes between markers are what their JSON
gives today (run ``python scripts/doc_figures.py write`` after a ``dvc repro`` changes them), and
a sample of figures quoted in the prose: each entry is a phrase of a document with ``{}`` where
the figures stand, and for each figure the JSON file, the key path in it and the format it is
printed with. The phrase, filled with the JSON's values, must occur in the document (whitespace
and line breaks aside), so a changed JSON or a hand-edited figure fails here.

Key paths: keys separated by ``/``; ``name[k=v,...]`` picks the one element of the list ``name``
whose keys match (values compared as strings), ``name[3]`` an index.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class J:
    """One figure: the value at ``path`` in ``file``, times ``scale``, formatted with ``fmt``."""

    file: str
    path: str
    fmt: str = ".3f"
    scale: float = 1.0

    def text(self) -> str:
        return format(value(self.file, self.path) * self.scale, self.fmt)


@cache
def load(file: str):
    return json.loads((REPO / file).read_text())


@cache
def doc_text(doc: str) -> str:
    return " ".join((REPO / doc).read_text().split())


SELECT = re.compile(r"^(?P<key>[^\[]*)\[(?P<sel>[^\]]*)\]$")


def value(file: str, path: str) -> float:
    obj = load(file)
    for part in path.split("/"):
        if part == "len" and isinstance(obj, list):  # a list's length: "positives/refused/len"
            obj = len(obj)
            continue
        m = SELECT.match(part)
        if m is None:
            obj = obj[part]
            continue
        if m["key"]:
            obj = obj[m["key"]]
        sel = m["sel"]
        if sel.isdigit():
            obj = obj[int(sel)]
            continue
        want = dict(kv.split("=", 1) for kv in sel.split(","))
        hits = [o for o in obj if all(str(o.get(k)) == v for k, v in want.items())]
        assert len(hits) == 1, f"{file}: {part} matches {len(hits)} elements"
        obj = hits[0]
    assert isinstance(obj, int | float) and not isinstance(obj, bool), f"{file}: {path} is {obj!r}"
    return float(obj)


PROTOCOL = "docs/protocol.json"
CHOICE = "docs/ensemble_choice.json"
REFERENCE = "docs/reference.json"
ABLATION = "docs/ablation.json"
TRUST = "metrics/trust.json"
BENCH = "metrics/benchmark.json"
CAL = "docs/trust/calibration.json"
SENIOR = "docs/isbi2015-senior"
ADAPT = "docs/adaptation.json"
ROBUST = "docs/robustness_release.json"


def row(protocol: str, model: str, s: str, gt: str) -> str:
    return f"rows[protocol={protocol},model={model},set={s},gt={gt}]/mre_mm"


def variant(name: str, key: str) -> str:
    return f"rows[variant={name}]/{key}"


ENS = "docs/ensemble.json"


def ens(s: str, gt: str, reader: str) -> J:
    return J(ENS, f"sets/{s}/scores/{gt}/{reader}/mre_mm")


def single(s: str, gt: str, key: str) -> J:
    return J(ENS, f"sets/{s}/single_mean/{gt}/mre_mm/{key}")


# (document, phrase with {} for each figure, the figures)
FIGURES: list[tuple[str, str, tuple[J, ...]]] = [
    (
        "README.md",
        "read Test1 at {} mm and Test2 at {} against the mean of both doctors (official {} / {}), "
        "where the single models read {} ± {} and {} ± {} (official {} ± {} / {} ± {})",
        (
            ens("test1", "mean", "heatmaps"),
            ens("test2", "mean", "heatmaps"),
            ens("test1", "official", "heatmaps"),
            ens("test2", "official", "heatmaps"),
            single("test1", "mean", "mean"),
            single("test1", "mean", "sd"),
            single("test2", "mean", "mean"),
            single("test2", "mean", "sd"),
            single("test1", "official", "mean"),
            single("test1", "official", "sd"),
            single("test2", "official", "mean"),
            single("test2", "official", "sd"),
        ),
    ),
    (
        "README.md",
        "Test2's large errors are mostly one landmark: {} of its {} errors above 4 mm are on "
        "soft-tissue pogonion",
        (
            J("docs/conventions.json", "sets/test2/landmarks/soft_tissue_pogonion/gross", ".0f"),
            J("docs/conventions.json", "sets/test2/gross", ".0f"),
        ),
    ),
    (
        "docs/ensemble.md",
        "largest landmark difference {} mm, mean {} mm",
        (J(ENS, "onnx_parity/max_mm", ".4f"), J(ENS, "onnx_parity/mean_mm", ".5f")),
    ),
    # README: where it stands, what generalises, what the components earn, the release
    (
        "README.md",
        "is at {} ± {} mm on Test1 and {} ± {} on Test2 (seeds 42-44)",
        (
            J(PROTOCOL, row("mean", "maht_net", "test1", "mean") + "/mean"),
            J(PROTOCOL, row("mean", "maht_net", "test1", "mean") + "/sd"),
            J(PROTOCOL, row("mean", "maht_net", "test2", "mean") + "/mean"),
            J(PROTOCOL, row("mean", "maht_net", "test2", "mean") + "/sd"),
        ),
    ),
    (
        "README.md",
        "(ours minus it: {} ± {} mm against the mean, pooled Wilcoxon p = {}; {} ± {} official, p = {})",
        (
            J(REFERENCE, "paired/test1.mean/mre_diff/mean", "+.3f"),
            J(REFERENCE, "paired/test1.mean/mre_diff/sd"),
            J(REFERENCE, "paired/test1.mean/pooled_p", ".2f"),
            J(REFERENCE, "paired/test1.official/mre_diff/mean", "+.3f"),
            J(REFERENCE, "paired/test1.official/mre_diff/sd"),
            J(REFERENCE, "paired/test1.official/pooled_p", ".2f"),
        ),
    ),
    (
        "README.md",
        "({} ± {} mm official, p = {}; {} ± {} mean, p = {}), "
        "its largest Test2 error {} mm against our {} ± {}",
        (
            J(REFERENCE, "paired/test2.official/mre_diff/mean", "+.3f"),
            J(REFERENCE, "paired/test2.official/mre_diff/sd"),
            J(REFERENCE, "paired/test2.official/pooled_p", ".4f"),
            J(REFERENCE, "paired/test2.mean/mre_diff/mean", "+.3f"),
            J(REFERENCE, "paired/test2.mean/mre_diff/sd"),
            J(REFERENCE, "paired/test2.mean/pooled_p", ".3f"),
            J(REFERENCE, "sets/test2/scores/official/max_mm", ".1f"),
            J(REFERENCE, "paired/test2.official/ours_max/mean", ".1f"),
            J(REFERENCE, "paired/test2.official/ours_max/sd", ".1f"),
        ),
    ),
    (
        "README.md",
        "({} ± {} mm on Test1 but {} ± {} on Test2, official ground truth, seeds 42-44)",
        (
            J(PROTOCOL, row("senior", "maht_net", "test1", "official") + "/mean"),
            J(PROTOCOL, row("senior", "maht_net", "test1", "official") + "/sd"),
            J(PROTOCOL, row("senior", "maht_net", "test2", "official") + "/mean"),
            J(PROTOCOL, row("senior", "maht_net", "test2", "official") + "/sd"),
        ),
    ),
    (
        "README.md",
        "ahead on Test1 by {} ± {} mm under mean labels",
        (
            J(PROTOCOL, "tests/mean: maht_net - baseline/test1.official/mre_diff/mean", scale=-1),
            J(PROTOCOL, "tests/mean: maht_net - baseline/test1.official/mre_diff/sd"),
        ),
    ),
    (
        "README.md",
        "({} ± {} mm mean, {} ± {} senior;",
        (
            J(PROTOCOL, "tests/mean: maht_net - baseline/test2.official/mre_diff/mean"),
            J(PROTOCOL, "tests/mean: maht_net - baseline/test2.official/mre_diff/sd"),
            J(PROTOCOL, "tests/senior: maht_net - baseline/test2.official/mre_diff/mean"),
            J(PROTOCOL, "tests/senior: maht_net - baseline/test2.official/mre_diff/sd"),
        ),
    ),
    (
        "README.md",
        "(Test2 official {} mm, 95 % CI {} to {}, 9 %; Test1 official {}, 7 %; validation {}, 18 %)",
        (
            J(ABLATION, variant("no-imagenet", "test2.official/vs_reference/mre_diff"), "+.3f"),
            J(ABLATION, variant("no-imagenet", "test2.official/vs_reference/ci95[0]"), "+.3f"),
            J(ABLATION, variant("no-imagenet", "test2.official/vs_reference/ci95[1]"), "+.3f"),
            J(ABLATION, variant("no-imagenet", "test1.official/vs_reference/mre_diff"), "+.3f"),
            J(ABLATION, variant("no-imagenet", "val.mean/vs_reference/mre_diff"), "+.3f"),
        ),
    ),
    (
        "README.md",
        "the refined pipeline ({} vs {} ± {} mm)",
        (
            J(ABLATION, "resolution/rows[variant=input-512x416]/test2.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test2.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test2.official/refined/sd"),
        ),
    ),
    (
        "README.md",
        "took {} ms on 2 threads: {} x its first network alone (`--single`, {} ms) and {} x that network's "
        "arg-max path, measured in the same run ({} ms). "
        "This machine's speed varies from day to day: the committed `end_to_end_predict` section measured "
        "that arg-max path at {} ms and the one-network pipeline without the verdict at {} ms",
        (
            J(BENCH, "release_predict/shipped_ms", ".0f"),
            J(BENCH, "release_predict/shipped_vs_single", ".2f"),
            J(BENCH, "release_predict/single_ms", ".0f"),
            J(BENCH, "release_predict/shipped_vs_arg_max", ".2f"),
            J(BENCH, "release_predict/arg_max_ms", ".0f"),
            J(BENCH, "end_to_end_predict/models/maht_net/onnxruntime_ms", ".0f"),
            J(BENCH, "end_to_end_predict/models/maht_net/headline_onnxruntime_ms", ".0f"),
        ),
    ),
    (
        "README.md",
        "seed SD ({} vs {} ± {} mm) and were chosen there; read once, that ensemble scores Test1 {} "
        "and Test2 {} mm against the mean of both doctors "
        "(official {} / {}; single models {} ± {} / {} ± {})",
        (
            J(CHOICE, "validation/scores/mean/points/mre_mm"),
            J(CHOICE, "validation/single_mean/mean/mre_mm/mean"),
            J(CHOICE, "validation/single_mean/mean/mre_mm/sd"),
            J(CHOICE, "sets/test1/scores/mean/points/mre_mm"),
            J(CHOICE, "sets/test2/scores/mean/points/mre_mm"),
            J(CHOICE, "sets/test1/scores/official/points/mre_mm"),
            J(CHOICE, "sets/test2/scores/official/points/mre_mm"),
            J(CHOICE, "sets/test1/single_mean/mean/mre_mm/mean"),
            J(CHOICE, "sets/test1/single_mean/mean/mre_mm/sd"),
            J(CHOICE, "sets/test2/single_mean/mean/mre_mm/mean"),
            J(CHOICE, "sets/test2/single_mean/mean/mre_mm/sd"),
        ),
    ),
    (
        "README.md",
        "of the {} ISBI images {} are refused and {} are unusual "
        "(the two worst-read Test1 images), and all {} "
        "mirrored are read as mirrored",
        (
            J(TRUST, "positives/images", ".0f"),
            J(TRUST, "positives/refused/len", ".0f"),
            J(TRUST, "positives/unusual/len", ".0f"),
            J(TRUST, "mirrored/verdicts/mirrored", ".0f"),
        ),
    ),
    (
        "README.md",
        "mark {} % of Test1 landmarks and {} % of Test2 "
        "and catch {} of {} Test1 and {} of {} Test2 errors above 4 mm, "
        "and the 90 % bound covers {} % of Test1 but only {} % of Test2 landmarks",
        (
            J(TRUST, "landmarks/test1/all/flag_rate", ".0f", 100),
            J(TRUST, "landmarks/test2/all/flag_rate", ".0f", 100),
            J(TRUST, "landmarks/test1/all/over_4mm/flagged", ".0f"),
            J(TRUST, "landmarks/test1/all/over_4mm/n", ".0f"),
            J(TRUST, "landmarks/test2/all/over_4mm/flagged", ".0f"),
            J(TRUST, "landmarks/test2/all/over_4mm/n", ".0f"),
            J(TRUST, "landmarks/test1/all/bound_coverage", ".0f", 100),
            J(TRUST, "landmarks/test2/all/bound_coverage", ".0f", 100),
        ),
    ),
    (
        "README.md",
        "| test2-official | {} | {} | {} | {} | {} | {} | {} | {} |",
        (
            J(ADAPT, "targets/test2-official/1/zero_shot/mre_mm/mean"),  # the table's: k = 1's draws
            *(J(ADAPT, f"targets/test2-official/{k}/methods/shrunk/mre_mm/mean") for k in (1, 3, 5, 10, 20)),
            J(ADAPT, "targets/test2-official/10/methods/mean/mre_mm/mean"),
            J(ADAPT, "oracle_offset/test2-official/mre_mm"),
        ),
    ),
    (
        "README.md",
        "shipped ensemble loses at most {} mm at the mildest levels and up to {} mm at the strongest "
        "(blur), and its verdict refuses at most {} of {} perturbed Test1 images at any level",
        (
            J(ROBUST, "sets/test2/perturbed/gamma 1.3/mean/mre_diff_mm", ".2f"),
            J(ROBUST, "sets/test2/perturbed/blur 1.2/mean/mre_diff_mm", ".2f"),
            J(ROBUST, "sets/test1/perturbed/blur 1.2/verdicts/not_a_lateral_cephalogram", ".0f"),
            J(ROBUST, "sets/test1/images", ".0f"),
        ),
    ),
    # docs/protocol.md and docs/results.md: the protocol study
    (
        "docs/results.md",
        "senior minus mean on Test2 {} ± {} mm official",
        (
            J(PROTOCOL, "tests/maht_net: senior - mean/test2.official/mre_diff/mean", "+.3f"),
            J(PROTOCOL, "tests/maht_net: senior - mean/test2.official/mre_diff/sd"),
        ),
    ),
    (
        "docs/results.md",
        "on validation ({} ± {} mm against the mean of both doctors; p = {}, {} and {}), on Test1 "
        "({} ± {} official, {} ± {} mean)",
        (
            J(PROTOCOL, "tests/maht_net: doctors - mean/val.mean/mre_diff/mean", "+.3f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/val.mean/mre_diff/sd"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/val.mean/per_seed/42/p", ".4f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/val.mean/per_seed/43/p", ".4f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/val.mean/per_seed/44/p", ".4f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/test1.official/mre_diff/mean", "+.3f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/test1.official/mre_diff/sd"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/test1.mean/mre_diff/mean", "+.3f"),
            J(PROTOCOL, "tests/maht_net: doctors - mean/test1.mean/mre_diff/sd"),
        ),
    ),
    (
        "docs/results.md",
        "-0.029 ± 0.051 mm against the official ground truth and {} ± {} against the mean of both doctors",
        (
            J(PROTOCOL, "tests/mean: maht_net - baseline/test2.mean/mre_diff/mean"),
            J(PROTOCOL, "tests/mean: maht_net - baseline/test2.mean/mre_diff/sd"),
        ),
    ),
    (
        "docs/protocol.md",
        "| MAHT-Net | mean | 42,43,44 | {} ± {} | {} ± {} |",
        (
            J(PROTOCOL, row("mean", "maht_net", "val", "mean") + "/mean"),
            J(PROTOCOL, row("mean", "maht_net", "val", "mean") + "/sd"),
            J(PROTOCOL, row("mean", "maht_net", "test1", "official") + "/mean"),
            J(PROTOCOL, row("mean", "maht_net", "test1", "official") + "/sd"),
        ),
    ),
    # docs/results.md: the earlier ISBI tables
    (
        "docs/results.md",
        "| MAHT-Net (3.86 M) | + shape model + refiner | **{}** | {} | {} / {} / {} / {} | {} | {} |",
        (
            J(f"{SENIOR}/maht_net.json", "mre_mm"),
            J(f"{SENIOR}/maht_net.json", "sd_mm", ".2f"),
            *(J(f"{SENIOR}/maht_net.json", f"sdr_{t}mm", ".1f") for t in ("2", "2.5", "3", "4")),
            J(f"{SENIOR}/maht_net.json", "max_mm", ".1f"),
            J(f"{SENIOR}/maht_net.json", "n_over_10mm", ".0f"),
        ),
    ),
    (
        "docs/results.md",
        "| U-Net baseline (16 ch) | {} | +0.111 (0.002) | {} / {} |",
        (
            J(f"{SENIOR}/optimise.json", "unet/mre_mm"),
            J(f"{SENIOR}/optimise.json", "unet/sdr_2mm", ".1f"),
            J(f"{SENIOR}/optimise.json", "unet/sdr_4mm", ".1f"),
        ),
    ),
    (
        "docs/results.md",
        "| search winner (1 layer, 2 heads, 2x2 windows, sigma 2.05, lr 0.0017) "
        "| {} | {} | {} | {} % | {} % | {} mm | {} |",
        (
            J(f"{SENIOR}/search_winner.json", "validation_mre_mm/stage3"),
            J(f"{SENIOR}/search_winner.json", "validation_mre_mm/refine_maht_net"),
            J(f"{SENIOR}/search_winner.json", "test1/refined/mre_mm"),
            J(f"{SENIOR}/search_winner.json", "test1/refined/sdr_2mm", ".1f"),
            J(f"{SENIOR}/search_winner.json", "test1/refined/sdr_4mm", ".1f"),
            J(f"{SENIOR}/search_winner.json", "test1/refined/max_mm", ".1f"),
            J(f"{SENIOR}/search_winner.json", "test1/refined/n_over_10mm", ".0f"),
        ),
    ),
    (
        "docs/results.md",
        "calibration error {} mm (MAHT-Net) and {} mm (U-Net) over 10 equal-count bins; the landmarks "
        "flagged low-confidence ({} % and {} %) have an MRE of {} and {} mm against {} and {} mm",
        (
            J(f"{SENIOR}/calibration_maht_net.json", "calibration_error_mm", ".2f"),
            J(f"{SENIOR}/calibration_baseline.json", "calibration_error_mm", ".2f"),
            J(f"{SENIOR}/calibration_maht_net.json", "low_confidence/share", ".1f", 100),
            J(f"{SENIOR}/calibration_baseline.json", "low_confidence/share", ".1f", 100),
            J(f"{SENIOR}/calibration_maht_net.json", "low_confidence/mre_flagged_mm", ".2f"),
            J(f"{SENIOR}/calibration_baseline.json", "low_confidence/mre_flagged_mm", ".2f"),
            J(f"{SENIOR}/calibration_maht_net.json", "low_confidence/mre_other_mm", ".2f"),
            J(f"{SENIOR}/calibration_baseline.json", "low_confidence/mre_other_mm", ".2f"),
        ),
    ),
    (
        "docs/results.md",
        "Best validation MRE {} mm (trial {}: stage-1 lr {}, sigma {}",
        (
            J(f"{SENIOR}/search.json", "best_value_mm"),
            J(f"{SENIOR}/search.json", "best_trial", ".0f"),
            J(f"{SENIOR}/search.json", "best_params/stage1.lr", ".4f"),
            J(f"{SENIOR}/search.json", "best_params/heatmap.sigma", ".2f"),
        ),
    ),
    (
        "docs/results.md",
        "for its best value ({} mm)",
        (J("metrics/search.json", "best_value_mm", ".1f"),),
    ),
    # docs/evaluation.md
    (
        "docs/evaluation.md",
        "arg-max {} ms; + shape decoding {} ms (x{}: the peak search and 19 leave-one-out shape fits); "
        "arg-max + refiner on the 19 patches {} ms (x{}); TTA with 5 / 9 transforms {} / {} ms",
        (
            J("metrics/benchmark_decoding.json", "ms_per_image/coarse", ".0f"),
            J("metrics/benchmark_decoding.json", "ms_per_image/shape", ".0f"),
            J("metrics/benchmark_decoding.json", "ratio_to_coarse/shape", ".1f"),
            J("metrics/benchmark_decoding.json", "ms_per_image/refine", ".0f"),
            J("metrics/benchmark_decoding.json", "ratio_to_coarse/refine", ".1f"),
            J("metrics/benchmark_decoding.json", "ms_per_image/tta_5", ".0f"),
            J("metrics/benchmark_decoding.json", "ms_per_image/tta_9", ".0f"),
        ),
    ),
    (
        "docs/evaluation.md",
        "MRE in mm, U-Net / MAHT-Net, clean {} / {}:",
        (
            J(f"{SENIOR}/robustness.json", "baseline/clean/mre_mm"),
            J(f"{SENIOR}/robustness.json", "maht_net/clean/mre_mm"),
        ),
    ),
    (
        "docs/evaluation.md",
        "| contrast 0.7 / 0.5 / 0.3 | {} / {} | {} / {} | {} / {} |",
        tuple(
            J(f"{SENIOR}/robustness.json", f"{m}/perturbations/contrast/rows[{i}]/mre_mm")
            for i in range(3)
            for m in ("baseline", "maht_net")
        ),
    ),
    (
        "docs/evaluation.md",
        "Clean MRE: U-Net {} +/- {}, MAHT-Net {} +/- {} mm",
        (
            J(f"{SENIOR}/robustness_seeds.json", "clean_mre_mm/baseline/mean"),
            J(f"{SENIOR}/robustness_seeds.json", "clean_mre_mm/baseline/sd"),
            J(f"{SENIOR}/robustness_seeds.json", "clean_mre_mm/maht_net/mean"),
            J(f"{SENIOR}/robustness_seeds.json", "clean_mre_mm/maht_net/sd"),
        ),
    ),
    (
        "docs/evaluation.md",
        "Test2 is worse against both ground truths by a small margin beyond the seed SD (official {} mm, "
        "95 % CI {} to {},",
        (
            J(ABLATION, variant("no-cbam", "test2.official/vs_reference/mre_diff"), "+.3f"),
            J(ABLATION, variant("no-cbam", "test2.official/vs_reference/ci95[0]"), "+.3f"),
            J(ABLATION, variant("no-cbam", "test2.official/vs_reference/ci95[1]"), "+.3f"),
        ),
    ),
    (
        "docs/evaluation.md",
        "(validation 0.984 vs {} +- {}; Test1 official {} vs {} +- {}; Test2 official {} vs {} +- {})",
        (
            J(ABLATION, "resolution/rows[variant=maht_net]/val.mean/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/val.mean/refined/sd"),
            J(ABLATION, "resolution/rows[variant=input-512x416]/test1.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test1.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test1.official/refined/sd"),
            J(ABLATION, "resolution/rows[variant=input-512x416]/test2.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test2.official/refined/mean"),
            J(ABLATION, "resolution/rows[variant=maht_net]/test2.official/refined/sd"),
        ),
    ),
    (
        "docs/evaluation.md",
        "{} against {} ms (3.7x) and {} against {} ms (2.1x)",
        (
            J(ABLATION, variant("input-512x416", "train_step_ms"), ".0f"),
            J(ABLATION, variant("maht_net", "train_step_ms"), ".0f"),
            J(ABLATION, variant("input-512x416", "latency_ms"), ".0f"),
            J(ABLATION, variant("maht_net", "latency_ms"), ".0f"),
        ),
    ),
    (
        "docs/evaluation.md",
        "U-Net MRE {} +/- {} mm (SDR 2 mm {} +/- {} %), MAHT-Net {} +/- {} mm ({} +/- {} %)",
        (
            J("metrics/crossval.json", "baseline/mre_mm/mean"),
            J("metrics/crossval.json", "baseline/mre_mm/sd"),
            J("metrics/crossval.json", "baseline/sdr_2mm/mean", ".1f"),
            J("metrics/crossval.json", "baseline/sdr_2mm/sd", ".1f"),
            J("metrics/crossval.json", "maht_net/mre_mm/mean"),
            J("metrics/crossval.json", "maht_net/mre_mm/sd"),
            J("metrics/crossval.json", "maht_net/sdr_2mm/mean", ".1f"),
            J("metrics/crossval.json", "maht_net/sdr_2mm/sd", ".1f"),
        ),
    ),
    # docs/predict.md
    (
        "docs/predict.md",
        "Spearman rho {} against {} for the coarse network's",
        (
            J(CAL, "official/validation/spearman_refined_confidence", ".2f"),
            J(CAL, "official/validation/spearman_coarse_confidence", ".2f"),
        ),
    ),
    (
        "docs/predict.md",
        "where it flags {} % ({} mm against {} mm for the rest, official ground truth; 0.4 would flag {} %;",
        (
            J(CAL, "official/validation/low_confidence/share", ".1f", 100),
            J(CAL, "official/validation/low_confidence/mre_flagged_mm", ".1f"),
            J(CAL, "official/validation/low_confidence/mre_other_mm", ".1f"),
            J(CAL, "official/validation/share_below_0.4", ".0f", 100),
        ),
    ),
    (
        "docs/predict.md",
        "flags {} % of MAHT-Net's landmarks and {} % of the U-Net's",
        (
            J(f"{SENIOR}/calibration_maht_net.json", "low_confidence/share", ".1f", 100),
            J(f"{SENIOR}/calibration_baseline.json", "low_confidence/share", ".1f", 100),
        ),
    ),
    (
        "docs/predict.md",
        "| MAHT-Net, shape + refiner (the headline pipeline) "
        "| {} ms | **{} ms** | {} s (PyTorch not imported) |",
        (
            J(BENCH, "end_to_end_predict/models/maht_net/headline_pytorch_ms", ".1f"),
            J(BENCH, "end_to_end_predict/models/maht_net/headline_onnxruntime_ms", ".1f"),
            J(BENCH, "end_to_end_predict/models/maht_net/headline_onnx_fresh_process/process_wall_s", ".2f"),
        ),
    ),
    (
        "docs/predict.md",
        "| U-Net, arg-max | {} ms | **{} ms** | {} s |",
        (
            J(BENCH, "end_to_end_predict/models/unet/pytorch_ms", ".1f"),
            J(BENCH, "end_to_end_predict/models/unet/onnxruntime_ms", ".1f"),
            J(BENCH, "end_to_end_predict/models/unet/onnx_fresh_process/process_wall_s", ".2f"),
        ),
    ),
    (
        "docs/predict.md",
        "by at most {} px (MAHT-Net) and {} px (U-Net) in original pixels",
        (
            J("metrics/export.json", "maht_net/max_diff_px", ".4f"),
            J("metrics/export.json", "baseline/max_diff_px", ".4f"),
        ),
    ),
    (
        "docs/predict.md",
        "a field of view under half the training images' ({} mm)",
        (J(TRUST, "trust/min_fov_mm", ".1f"),),
    ),
    # docs/trust.md, docs/reference.md, docs/adaptation.md, docs/ablation.md (generated; a sample)
    (
        "docs/trust.md",
        "| test2, all | {} | {} ({}%) | {} ({}) |",
        (
            J(TRUST, "landmarks/test2/all/landmarks", ".0f"),
            J(TRUST, "landmarks/test2/all/flagged", ".0f"),
            J(TRUST, "landmarks/test2/all/flag_rate", ".1f", 100),
            J(TRUST, "landmarks/test2/all/over_4mm/n", ".0f"),
            J(TRUST, "landmarks/test2/all/over_4mm/flagged", ".0f"),
        ),
    ),
    (
        "docs/trust.md",
        "Bound: 90% split-conformal, {} x each landmark's scale.",
        (J(TRUST, "trust/bound_quantile", ".2f"),),
    ),
    (
        "docs/reference.md",
        "| test2 | official | {} | {} |",
        (
            J(REFERENCE, "sets/test2/scores/official/mre_mm"),
            J(REFERENCE, "sets/test2/scores/official/sd_mm"),
        ),
    ),
    (
        "docs/adaptation.md",
        "| test1-senior | {} | {} | {} |",
        (
            J(ADAPT, "oracle_offset/test1-senior/zero_shot_mre_mm"),
            J(ADAPT, "oracle_offset/test1-senior/mre_mm"),
            J(ADAPT, "oracle_offset/test1-senior/sdr_2mm", ".1f"),
        ),
    ),
    (
        "docs/ablation.md",
        "| no-transformer | 42,43,44 | {} | 27 | {} | {} | {} +- {} |",
        (
            J(ABLATION, variant("no-transformer", "parameters"), ".2f", 1e-6),
            J(ABLATION, variant("no-transformer", "train_step_ms"), ".0f"),
            J(ABLATION, variant("no-transformer", "latency_ms"), ".0f"),
            J(ABLATION, variant("no-transformer", "val.mean/mre_mm/mean")),
            J(ABLATION, variant("no-transformer", "val.mean/mre_mm/sd")),
        ),
    ),
    # docs/model.md and docs/optimise.md
    (
        "docs/model.md",
        "forward latency {} / {} / {} / {} ms "
        "(256 px batch 1 / 256 px batch 8 / 512 px batch 1 / 512 px batch 8)",
        tuple(J(BENCH, f"variants/maht_net_b0_tf4/cases[{i}]/latency_ms_batch", ".0f") for i in range(4)),
    ),
    (
        "docs/optimise.md",
        "| 50 % | 1.53 M | 1.555 mm | (run by the same code outside the stage) | {} mm | {} ms |",
        (
            J(f"{SENIOR}/optimise.json", "pruned_50/mre_mm"),
            J(f"{SENIOR}/optimise.json", "pruned_50/onnxruntime_1_threads_ms", ".1f"),
        ),
    ),
]


def _id(entry: tuple[str, str, tuple[J, ...]]) -> str:
    doc, phrase, _ = entry
    return f"{doc}: {phrase[:40]}"


@pytest.mark.parametrize("entry", FIGURES, ids=[_id(e) for e in FIGURES])
def test_quoted_figure_equals_its_json(entry):
    doc, phrase, figures = entry
    expected = " ".join(phrase.format(*(f.text() for f in figures)).split())
    assert expected in doc_text(doc), f"{doc} does not say: {expected}"


def test_the_sample_covers_the_readme_and_the_docs():
    docs = {doc for doc, _, _ in FIGURES}
    assert {"README.md", "docs/results.md", "docs/evaluation.md", "docs/predict.md", "docs/trust.md"} <= docs
    assert {"docs/protocol.md", "docs/reference.md", "docs/adaptation.md"} <= docs
    assert sum(len(figures) for _, _, figures in FIGURES) >= 100


@cache
def doc_figures():
    return load_script("doc_figures")


def test_generated_sections_follow_their_json():
    assert doc_figures().stale() == []


def test_a_changed_json_value_makes_its_section_stale(monkeypatch):
    m = doc_figures()
    real = m.load

    def changed(path):
        data = real(path)
        if str(path) == "metrics/robustness.json":
            data = json.loads(json.dumps(data))
            data["baseline"]["clean"]["mre_mm"] += 0.01
        return data

    monkeypatch.setattr(m, "load", changed)
    assert m.stale() == ["docs/evaluation.md: section synthetic-robustness"]
