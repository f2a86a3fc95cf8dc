from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from midalign.data.corpus import ParallelCorpus
from midalign.errors import InputError
from midalign.probe import retrieval
from midalign.probe.retrieval import (
    all_pairs_accuracy,
    all_pairs_predictions,
    correlate,
    normalize_states,
    pair_accuracy,
    retrieval_accuracy,
    summarize,
    xsim_predict,
)

# x1=(1,0) x2=(0.96,0.28) x3=(0,1);  y1=(1,0) y2=(0.8,0.6) y3=(0.28,0.96)
X = torch.tensor([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])
Y = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.28, 0.96]])


def test_xsim_on_a_hand_worked_3x3_example():
    # cosines       y1     y2      y3
    #   x1        1.00   0.800   0.2800
    #   x2        0.96   0.936   0.5376
    #   x3        0.00   0.600   0.9600
    # k = 2: avg_x = (0.9, 0.948, 0.78); avg_y = column top-2 means = (0.98, 0.868, 0.7488)
    # x2's candidates: y1 → 0.96 / ((0.948 + 0.98)/2) = 0.99585,  y2 → 0.936 / ((0.948 + 0.868)/2)
    # = 1.03084: the margin prefers y2 (its translation); plain cosine takes the hub y1.
    # x1: y1 1/0.94 = 1.0638 > y2 0.8/0.884 = 0.9050;  x3: y3 0.96/0.7644 = 1.2559 > y2 0.6/0.824
    assert xsim_predict(X, Y, k=2).tolist() == [0, 1, 2]
    assert xsim_predict(X, Y, k=2, margin="cosine").tolist() == [0, 0, 2]
    assert retrieval_accuracy(X, Y, k=2) == 1.0
    assert retrieval_accuracy(X, Y, k=2, margin="cosine") == pytest.approx(2 / 3)
    # scale does not matter: vectors are L2-normalised first
    assert xsim_predict(3 * X, 0.5 * Y, k=2).tolist() == [0, 1, 2]


def _laser_style(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Slow reference in the structure of LASER's xsim.py: kNN both ways, then a double loop
    over sources × candidates scoring cos / mean of the two kNN averages."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = x @ y.T
    ind_xy = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    avg_xy = np.take_along_axis(sim, ind_xy, axis=1).mean(axis=1)
    avg_yx = np.sort(sim.T, axis=1)[:, ::-1][:, :k].mean(axis=1)
    scores = np.zeros(ind_xy.shape)
    for i in range(ind_xy.shape[0]):
        for j in range(ind_xy.shape[1]):
            t = ind_xy[i, j]
            scores[i, j] = x[i].dot(y[t]) / ((avg_xy[i] + avg_yx[t]) / 2)
    return ind_xy[np.arange(len(x)), scores.argmax(axis=1)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_margin_matches_a_slow_reference_loop(seed, k):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(40, 16, generator=g, dtype=torch.float64)
    x = shared + 0.9 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    y = shared + 0.9 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    ours = xsim_predict(x, y, k=k)
    reference = _laser_style(x.numpy(), y.numpy(), k)
    assert ours.tolist() == reference.tolist()
    assert 0.1 < (ours == torch.arange(40)).float().mean() < 1.0  # neither trivial nor hopeless


def test_all_pairs_accuracy_equals_pairwise_loop():
    g = torch.Generator().manual_seed(5)
    shared = torch.randn(1, 1, 30, 12, generator=g)
    emb = shared + torch.randn(3, 4, 30, 12, generator=g)  # [L=3, M=4, N=30, d]
    acc = all_pairs_accuracy(emb, k=4)
    assert acc.shape == (3, 4, 4)
    for layer in range(3):
        for s in range(4):
            assert torch.isnan(acc[layer, s, s])
            for t in range(4):
                if s != t:
                    expected = retrieval_accuracy(emb[layer, s], emb[layer, t], k=4)
                    assert acc[layer, s, t].item() == pytest.approx(expected)
    cosine = all_pairs_accuracy(emb, k=4, margin="cosine")
    assert cosine[1, 0, 2].item() == pytest.approx(
        retrieval_accuracy(emb[1, 0], emb[1, 2], margin="cosine")
    )


def _old_all_pairs_predictions(emb: torch.Tensor, k: int, margin: str) -> torch.Tensor:
    """``all_pairs_predictions`` as it was before it streamed: every layer normalised at once,
    blocks of source languages against all targets, int64 predictions [L, M, M, N] in full."""
    n_layers, m, n, _ = emb.shape
    emb = F.normalize(emb.float(), dim=-1)
    block = max(1, retrieval._BLOCK_BYTES // (m * n * n * 4))
    pred = torch.empty(n_layers, m, m, n, dtype=torch.long)
    for layer in range(n_layers):
        e = emb[layer]
        for start in range(0, m, block):
            sim = torch.einsum("snd,tmd->stnm", e[start : start + block], e)
            pred[layer, start : start + block] = retrieval._predict(sim, k, margin)
    return pred


def _multiway(seed: int, layers: int = 3, m: int = 5, n: int = 40, d: int = 16) -> torch.Tensor:
    """[L, M, N, d]: a shared meaning per sentence, an offset per language, noise per layer."""
    g = torch.Generator().manual_seed(seed)
    meaning = torch.randn(1, 1, n, d, generator=g)
    language = torch.randn(1, m, 1, d, generator=g)
    noise = torch.linspace(0.8, 2.0, layers).view(layers, 1, 1, 1)
    return meaning + 0.7 * language + noise * torch.randn(layers, m, n, d, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("k", "margin"), [(1, "ratio"), (4, "ratio"), (4, "cosine")])
@pytest.mark.parametrize("pairs_per_block", [None, 1, 3, 7])
def test_streamed_scoring_equals_the_old_all_at_once_computation(
    monkeypatch, seed, k, margin, pairs_per_block
):
    emb = _multiway(seed)
    reference = _old_all_pairs_predictions(emb, k, margin)
    if pairs_per_block is not None:  # blocks that cut the 5 × 5 pairs unevenly
        monkeypatch.setattr(retrieval, "_BLOCK_BYTES", pairs_per_block * 40 * 40 * 4)
    pred = all_pairs_predictions(emb, k, margin)
    assert pred.dtype == torch.int16
    assert torch.equal(pred.long(), reference)
    old = (reference == torch.arange(40)).float().mean(-1)
    old[:, torch.arange(5), torch.arange(5)] = float("nan")
    acc = all_pairs_accuracy(emb, k, margin)
    torch.testing.assert_close(acc, old, rtol=0, atol=0, equal_nan=True)
    off = ~torch.eye(5, dtype=torch.bool)
    assert 0.1 < acc[:, off].mean() < 0.9  # neither trivial nor hopeless


def test_scoring_memory_is_one_block_at_flores_200_scale():
    """204 languages × 1,012 sentences: a block holds 131 target languages of one source, 537 MB
    of similarities (the budget), not the 204 × 204 pairs' 170 GB; predictions [19, 204, 204,
    1012] would be int16 (1.6 GB), and all_pairs_accuracy keeps none of them."""
    assert retrieval._pair_blocks(204, 1012) == 131
    assert 131 * 1012 * 1012 * 4 <= retrieval._BLOCK_BYTES < 132 * 1012 * 1012 * 4
    assert retrieval._pair_blocks(5, 40) == 5  # a small run: one block per source
    assert retrieval._pair_blocks(3, 20_000) == 1  # a pair over budget is still one block
    assert retrieval._index_dtype(1012) == torch.int16
    assert retrieval._index_dtype(40_000) == torch.int32


@pytest.mark.parametrize(("k", "margin"), [(1, "ratio"), (3, "ratio"), (3, "cosine")])
def test_one_product_gives_both_directions(k, margin):
    # t → s from the s → t block equals scoring the transposed block on its own
    sim = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(k))
    forward, backward = retrieval._predict_both_ways(sim, k, margin)
    assert torch.equal(forward, retrieval._predict(sim, k, margin))
    assert torch.equal(backward, retrieval._predict(sim.transpose(-1, -2), k, margin))


def test_each_unordered_pair_is_one_product(monkeypatch):
    # 5 languages, 2 targets a block: sources 0..4 take targets 0-1 2-3 4 | 1-2 3-4 | 2-3 4 |
    # 3-4 | 4, i.e. 15 = 5·6/2 products instead of 25, and every ordered pair comes out once
    monkeypatch.setattr(retrieval, "_BLOCK_BYTES", 2 * 40 * 40 * 4)
    products, seen = [], []
    einsum = torch.einsum
    monkeypatch.setattr(
        torch, "einsum", lambda eq, a, b: products.append(len(b)) or einsum(eq, a, b)
    )
    for src, tgt, pred in retrieval.layer_predictions(_multiway(0)[0], 4):
        assert pred.shape == (len(range(5)[src]), len(range(5)[tgt]), 40)
        seen += [(s, t) for s in range(5)[src] for t in range(5)[tgt]]
    assert sorted(seen) == [(s, t) for s in range(5) for t in range(5)]
    assert products == [2, 2, 1, 2, 2, 2, 1, 2, 1]
    assert sum(products) == 15


def test_pair_accuracy_for_explicit_pairs():
    g = torch.Generator().manual_seed(6)
    emb = {"a": torch.randn(2, 10, 8, generator=g), "b": torch.randn(2, 10, 8, generator=g)}
    emb["b"] += 2 * emb["a"]
    acc = pair_accuracy(emb, [("a", "b"), ("b", "a")], k=3)
    assert acc.shape == (2, 2)
    assert acc[1, 1].item() == pytest.approx(retrieval_accuracy(emb["b"][1], emb["a"][1], k=3))


@pytest.mark.parametrize("k", [0, 3, 5])
def test_k_must_be_below_the_number_of_sentences(k):
    with pytest.raises(InputError, match=f"--k {k} must be"):
        xsim_predict(X, Y, k=k)


def test_summarize_on_known_accuracies():
    corpus = ParallelCorpus.multiway(
        {"eng_Latn": ["a"] * 5, "deu_Latn": ["b"] * 5, "fra_Latn": ["c"] * 5}
    )
    # pairs in order: en→de, en→fr, de→en, de→fr, fr→en, fr→de
    acc = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],  # layer 0
            [0.4, 0.6, 0.4, 0.6, 0.8, 0.8],  # layer 2
            [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],  # layer 4
        ]
    )
    s = summarize(acc, [0, 2, 4], corpus, groups={"latin": ["deu_Latn", "fra_Latn"]})
    assert s["per_layer"][2]["mean"] == pytest.approx(3.6 / 6)
    assert s["per_layer"][4]["min"] == 0.0 and s["per_layer"][4]["max"] == 1.0
    # the model's number: mean over layers 2 and 4 only → (0.6 + 0.5) / 2
    assert s["aggregate"] == pytest.approx(0.55) and s["aggregate_layers"] == [2, 4]
    assert s["best_layer"] == 2
    lang2 = s["per_language"][2]
    assert lang2["source"]["eng_Latn"] == pytest.approx(0.5)  # en→de 0.4, en→fr 0.6
    assert lang2["target"]["eng_Latn"] == pytest.approx(0.6)  # de→en 0.4, fr→en 0.8
    assert lang2["both"]["fra_Latn"] == pytest.approx((0.6 + 0.6 + 0.8 + 0.8) / 4)
    assert s["pair_matrix"][4] == [
        [None, 1.0, pytest.approx(0.8)],
        [pytest.approx(0.6), None, pytest.approx(0.4)],
        [pytest.approx(0.2), 0.0, None],
    ]
    # group = mean of its languages' "both": de (0.4+0.6+0.4+0.8)/4 = 0.55, fr 0.7 → 0.625
    assert s["groups"]["latin"][2] == pytest.approx(0.625)


def test_correlate_matches_hand_computed_pearson_and_spearman():
    retrieval = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9, "e": None}
    scores = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0, "z": 7.0}
    c = correlate(retrieval, scores)
    assert c["languages"] == ["a", "b", "c", "d"]
    # x − x̄ = (−0.275, −0.175, −0.075, 0.525); y − ȳ = (−1.5, 0.5, −0.5, 1.5)
    # Σxy = 0.4125 − 0.0875 + 0.0375 + 0.7875 = 1.15; Σy² = 5;
    # Σx² = 0.075625 + 0.030625 + 0.005625 + 0.275625 = 0.3875
    assert c["pearson"] == pytest.approx(1.15 / np.sqrt(0.3875 * 5))
    # ranks x (1,2,3,4), y (1,3,2,4): ρ = 1 − 6·(0+1+1+0) / (4·15) = 0.8
    assert c["spearman"] == pytest.approx(0.8)


# --------------------------------------------------------------------------- normalisation

# Three sentences in two languages, d = 3. Dimensions 0 and 1 carry the meaning (sentence i is
# the same point c_i in both languages); dimension 2 is a rogue dimension, 10× larger and
# meaningless: language b carries language a's values shifted by one sentence.
#   c_0 = (1, 0), c_1 = (0, 1), c_2 = (−1, −1);  rogue a = (10, 0, −10), b = (0, −10, 10)
ROGUE_A = torch.tensor([[1.0, 0.0, 10.0], [0.0, 1.0, 0.0], [-1.0, -1.0, -10.0]])
ROGUE_B = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -10.0], [-1.0, -1.0, 10.0]])


def _accuracy(emb: dict[str, torch.Tensor], k: int = 1) -> torch.Tensor:
    """a→b and b→a accuracy of every layer: [L, 2]."""
    return pair_accuracy(emb, [("a", "b"), ("b", "a")], k=k)


def test_a_planted_rogue_dimension_fails_raw_and_centred_xsim_and_standardising_fixes_it():
    emb = {"a": ROGUE_A[None], "b": ROGUE_B[None]}  # [L=1, n=3, d=3]
    # k = 1: the margin has one candidate, the cosine nearest neighbour.
    # Raw: ‖a_0‖ = √101, ‖a_1‖ = 1, ‖a_2‖ = √102; ‖b_0‖ = 1, ‖b_1‖ = √101, ‖b_2‖ = √102.
    #   a_0: b_0 1/√101 = 0.10, b_1 −100/101, b_2 (−1 + 100)/√(101·102) = 0.975 → b_2 (wrong)
    #   a_1: b_0 0, b_1 1/√101 = 0.10, b_2 −1/√102 → b_1 (right: a_1 has no rogue part)
    #   a_2: b_0 −1/√102, b_1 99/√(102·101) = 0.975, b_2 (2 − 100)/102 → b_1 (wrong)
    # b→a: b_0 (no rogue part) finds a_0; b_1 finds a_2 (0.975), b_2 finds a_0: 1 of 3 each way.
    assert normalize_states(emb, "none") is emb
    assert _accuracy(emb).tolist() == [[pytest.approx(1 / 3), pytest.approx(1 / 3)]]
    # Centred: every dimension's mean over the 6 sentences is already 0, so nothing changes:
    # the rogue dimension's variance, not its mean, decides the cosines.
    centred = normalize_states(emb, "center")
    assert torch.equal(centred["a"], emb["a"]) and torch.equal(centred["b"], emb["b"])
    # Standardised: σ² over the 6 sentences is 4/6 in dims 0 and 1 and 400/6 in dim 2, so
    # every dimension is divided by its own σ and the states become √1.5 × (c_i, rogue / 10):
    #   a: (1, 0, 1), (0, 1, 0), (−1, −1, −1);  b: (1, 0, 0), (0, 1, −1), (−1, −1, 1)
    s = normalize_states(emb, "standardize")
    scale = 1.5**0.5
    assert s["a"][0].flatten().tolist() == pytest.approx(
        (scale * torch.tensor([[1.0, 0, 1], [0, 1, 0], [-1, -1, -1]])).flatten().tolist()
    )
    assert s["b"][0, :, 2].tolist() == pytest.approx([0.0, -scale, scale])
    # cosines a→b: a_0: b_0 1/√2, b_1 −1/2, b_2 0; a_1: b_0 0, b_1 1/√2, b_2 −1/√3;
    # a_2: b_0 −1/√3, b_1 0, b_2 1/3: every nearest neighbour is the translation, both ways
    assert _accuracy(s).tolist() == [[1.0, 1.0]]
    # k = 2: the two largest cosines of every row and column are (1/√2, 0) or (1/3, 0), so
    # avg_x = avg_y = 0.354, 0.354, 0.167 for sentences 0, 1, 2; each translation scores
    # (1/√2) / 0.354 = (1/3) / 0.167 = 2 against 0 for the other candidate
    assert _accuracy(s, k=2).tolist() == [[1.0, 1.0]]


def _planted(seed: int) -> dict[str, torch.Tensor]:
    """Three languages, [L=2, n=20, d=6] in float64: shared meaning plus noise, dimension 4 a
    massive one (mean 300, std 40) that knows nothing of the sentences, dimension 5 constant."""
    g = torch.Generator().manual_seed(seed)
    meaning = torch.randn(2, 20, 6, generator=g, dtype=torch.float64)
    emb = {}
    for side in ("a", "b", "c"):
        e = meaning + 0.7 * torch.randn(2, 20, 6, generator=g, dtype=torch.float64)
        e[..., 4] = 300 + 40 * torch.randn(2, 20, generator=g, dtype=torch.float64)
        e[..., 5] = 2.5
        emb[side] = e
    return emb


def test_standardised_states_equal_states_standardised_by_hand():
    emb = _planted(0)
    every = np.concatenate([e.numpy() for e in emb.values()], axis=1)  # [L, 60, d]
    mean = every.mean(axis=1, keepdims=True)
    std = every.std(axis=1, keepdims=True)  # population std, divisor 60
    std[std == 0] = 1  # the constant dimension: 0 everywhere, not NaN
    centred = normalize_states(emb, "center")
    standardized = normalize_states(emb, "standardize")
    for side, e in emb.items():
        np.testing.assert_allclose(centred[side].numpy(), e.numpy() - mean, atol=1e-12)
        by_hand = (e.numpy() - mean) / std
        np.testing.assert_allclose(standardized[side].numpy(), by_hand, atol=1e-12)
        assert standardized[side].dtype == torch.float64
        assert (standardized[side][..., 5] == 0).all()
    by_hand = {side: torch.from_numpy((e.numpy() - mean) / std) for side, e in emb.items()}
    pairs = [("a", "b"), ("c", "a"), ("b", "c")]
    assert torch.equal(pair_accuracy(standardized, pairs), pair_accuracy(by_hand, pairs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_constant_dimension_becomes_zero_not_nan_nor_rounding_noise(dtype):
    # twelve 0.1s: in float64 their computed mean is 0.1 − 1.4e-17, so h − μ and σ would both
    # be 1.4e-17, and dividing would turn a dimension that says nothing into ±1
    emb = {
        "a": torch.full((1, 7, 2), 0.1, dtype=dtype),
        "b": torch.full((1, 5, 2), 0.1, dtype=dtype),
    }
    emb["a"][..., 0] = torch.arange(7.0)
    emb["b"][..., 0] = torch.arange(5.0)
    out = normalize_states(emb, "standardize")
    assert out["a"].dtype == dtype
    assert (out["a"][..., 1] == 0).all() and (out["b"][..., 1] == 0).all()
    # dimension 0 holds 0..6 and 0..4: μ = 31/12, σ² = 121/12 − μ²
    mu, sigma = 31 / 12, (121 / 12 - (31 / 12) ** 2) ** 0.5
    assert out["b"][0, :, 0].tolist() == pytest.approx([(x - mu) / sigma for x in range(5)])


@pytest.mark.parametrize("mode", ["center", "standardize"])
def test_normalised_xsim_is_invariant_to_a_per_dimension_affine_change(mode):
    emb = _planted(1)
    g = torch.Generator().manual_seed(2)
    b = 100 * torch.randn(6, generator=g, dtype=torch.float64)  # any shift per dimension
    a = torch.rand(6, generator=g, dtype=torch.float64) * 50 + 0.01  # any positive scale
    if mode == "center":
        a = torch.ones(6, dtype=torch.float64)  # centring is invariant to shifts only
    moved = {side: a * e + b for side, e in emb.items()}
    pairs = [("a", "b"), ("b", "a"), ("a", "c")]
    before = normalize_states(emb, mode)
    after = normalize_states(moved, mode)
    if mode == "standardize":
        for side in emb:
            torch.testing.assert_close(after[side], before[side], rtol=0, atol=1e-9)
    assert torch.equal(pair_accuracy(after, pairs), pair_accuracy(before, pairs))
    # raw xsim is not invariant: the same change moves it
    assert not torch.equal(pair_accuracy(moved, pairs), pair_accuracy(emb, pairs))


def test_unknown_normalize_mode_is_refused():
    with pytest.raises(InputError, match="normalize must be one of none, center, standardize"):
        normalize_states({"a": X[None]}, "whiten")


# --------------------------------------------------------------------------- bf16 candidates


def _anisotropic(m: int, n: int, d: int, seed: int) -> torch.Tensor:
    """[m, n, d] states as a small LM's mid layer has them: a shared direction and two rogue
    dimensions far larger than the rest (cosines crowd near 1), translations close."""
    g = torch.Generator().manual_seed(seed)
    meaning = torch.randn(n, d, generator=g)
    states = meaning + 0.6 * torch.randn(m, n, d, generator=g) + 1.0
    states[..., :2] *= 5.0
    return states


def test_bf16_bound_holds_for_every_product():
    """The derivation of bf16_bound, checked: the un-doubled bound holds for every entry of
    bf16 vs float32 products of anisotropic unit vectors (d = 640, Gemma 3's width)."""
    e = F.normalize(_anisotropic(2, 300, 640, 0), dim=-1)
    s32 = e[0] @ e[1].T
    s16 = (e[0].bfloat16() @ e[1].bfloat16().T).float()
    worst = (s16 - s32).abs().max().item()
    assert 0 < worst <= retrieval.bf16_bound(640) / 2


def _near_ties(n: int, d: int, seed: int) -> torch.Tensor:
    """[2, n, d]: source 2i has its translation (target 2i, cosine 0.9998) and a rival (target
    2i + 1, cosine 0.9996); source 2i + 1 is random. The rival's gap, 2e-4, is far below bf16's
    resolution near 1 (2⁻⁸ ≈ 0.004), so a plain bf16 scorer picks between the two by rounding,
    and far above float32's (~1e-7), so the float32 scorer's pick is not itself a rounding tie."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    y = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    for i in range(0, n - 1, 2):
        v, w = torch.randn(2, d, generator=g, dtype=torch.float64)
        u = x[i].double()
        v = F.normalize(v - (v @ u) * u, dim=0)
        w = w - (w @ u) * u
        w = F.normalize(w - (w @ v) * v, dim=0)
        for j, c in ((i, 0.9998), (i + 1, 0.9996)):
            y[j] = (c * u + (1 - c * c) ** 0.5 * (v if j == i else w)).float()
    return torch.stack([x, y])


@pytest.mark.parametrize("margin", ["ratio", "cosine"])
@pytest.mark.parametrize("states", ["anisotropic", "near-ties"])
def test_bf16_candidates_give_the_float32_predictions(margin, states):
    if states == "anisotropic":
        emb = _anisotropic(4, 120, 64, 1)
    else:
        emb = _near_ties(120, 64, 2)
    e = F.normalize(emb.float(), dim=-1)
    m, n, _ = e.shape

    def predictions(bf16: bool) -> torch.Tensor:
        pred = torch.full((m, m, n), -1)
        for src, tgt, block in retrieval.layer_predictions(e, 4, margin, bf16):
            pred[src, tgt] = block
        return pred

    assert torch.equal(predictions(bf16=True), predictions(bf16=False))
    if states == "near-ties":  # the test has teeth: scoring plainly in bf16 picks otherwise
        plain = retrieval._predict((e[0].bfloat16() @ e[1].bfloat16().T).float(), 4, margin)
        assert not torch.equal(plain, retrieval._predict(e[0] @ e[1].T, 4, margin))


def test_bf16_rescoring_computes_only_candidates_and_falls_back_when_dense(monkeypatch):
    e = F.normalize(_anisotropic(2, 200, 64, 3), dim=-1)
    block = retrieval._rescored_block(e[0], e[1:], 4, "ratio")
    share = torch.isfinite(block).float().mean().item()
    assert 0 < share < retrieval.DENSE  # a few candidates a row and column, not the block
    exact = torch.einsum("nd,tmd->tnm", e[0], e[1:])
    finite = torch.isfinite(block)
    assert torch.allclose(block[finite], exact[finite], rtol=0, atol=1e-6)
    monkeypatch.setattr(retrieval, "DENSE", 0.0)  # every block "dense": the float32 product
    assert torch.equal(retrieval._rescored_block(e[0], e[1:], 4, "ratio"), exact)
    torch.testing.assert_close(
        all_pairs_accuracy(e[None], 4, "ratio", bf16=True),
        all_pairs_accuracy(e[None], 4),
        rtol=0,
        atol=0,
        equal_nan=True,
    )
