from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from midalign.training.losses import STD_FLOOR, feature_stats, info_nce, top1_accuracy

# x1=(1,0) x2=(0,1);  y1=(1,0) y2=(0.6,0.8)  (unit vectors, so s_ij = x_i·y_j / τ)
X = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_info_nce_on_a_hand_worked_2x2_example():
    # τ = 1: cosines s11=1, s12=0.6, s21=0, s22=0.8
    # row 1: −log(e^1 / (e^1 + e^0.6))   = log(1 + e^−0.4) = 0.5130153
    # row 2: −log(e^0.8 / (e^0 + e^0.8)) = log(1 + e^−0.8) = 0.3711007
    # mean = 0.4420580
    assert info_nce(X, Y, temperature=1.0).item() == pytest.approx(0.4420580, abs=1e-6)
    # y→x: row 1: log(1 + e^−1) = 0.3132617; row 2: −log(e^0.8/(e^0.6+e^0.8)) = log(1+e^−0.2)
    # = 0.5981389; mean 0.4557003; symmetric = (0.4420580 + 0.4557003) / 2 = 0.4488791
    assert info_nce(X, Y, 1.0, symmetric=True).item() == pytest.approx(0.4488791, abs=1e-6)
    # τ = 0.1 sharpens: row 1 log(1+e^−4), row 2 log(1+e^−8)
    expected = (math.log1p(math.exp(-4)) + math.log1p(math.exp(-8))) / 2
    assert info_nce(X, Y, 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_is_scale_invariant_and_averages_layers():
    torch.manual_seed(0)
    x, y = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    per_layer = [info_nce(x[i], y[i], 0.5).item() for i in range(3)]
    assert info_nce(x, y, 0.5).item() == pytest.approx(sum(per_layer) / 3, abs=1e-6)
    assert info_nce(7 * x, 0.1 * y, 0.5).item() == pytest.approx(sum(per_layer) / 3, abs=1e-6)


def test_info_nce_equals_cross_entropy_on_cosine_logits():
    torch.manual_seed(1)
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / 0.1
    assert info_nce(x, y, 0.1).item() == pytest.approx(
        F.cross_entropy(logits, torch.arange(6)).item(), abs=1e-5
    )


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="temperature must be positive"):
        info_nce(X, Y, temperature)


# Centred, x1 = (1, 0), x2 = (−1, 0), y1 = (0.6, 0.8), y2 = (−0.6, −0.8): the four rows sum to 0.
# Shifted by c = (3, 4), as a shared "massive" direction would: y1 + c = (3.6, 4.8) and
# y2 + c = (2.4, 3.2) are both along (3, 4), so the raw cosines cannot tell them apart.
XC = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
YC = torch.tensor([[0.6, 0.8], [-0.6, -0.8]], dtype=torch.float64)
SHIFT = torch.tensor([3.0, 4.0], dtype=torch.float64)


def test_center_and_standardize_on_a_hand_worked_example():
    x, y = XC + SHIFT, YC + SHIFT
    # raw: cos(x_i, y1) = cos(x_i, y2) for both i, so each row is −log(1/2)
    assert info_nce(x, y, 1.0).item() == pytest.approx(math.log(2), abs=1e-12)
    # centred: the mean of the 4 rows is c; cosines ±0.6 → per row log(1 + e^−1.2)
    expected = math.log1p(math.exp(-1.2))  # 0.2632825
    assert info_nce(x, y, 1.0, normalize="center").item() == pytest.approx(expected, abs=1e-12)
    # standardised: σ² = (1 + 1 + 0.36 + 0.36) / 4 = 0.68 and (0.64 + 0.64) / 4 = 0.32;
    # x̃1 = (1/√0.68, 0), ỹ1 = (0.6/√0.68, 0.8/√0.32): cos = 0.7276069 / 1.5904132 = 0.4574957,
    # and the other cosines are ±0.4574957 → per row log(1 + e^(−2·0.4574957)) = 0.3368436
    s = (0.6 / math.sqrt(0.68)) / math.sqrt(0.36 / 0.68 + 0.64 / 0.32)
    assert s == pytest.approx(0.4574957, abs=1e-7)
    got = info_nce(x, y, 1.0, normalize="standardize").item()
    assert got == pytest.approx(math.log1p(math.exp(-2 * s)), abs=1e-12)
    assert got == pytest.approx(0.3368436, abs=1e-7)
    # top-1: centred or standardised, each x finds its own y
    assert top1_accuracy(x, y, "center").item() == 1.0
    assert top1_accuracy(x, y, "standardize").item() == 1.0


def test_feature_stats_floor_a_constant_dimension():
    # dimension 0: ±1 (σ = 1); dimension 1: always 5 (σ = 0, floored to 1e-3 · √(mean σ²)
    # = 1e-3 · √0.5 = 7.0710678e-4)
    rows = torch.tensor([[1.0, 5.0], [-1.0, 5.0], [1.0, 5.0], [-1.0, 5.0]], dtype=torch.float64)
    mean, std = feature_stats(rows)
    assert mean.tolist() == [0.0, 5.0]
    assert std[0].item() == 1.0
    assert std[1].item() == pytest.approx(STD_FLOOR * math.sqrt(0.5), rel=1e-12)
    assert std[1].item() == pytest.approx(7.0710678e-4, rel=1e-7)
    # the constant dimension contributes 0 / floor = 0, and no NaN reaches the gradient
    x = rows[:2].clone().requires_grad_(True)
    y = rows[2:].clone().requires_grad_(True)
    info_nce(x, y, 0.5, normalize="standardize").backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("stats_from", ["batch", "base"])
def test_center_ignores_a_shift_and_standardize_a_per_dimension_scale(stats_from):
    """With the base model's statistics the shift and scale apply to the states the statistics
    were measured on too, as they would if the model had them."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 6, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ref = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)  # the base states
    shift = 50 * torch.randn(3, 1, 8, generator=g, dtype=torch.float64)  # per layer
    scale = torch.exp(torch.randn(8, generator=g, dtype=torch.float64))  # 0.2 to 5, say
    scale[::3] *= -1  # a flipped dimension changes no cosine after standardising either

    def loss(normalize, a, b, base):
        stats = feature_stats(base) if stats_from == "base" else None
        return info_nce(a, b, 0.3, symmetric=True, normalize=normalize, stats=stats).item()

    plain = {n: loss(n, x, y, ref) for n in ("none", "center", "standardize")}
    shifted = {n: loss(n, x + shift, y + shift, ref + shift) for n in plain}
    scaled = {n: loss(n, x * scale, y * scale, ref * scale) for n in plain}
    assert shifted["center"] == pytest.approx(plain["center"], abs=1e-12)
    assert shifted["standardize"] == pytest.approx(plain["standardize"], abs=1e-12)
    assert scaled["standardize"] == pytest.approx(plain["standardize"], abs=1e-12)
    # and they mean something: the raw loss moves with the shift, the centred one with the scale
    assert abs(shifted["none"] - plain["none"]) > 1e-2
    assert abs(scaled["center"] - plain["center"]) > 1e-3


def test_batch_statistics_are_those_of_x_and_y_together():
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(2, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    rows = torch.cat([x, y], dim=1)
    for normalize in ("center", "standardize"):
        batch = info_nce(x, y, 0.2, normalize=normalize)
        given = info_nce(x, y, 0.2, normalize=normalize, stats=feature_stats(rows))
        assert batch.item() == pytest.approx(given.item(), abs=1e-14)
    # by hand: standardise with the 10 rows' mean and population σ, then plain InfoNCE
    mean = rows.mean(dim=1, keepdim=True)
    std = rows.std(dim=1, keepdim=True, correction=0)
    by_hand = info_nce((x - mean) / std, (y - mean) / std, 0.2)
    assert info_nce(x, y, 0.2, normalize="standardize").item() == pytest.approx(
        by_hand.item(), abs=1e-14
    )


@pytest.mark.parametrize(
    ("normalize", "stats_from"),
    [("none", "-"), ("center", "batch"), ("standardize", "batch"), ("standardize", "base")],
)
def test_gradient_check(normalize, stats_from):
    """Analytic gradients (through the batch statistics, too) against finite differences."""
    g = torch.Generator().manual_seed(2)
    x, y = (torch.randn(2, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    stats = feature_stats(torch.randn(2, 30, 5, generator=g, dtype=torch.float64))
    stats = stats if stats_from == "base" else None

    def loss(a, b):
        return info_nce(a, b, 0.5, symmetric=True, normalize=normalize, stats=stats)

    assert torch.autograd.gradcheck(
        loss, (x.requires_grad_(True), y.requires_grad_(True)), eps=1e-6, atol=1e-8
    )


def test_top1_accuracy_counts_rows_and_layers():
    # layer 0: x1 → y1 (cos 1 vs 0), x2 → y1 (0.8 > 0.6: a miss); layer 1: both hit
    x = torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[1.0, 0.0], [0.0, 1.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert top1_accuracy(x, y).item() == pytest.approx(3 / 4)
    assert top1_accuracy(x[0], y[0]).item() == pytest.approx(1 / 2)
    # a tie is a miss: states collapsed onto one direction score 0, not 1/B
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert top1_accuracy(same, same).item() == 0.0


def test_statistics_of_the_wrong_shape_are_rejected():
    x = torch.randn(1, 4, 6)
    with pytest.raises(ValueError, match="stats must be"):
        info_nce(x, x, normalize="center", stats=(torch.zeros(2, 6), torch.ones(2, 6)))
