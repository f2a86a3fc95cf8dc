"""Anisotropy diagnostics of pooled states, on matrices whose answers are worked by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from midalign.probe.anisotropy import anisotropy, anisotropy_by_layer

# Two languages × two sentences; dimension 0 is a massive one, the same 3 in every state.
#   a_0 = (3, 1, 2)   a_1 = (3, −1, −2)        b_0 = (3, 1, −2)   b_1 = (3, −1, 2)
# (a_i translates b_i.) Every ‖h‖² = 14.
A = torch.tensor([[3.0, 1.0, 2.0], [3.0, -1.0, -2.0]])
B = torch.tensor([[3.0, 1.0, -2.0], [3.0, -1.0, 2.0]])


def test_diagnostics_of_a_hand_built_matrix():
    d = anisotropy(torch.cat([A, B]), torch.tensor([0, 1, 0, 1]), top=2)
    # non-parallel pairs (different positions): a_0·a_1 = 9 − 1 − 4 = 4, a_0·b_1 = 9 − 1 + 4 =
    # 12, a_1·b_0 = 12, b_0·b_1 = 4, each over 14: mean (4 + 12 + 12 + 4) / 56 = 4/7. The
    # translations (a_i·b_i = 6, cos 3/7) are left out: with them the mean would be 11/21.
    assert d["mean_cosine"] == pytest.approx(4 / 7)
    # E h = (3, 0, 0): ‖E h‖ / E‖h‖ = 3 / √14
    assert d["mean_norm_ratio"] == pytest.approx(3 / 14**0.5)
    # centred states (0, ±1, ±2) and (0, ±1, ∓2): covariance diag(0, 1, 4), off-diagonal
    # (2 + 2 − 2 − 2) / 4 = 0, so the top component carries 4 / 5 of the variance
    assert d["top_pc_share"] == pytest.approx(0.8)
    # E[h_j²] = (9, 1, 4) of E‖h‖² = 14: dimension 0 first, then 2
    assert [t["dim"] for t in d["top_dims"]] == [0, 2]
    assert [t["share"] for t in d["top_dims"]] == pytest.approx([9 / 14, 4 / 14])
    assert d["top_dims_share"] == pytest.approx(13 / 14)


def test_mean_cosine_equals_the_average_over_every_non_parallel_pair():
    g = torch.Generator().manual_seed(0)
    sides = [torch.randn(n, 5, generator=g) + 2 for n in (4, 4, 3)]  # ragged, as Tatoeba's
    position = torch.cat([torch.arange(len(s)) for s in sides])
    states = torch.cat(sides)
    u = F.normalize(states.double(), dim=-1)
    pairs = [
        (p, q)
        for p, q in itertools.product(range(len(states)), repeat=2)
        if position[p] != position[q]
    ]
    loop = sum((u[p] @ u[q]).item() for p, q in pairs) / len(pairs)
    assert len(pairs) == 11**2 - (3**2 + 3**2 + 3**2 + 2**2)
    assert anisotropy(states, position)["mean_cosine"] == pytest.approx(loop, rel=1e-12)


def test_top_pc_share_from_the_smaller_gram_matrix_either_way():
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(6, 20, generator=g, dtype=torch.float64)  # n < d: the n × n Gram
    tall = torch.randn(40, 3, generator=g, dtype=torch.float64)  # n > d: the d × d covariance
    for x in (wide, tall):
        s = torch.linalg.svdvals(x - x.mean(dim=0))
        share = anisotropy(x, torch.arange(len(x)))["top_pc_share"]
        assert share == pytest.approx((s[0] ** 2 / (s**2).sum()).item(), rel=1e-12)


def test_degenerate_cases_give_none_not_nan():
    # one sentence per side: every pair is a translation; all states equal: no variance
    d = anisotropy(torch.ones(2, 3), torch.tensor([0, 0]))
    assert d["mean_cosine"] is None and d["top_pc_share"] is None
    assert d["mean_norm_ratio"] == pytest.approx(1.0)


def test_by_layer_stacks_the_sides_of_each_layer():
    emb = {"a": torch.stack([A, -A]), "b": torch.stack([B, 2 * B])}  # [L=2, n=2, d=3]
    by_layer = anisotropy_by_layer(emb, [4, 9], top=2)
    assert list(by_layer) == [4, 9]
    assert by_layer[4]["mean_cosine"] == pytest.approx(4 / 7)
    # layer 9 holds −a and 2b: cos(−a_0, 2b_1) = −24/28 = cos(−a_1, 2b_0), cos(−a_0, −a_1) =
    # 4/14, cos(2b_0, 2b_1) = 16/56, so the mean is (−6/7 − 6/7 + 2/7 + 2/7) / 4 = −2/7
    assert by_layer[9]["mean_cosine"] == pytest.approx(-2 / 7)
