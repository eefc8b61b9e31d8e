"""Progress bars of the long commands (tqdm, ``disable=None``): silent when stderr is not a
terminal (pipes, DVC logs, CI), drawn when it is; the per-batch evaluation behind the evaluate
command's bar gives the same numbers as one pass over the whole split."""

import io
import sys
import types

import numpy as np
import pytest
from tqdm import tqdm

from mahtnet.analysis.evaluation import evaluate_variants
from mahtnet.analysis.robustness import robustness
from mahtnet.codec import HeatmapCodec
from mahtnet.config import parse_params
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader
from mahtnet.training.crossval import lines_above

K, H, W = 3, 32, 32
BAR = ("it/s", "s/it", "%|", "█")  # what a drawn tqdm bar writes


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def drawn(text: str) -> bool:
    return any(mark in text for mark in BAR)


def _robustness(params_raw, desc="robustness tiny"):
    class Sample:
        def __init__(self, i):
            self.image_id, self.landmarks, self.pixel_spacing_mm = f"{i:03d}", np.full((K, 2), 20.0), 0.1

    params = parse_params(params_raw)
    images = [np.full((48, 48), 100, np.uint8) for _ in range(2)]
    score = lambda data: np.abs(data.landmarks_orig - 20.0).sum(-1) + 1.0  # noqa: E731
    compare = lambda a, b: {"mre_diff": float(b.mean() - a.mean()), "wilcoxon": {"p_value": 1.0}}  # noqa: E731
    samples = [Sample(0), Sample(1)]
    return robustness(score, samples, images, params.robustness, (32, 32), compare, desc)


def test_a_bar_is_silent_when_stderr_is_not_a_terminal(params_raw, monkeypatch, capsys):
    pipe = io.StringIO()  # isatty() is False, as for a pipe or a log file
    monkeypatch.setattr(sys, "stderr", pipe)
    out = _robustness(params_raw)
    assert out["clean"]["mre_mm"] == pytest.approx(1.0)
    assert pipe.getvalue() == ""
    assert capsys.readouterr().out == ""  # nothing on stdout either


def test_a_bar_is_drawn_on_a_terminal(params_raw, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _robustness(params_raw)
    text = terminal.getvalue()
    assert drawn(text) and "robustness tiny" in text and "crop 0.1" in text
    steps = 1 + sum(len(v) for k, v in params_raw["robustness"].items() if k != "seed")
    assert f"{steps}/{steps}" in text
    assert capsys.readouterr().out == ""  # the bar never goes to stdout


def test_lines_printed_under_a_bar_go_above_it(monkeypatch, capsys):
    real = sys.stdout
    with tqdm(total=2, disable=True) as bar, lines_above(bar):
        assert sys.stdout is real  # not a terminal: stdout untouched
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with tqdm(total=2, desc="folds", disable=None) as bar, lines_above(bar):
        print("epoch 1", end="")
        print(": done", flush=True)
        bar.update()
    assert sys.stdout is real
    assert capsys.readouterr().out == "epoch 1: done\n"
    assert "folds" in terminal.getvalue()


# ----------------------------------------------------------------- evaluate: per batch, same numbers


def _log_softmax(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(*x.shape[:-2], -1)
    flat = flat - flat.max(-1, keepdims=True)
    return (flat - np.log(np.exp(flat).sum(-1, keepdims=True))).reshape(x.shape)


def _maps(images: np.ndarray, k: int) -> np.ndarray:
    """Log-heatmaps ``(N, k, h, w)``: each image's own pixels, shifted per channel."""
    x = images.astype(np.float64) / 16.0
    return _log_softmax(np.stack([np.roll(x, 3 * j, axis=-1) for j in range(k)], axis=1))


class Backend:
    """A coarse network stand-in: images ``(N, H, W)`` -> log-heatmaps ``(N, K, H, W)``."""

    codec = HeatmapCodec((H, W), 2.0)
    card = types.SimpleNamespace(
        input_size=(H, W), landmark_names=tuple(f"L{k}" for k in range(K)), file="stub"
    )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return _maps(images, K)


class Refiner:
    """A refiner stand-in: patches ``(M, 8, 8)`` -> log-heatmaps ``(M, 8, 8)``."""

    codec = HeatmapCodec((8, 8), 1.0)

    def __call__(self, patches: np.ndarray, landmark: np.ndarray) -> np.ndarray:
        return _maps(patches, 1)[:, 0]


def _split(n: int) -> tuple[PreparedSet, FineSet]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, H, W), dtype=np.uint8)
    points = rng.uniform(5, 90, (n, K, 2))
    ids = np.array([f"{i:03d}" for i in range(n)])
    data = PreparedSet(
        ids, images, points / 3, points, np.tile([1 / 3, 1 / 3, 0, 0, 96, 96], (n, 1)), np.full(n, 0.1),
        points, points, points,
    )  # fmt: skip
    fine_images = rng.integers(0, 255, (n, 48, 48), dtype=np.uint8)
    fine = FineSet(
        ids, fine_images, np.full((n, 2), 48), np.full(n, 0.5), points, np.full(n, 0.1), points, points
    )
    return data, fine


def test_evaluate_per_batch_gives_the_numbers_of_one_pass(monkeypatch):
    data, fine = _split(7)
    reader = LandmarkReader(Backend(), refiner=Refiner(), batch_size=2, refine_batch_size=3)
    boxes = [data.letterbox(i) for i in range(len(data))]
    whole, conf = reader.coarse(data.images, boxes, list(data.spacing))
    refined, refined_conf = reader.refine(fine, whole["coarse"])
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = evaluate_variants([reader], data, [2.0], fine, "evaluate tiny")
    np.testing.assert_array_equal(out["coarse"].pred, whole["coarse"])
    np.testing.assert_array_equal(out["coarse"].confidence, conf)
    np.testing.assert_array_equal(out["refined"].pred, refined)
    np.testing.assert_array_equal(out["refined"].confidence, refined_conf)
    assert "evaluate tiny" in terminal.getvalue() and "/14 " in terminal.getvalue()  # 2 passes of 7
    pipe, terminal = io.StringIO(), Terminal()
    monkeypatch.setattr(sys, "stderr", pipe)
    evaluate_variants([reader], data, [2.0], fine, "evaluate tiny")
    monkeypatch.setattr(sys, "stderr", terminal)
    evaluate_variants([reader], data, [2.0], fine)  # no label (robustness, crossval): no bar at all
    assert pipe.getvalue() == "" and terminal.getvalue() == ""
