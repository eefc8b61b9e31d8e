"""Heatmap and coordinate losses, their uncertainty weighting and the composite loss."""

import math
import types

import numpy as np
import pytest
import torch

from mahtnet.codec import HeatmapCodec
from mahtnet.models.head import log_heatmaps
from mahtnet.training.losses import (
    TERMS,
    CompositeLoss,
    UncertaintyWeighting,
    adaptive_wing,
    focal_heatmap,
    heatmap_mse,
    l1_coords,
    predicted_heatmaps,
    softmax_ce,
    ssim_loss,
    wing,
)

POINTS = np.array([[10.3, 12.8], [20.0, 5.5]])
ALL = torch.tensor([[True, True]])
ONE = torch.tensor([[True]])


def _targets(codec, points):
    hm, vis = codec.encode(points)
    return torch.from_numpy(hm)[None], torch.from_numpy(vis)[None]


def _pixel_maps(*values):
    """Tensor ``(1, 1, 1, n)``: one heatmap of the given pixel values."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def _params(**changes):
    fields = {
        "output": "logits",
        "mse_target_scale": 100.0,
        "wing_width": 10.0,
        "wing_curvature": 2.0,
        "adaptive_wing_omega": 14.0,
        "adaptive_wing_theta": 0.5,
        "adaptive_wing_epsilon": 1.0,
        "adaptive_wing_alpha": 2.1,
        "focal_alpha": 2.0,
        "focal_beta": 4.0,
        "ssim_window": 11,
    }
    return types.SimpleNamespace(**(fields | changes))


# softmax_ce


def test_softmax_ce_is_zero_at_optimum_and_positive_elsewhere():
    target, visible = _targets(HeatmapCodec((32, 32), sigma=2.0), POINTS)
    optimum = torch.log(target.clamp_min(1e-30))  # logits whose softmax is the target
    assert softmax_ce(optimum, target, visible).item() == pytest.approx(0.0, abs=1e-5)
    assert softmax_ce(torch.zeros_like(target), target, visible).item() > 1.0


def test_softmax_ce_gradient_pushes_up_the_target_peak():
    target, visible = _targets(HeatmapCodec((16, 16), sigma=1.5), np.array([[8.0, 8.0]]))
    logits = torch.zeros_like(target, requires_grad=True)
    softmax_ce(logits, target, visible).backward()
    assert logits.grad[0, 0, 8, 8] < 0  # descent raises the logit at the peak
    assert logits.grad[0, 0, 0, 0] > 0


# coordinate losses


def test_l1_coords_known_value_and_gradient():
    coords = torch.tensor([[[3.0, -4.0], [1.0, 1.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    value = l1_coords(coords, target, ALL)
    assert value.item() == pytest.approx((7 + 0) / 2)
    value.backward()
    assert coords.grad[0, 0].tolist() == [0.5, -0.5]  # descent moves (3, -4) towards (0, 0)
    assert l1_coords(target, target, ALL).item() == 0.0


def test_wing_known_values_zero_at_optimum_and_continuous_at_width():
    zero = torch.zeros(1, 1, 2)
    for x, expected in ((1.0, 10 * math.log(1.5)), (20.0, 20 - (10 - 10 * math.log(6.0)))):
        value = wing(torch.tensor([[[x, 0.0]]]), zero, ONE, width=10.0, curvature=2.0)
        assert value.item() == pytest.approx(expected, rel=1e-6)
    assert wing(torch.tensor([[[-1.0, 1.0]]]), zero, ONE).item() == pytest.approx(20 * math.log(1.5))
    assert wing(zero, zero, ONE).item() == 0.0
    below, above = (wing(torch.tensor([[[x, 0.0]]]), zero, ONE).item() for x in (10 - 1e-4, 10 + 1e-4))
    assert below == pytest.approx(above, abs=1e-3)


@pytest.mark.parametrize("fn", [l1_coords, wing])
def test_coordinate_descent_moves_towards_the_target(fn):
    coords = torch.tensor([[[5.0, 30.0]]], requires_grad=True)
    target = torch.tensor([[[12.0, 10.0]]])
    fn(coords, target, ONE).backward()
    assert coords.grad[0, 0, 0] < 0 and coords.grad[0, 0, 1] > 0


# heatmap losses


def test_heatmap_mse_of_a_constant_offset():
    target, visible = _targets(HeatmapCodec((16, 16), sigma=2.0), np.array([[8.0, 8.0]]))
    assert heatmap_mse(target, target, visible).item() == 0.0
    assert heatmap_mse(target + 0.3, target, visible).item() == pytest.approx(0.09)


def test_adaptive_wing_known_pixel_values():
    # pixel 1: y = 1, |d| = 0.25 < theta; pixel 2: y = 0, |d| = 1 >= theta
    pred, target = _pixel_maps(1.25, 1.0), _pixel_maps(1.0, 0.0)
    omega, theta, eps, alpha = 14.0, 0.5, 1.0, 2.1
    small = omega * math.log(1 + 0.25**1.1)
    p = alpha
    a = omega / (1 + (theta / eps) ** p) * p * (theta / eps) ** (p - 1) / eps
    c = theta * a - omega * math.log(1 + (theta / eps) ** p)
    assert adaptive_wing(pred, target, ONE).item() == pytest.approx((small + a * 1.0 - c) / 2, rel=1e-5)
    assert adaptive_wing(target, target, ONE).item() == 0.0
    below, above = (adaptive_wing(_pixel_maps(x), _pixel_maps(0.0), ONE).item() for x in (0.49999, 0.50001))
    assert below == pytest.approx(above, abs=1e-3)


def test_ssim_known_values():
    target, visible = _targets(HeatmapCodec((32, 32), sigma=2.0), POINTS)
    assert ssim_loss(target, target, visible).item() == pytest.approx(0.0, abs=1e-5)
    # constant maps a, b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere
    a, b, c1 = torch.full((1, 1, 8, 8), 0.5), torch.ones(1, 1, 8, 8), 0.01**2
    assert ssim_loss(a, b, ONE).item() == pytest.approx(1 - (1 + c1) / (1.25 + c1), rel=1e-5)
    # a zero-mean pattern against its negative: structure -1, so 1 - SSIM is close to 2
    board = ((torch.arange(16)[:, None] + torch.arange(16)) % 2 * 2 - 1.0)[None, None]
    assert ssim_loss(-board, board, ONE).item() > 1.5
    with pytest.raises(ValueError, match="odd"):
        ssim_loss(target, target, visible, window=4)


def test_focal_heatmap_by_hand():
    pred = torch.tensor([[0.8, 0.3], [0.1, 0.2]]).reshape(1, 1, 2, 2)
    target = torch.tensor([[1.0, 0.5], [0.25, 0.0]]).reshape(1, 1, 2, 2)
    positive = -(0.2**2) * math.log(0.8)
    negatives = -(0.5**4) * 0.3**2 * math.log(0.7) - 0.75**4 * 0.1**2 * math.log(0.9) - 0.2**2 * math.log(0.8)
    assert focal_heatmap(pred, target, ONE).item() == pytest.approx(positive + negatives, rel=1e-5)
    # the positive is the map's maximum even below 1; two tied maxima halve the sum
    tied = torch.tensor([[0.6, 0.6], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    every_pixel = -(0.5**2) * math.log(0.5)  # p = 0.5: the same for positives and y = 0 negatives
    assert focal_heatmap(torch.full((1, 1, 2, 2), 0.5), tied, ONE).item() == pytest.approx(
        4 * every_pixel / 2, rel=1e-5
    )


def test_focal_heatmap_is_minimal_at_the_one_hot_of_the_positives():
    target, visible = _targets(HeatmapCodec((16, 16), sigma=2.0), np.array([[8.3, 7.6]]))
    one_hot = (target == target.amax(dim=(-2, -1), keepdim=True)).float()
    assert focal_heatmap(one_hot, target, visible).item() == pytest.approx(0.0, abs=1e-4)
    assert focal_heatmap(target, target, visible).item() > 0.01


@pytest.mark.parametrize("fn", [heatmap_mse, adaptive_wing, ssim_loss, focal_heatmap])
def test_heatmap_gradient_raises_the_peak_and_lowers_far_pixels(fn):
    target, visible = _targets(HeatmapCodec((24, 24), sigma=2.0), np.array([[12.0, 12.0]]))
    pred = torch.full_like(target, 0.3, requires_grad=True)
    fn(pred, target, visible).backward()
    assert pred.grad[0, 0, 12, 12] < 0 and pred.grad[0, 0, 0, 0] > 0


# masking


@pytest.mark.parametrize("term", TERMS)
def test_masked_landmarks_do_not_count(term):
    target, _ = _targets(HeatmapCodec((16, 16), sigma=1.5), np.array([[8.0, 8.0], [3.0, 3.0]]))
    out = torch.randn_like(target, requires_grad=True)
    coords = torch.tensor([[[7.0, 9.0], [1.0, 2.0]]], requires_grad=True)
    target_coords = torch.tensor([[[8.0, 8.0], [float("nan"), float("nan")]]])  # hidden: anything
    loss = CompositeLoss({term: 1.0}, output="logits", uncertainty=False)
    only_first, _ = loss(out[:, :1], coords[:, :1], target[:, :1], target_coords[:, :1], ONE)
    masked, _ = loss(out, coords, target, target_coords, torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(only_first.item(), rel=1e-5)
    out.grad = coords.grad = None
    masked.backward()
    for grad in (out.grad, coords.grad):
        assert grad is None or (torch.isfinite(grad).all() and grad[:, 1].abs().sum() == 0)
    none, _ = loss(out, coords, target, target_coords, torch.tensor([[False, False]]))
    assert none.item() == 0.0


# decoding and predicted heatmaps


def test_log_heatmaps_decode_consistently():
    codec = HeatmapCodec((24, 24), sigma=2.0)
    target, _ = _targets(codec, np.array([[7.3, 15.6]]))
    for kind, out in (("logits", torch.log(target.clamp_min(1e-30)) + 4.0), ("heatmap", target)):
        coords, _ = codec.decode(log_heatmaps(out, kind).numpy(), is_log=True)
        np.testing.assert_allclose(coords[0, 0], [7.3, 15.6], atol=0.05)
    with pytest.raises(KeyError, match="logits, heatmap"):
        log_heatmaps(target, "probabilities")


def test_predicted_heatmaps_of_the_optimum_is_the_target():
    target, _ = _targets(HeatmapCodec((32, 32), sigma=2.0), POINTS)
    logits = torch.log(target.clamp_min(1e-30)) - 3.0  # softmax ignores the offset
    torch.testing.assert_close(predicted_heatmaps(logits, target, "logits", 100.0), target)
    torch.testing.assert_close(predicted_heatmaps(target * 50.0, target, "heatmap", 50.0), target)
    with pytest.raises(KeyError, match="logits, heatmap"):
        predicted_heatmaps(target, target, "sigmoid", 1.0)


# uncertainty weighting


@pytest.mark.parametrize(("value", "sign"), [(3.0, -1), (0.5, 1)])
def test_uncertainty_gradient_sign(value, sign):
    weighting = UncertaintyWeighting(["a", "b"])
    total = weighting({"a": torch.tensor(value), "b": torch.tensor(1.0)})
    assert total.item() == pytest.approx(value + 1.0)  # s = 0: plain sum
    total.backward()
    grad = weighting.log_vars.grad
    assert grad[0].item() == pytest.approx(1 - value) and math.copysign(1, grad[0].item()) == sign
    assert grad[1].item() == pytest.approx(0.0)  # L = 1 is the optimum of s = 0


def test_uncertainty_log_variances_train_towards_log_loss():
    weighting = UncertaintyWeighting(["a"])
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.2)
    for _ in range(100):
        optimizer.zero_grad()
        weighting({"a": torch.tensor(4.0)}).backward()
        optimizer.step()
    assert weighting.log_var("a").item() == pytest.approx(math.log(4.0), abs=1e-3)
    with pytest.raises(KeyError, match="expected terms a"):
        weighting({"b": torch.tensor(1.0)})


# composite loss


def _batch():
    codec = HeatmapCodec((32, 32), sigma=2.0)
    target, visible = _targets(codec, POINTS)
    target_coords = torch.from_numpy(POINTS).float()[None]
    torch.manual_seed(0)
    return torch.randn_like(target), target_coords + torch.randn(1, 2, 2), target, target_coords, visible


def test_composite_weights_combine_linearly():
    heatmaps, coords, target, target_coords, visible = _batch()
    weights = {"softmax_ce": 0.5, "mse": 2.0, "wing": 0.1, "ssim": 1.5, "focal": 0.0, "l1_coords": 0}
    loss = CompositeLoss(weights, output="logits", uncertainty=False, wing_width=5.0, wing_curvature=1.0)
    total, log = loss(heatmaps, coords, target, target_coords, visible)
    pred = predicted_heatmaps(heatmaps, target, "logits", 100.0)
    separate = {
        "softmax_ce": softmax_ce(heatmaps, target, visible),
        "mse": heatmap_mse(pred, target, visible),
        "wing": wing(coords, target_coords, visible, width=5.0, curvature=1.0),
        "ssim": ssim_loss(pred, target, visible),
    }
    assert set(log) == set(separate)  # zero-weight terms are not computed
    for name, value in separate.items():
        assert log[name].item() == pytest.approx(value.item(), rel=1e-6) and not log[name].requires_grad
    assert total.item() == pytest.approx(sum(weights[n] * v.item() for n, v in separate.items()), rel=1e-6)


def test_composite_uncertainty_combines_weighted_terms():
    heatmaps, coords, target, target_coords, visible = _batch()
    weights = {"mse": 2.0, "l1_coords": 0.5, "adaptive_wing": 1.0}
    loss = CompositeLoss(weights, output="heatmap", uncertainty=True, target_scale=10.0)
    assert loss.output == "heatmap" and sum(p.numel() for p in loss.parameters()) == 3
    with torch.no_grad():
        loss.uncertainty.log_vars.copy_(torch.tensor([0.3, -0.2, 0.1]))  # TERMS order: mse, l1, aw
    total, log = loss(heatmaps, coords, target, target_coords, visible)
    s = {"mse": 0.3, "l1_coords": -0.2, "adaptive_wing": 0.1}
    expected = sum(math.exp(-s[n]) * w * log[n].item() + s[n] for n, w in weights.items())
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert {f"logvar_{n}" for n in weights} <= set(log)
    assert log["logvar_l1_coords"].item() == pytest.approx(-0.2)
    total.backward()
    assert loss.uncertainty.log_vars.grad is not None


@pytest.mark.parametrize("output", ["logits", "heatmap"])
def test_composite_is_zero_at_the_optimum(output):
    codec = HeatmapCodec((32, 32), sigma=2.0)
    target, visible = _targets(codec, POINTS)
    coords = torch.from_numpy(POINTS).float()[None]
    heatmaps = torch.log(target.clamp_min(1e-30)) if output == "logits" else target * 100.0
    weights = dict.fromkeys(("mse", "l1_coords", "wing", "adaptive_wing", "ssim"), 1.0)
    if output == "logits":
        weights["softmax_ce"] = 1.0
    total, log = CompositeLoss(weights, output, uncertainty=False)(heatmaps, coords, target, coords, visible)
    assert total.item() == pytest.approx(0.0, abs=1e-4)


def test_composite_from_params_forwards_every_option():
    heatmaps, coords, target, target_coords, visible = _batch()
    p = _params(output="heatmap", mse_target_scale=5.0, wing_width=4.0, wing_curvature=0.5, focal_beta=2.0)
    p.adaptive_wing_omega, p.ssim_window = 7.0, 5
    weights = {"mse": 1.0, "wing": 1.0, "focal": 1.0, "adaptive_wing": 1.0, "ssim": 1.0}
    loss = CompositeLoss.from_params(p, weights, uncertainty=False)
    assert loss.output == "heatmap" and loss.uncertainty is None
    _, log = loss(heatmaps, coords, target, target_coords, visible)
    pred = heatmaps / 5.0
    expected = {
        "mse": heatmap_mse(pred, target, visible),
        "wing": wing(coords, target_coords, visible, width=4.0, curvature=0.5),
        "focal": focal_heatmap(pred, target, visible, beta=2.0),
        "adaptive_wing": adaptive_wing(pred, target, visible, omega=7.0),
        "ssim": ssim_loss(pred, target, visible, window=5),
    }
    for name, value in expected.items():
        assert log[name].item() == pytest.approx(value.item(), rel=1e-6)


def test_composite_errors():
    with pytest.raises(
        KeyError, match="'huber'.*softmax_ce, mse, l1_coords, wing, adaptive_wing, ssim, focal"
    ):
        CompositeLoss({"huber": 1.0}, output="logits", uncertainty=False)
    with pytest.raises(ValueError, match="at least one"):
        CompositeLoss({"mse": 0.0, "wing": 0}, output="logits", uncertainty=False)
    with pytest.raises(ValueError, match="at least one"):
        CompositeLoss({}, output="logits", uncertainty=True)
    with pytest.raises(ValueError, match="non-negative"):
        CompositeLoss({"mse": 1.0, "wing": -0.5}, output="logits", uncertainty=False)
    with pytest.raises(KeyError, match="logits, heatmap"):
        CompositeLoss({"mse": 1.0}, output="sigmoid", uncertainty=False)
    with pytest.raises(ValueError, match='softmax_ce needs output "logits"'):
        CompositeLoss({"softmax_ce": 1.0}, output="heatmap", uncertainty=False)
    CompositeLoss({"softmax_ce": 0.0, "mse": 1.0}, output="heatmap", uncertainty=False)  # not computed
