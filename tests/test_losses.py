from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from midalign.losses import info_nce

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
