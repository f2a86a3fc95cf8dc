"""Cross-lingual retrieval with LASER's xsim margin, for every pair at once (docs/design.md §1).

For L2-normalised sources x and targets y, as in LASER's ``source/xsim.py``:
candidates of x = its k nearest targets by cosine; avg_x = mean cosine of those k,
avg_y = mean cosine of y's k nearest sources;

    score(x, y) = cos(x, y) / ((avg_x + avg_y) / 2)          (ratio margin)

the prediction is the best-scoring candidate, and accuracy is the share of sources whose
prediction is their own translation. ``cosine`` is the plain nearest neighbour. The margin
penalises "hub" targets that are close to everything, which plain cosine retrieval loves.
Everything is batched matrix work: one [targets, N, N] similarity block of a source language at
a time, streamed over layers and blocks of language pairs so that memory stays bounded at any
scale; s → t and t → s come from the same product, so each unordered pair is computed once.

Before scoring, :func:`normalize_states` may centre or standardise the pooled states per
dimension (``--normalize``): in small LMs a few "rogue" dimensions carry nearly all of ‖h‖²
(Timkey & van Schijndel 2021; Sun et al. 2024, massive activations) and so decide every cosine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from midalign.data.corpus import ParallelCorpus
from midalign.errors import InputError

MARGINS = ("ratio", "cosine")
NORMALIZED_STATES = {"none": "raw", "center": "centred", "standardize": "standardised"}
"""``--normalize`` modes and how plots and reports name the states each one scores."""
NORMALIZE_MODES = tuple(NORMALIZED_STATES)
_BLOCK_BYTES = 512 * 2**20  # similarity block budget when scoring many language pairs


def check_options(n_targets: int, k: int, margin: str) -> None:
    """Fail early, before any model is loaded, on a margin or k that cannot work."""
    if margin not in MARGINS:
        raise InputError(f"--margin must be one of {', '.join(MARGINS)}, not {margin!r}")
    if margin == "ratio" and not 1 <= k < n_targets:
        raise InputError(
            f"--k {k} must be between 1 and the number of sentences minus one ({n_targets - 1})"
        )


def normalize_states(
    emb_by_side: dict[str, torch.Tensor], mode: str = "none"
) -> dict[str, torch.Tensor]:
    """Per-layer, per-dimension normalisation of pooled states: side -> [L, n, d], same shapes.

    The statistics are taken per layer over every sentence of every side together, so no
    language identity is used. ``none`` returns the input as is (what LASER and the paper
    score); ``center`` subtracts the mean μ; ``standardize`` computes (h − μ) / σ, with σ the
    population std (divisor n). Cosines are then invariant to h → a⊙h + b for any b and any
    a > 0 per dimension (``center``: to h → h + b). μ and σ are computed in float64.

    A dimension constant over all sentences (σ = 0) carries no information: ``standardize`` sets
    it to 0, so it drops out of every cosine, rather than 0 / 0 = NaN. Constant means min = max,
    tested exactly: a computed μ of n equal numbers can be off by rounding, leaving a σ of
    rounding noise that dividing would blow up to ±1.
    """
    if mode not in NORMALIZE_MODES:
        raise InputError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, not {mode!r}")
    if mode == "none":
        return emb_by_side
    count = sum(e.shape[1] for e in emb_by_side.values())
    mean = sum(e.double().sum(dim=1) for e in emb_by_side.values()) / count  # [L, d]
    mean = mean.unsqueeze(1)  # [L, 1, d]
    if mode == "center":
        return {side: (e.double() - mean).to(e.dtype) for side, e in emb_by_side.items()}
    var = sum(((e.double() - mean) ** 2).sum(dim=1) for e in emb_by_side.values()) / count
    low = torch.stack([e.amin(dim=1) for e in emb_by_side.values()]).amin(dim=0)  # [L, d]
    high = torch.stack([e.amax(dim=1) for e in emb_by_side.values()]).amax(dim=0)
    constant = (low == high).unsqueeze(1)  # [L, 1, d]
    std = torch.where(constant, 1.0, var.sqrt().unsqueeze(1))
    return {
        side: torch.where(constant, 0.0, (e.double() - mean) / std).to(e.dtype)
        for side, e in emb_by_side.items()
    }


def _best_candidate(
    top_sim: torch.Tensor, top_idx: torch.Tensor, avg_own: torch.Tensor, avg_other: torch.Tensor
) -> torch.Tensor:
    """The candidate with the best ratio margin: cosines and indices of each query's k nearest
    [..., n, k], the queries' mean k-NN cosine [..., n], the candidates' [..., m] -> [..., n]."""
    avg_cand = avg_other.unsqueeze(-2).expand(*top_idx.shape[:-1], -1).gather(-1, top_idx)
    scores = top_sim / ((avg_own.unsqueeze(-1) + avg_cand) / 2)  # [..., n, k]
    return top_idx.gather(-1, scores.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _predict(sim: torch.Tensor, k: int, margin: str) -> torch.Tensor:
    """Predicted target index for every source: sim [..., n, m] -> [..., n]."""
    if margin == "cosine":
        return sim.argmax(dim=-1)
    top_sim, top_idx = sim.topk(k, dim=-1)  # [..., n, k], descending like faiss
    avg_y = sim.topk(k, dim=-2).values.mean(dim=-2)  # [..., m]
    return _best_candidate(top_sim, top_idx, top_sim.mean(dim=-1), avg_y)


def _predict_both_ways(sim: torch.Tensor, k: int, margin: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions from one similarity block, sim [..., n, m] -> (target of every source
    [..., n], source of every target [..., m]), the second equal to ``_predict`` of the
    transposed block: the margin of (x, y) uses x's k nearest targets and y's k nearest sources
    whichever side asks, so both directions need the same two top-k's."""
    if margin == "cosine":
        return sim.argmax(dim=-1), sim.argmax(dim=-2)
    top_x, idx_x = sim.topk(k, dim=-1)  # [..., n, k]: each source's nearest targets
    top_y, idx_y = sim.topk(k, dim=-2)  # [..., k, m]: each target's nearest sources
    avg_x, avg_y = top_x.mean(dim=-1), top_y.mean(dim=-2)
    forward = _best_candidate(top_x, idx_x, avg_x, avg_y)
    backward = _best_candidate(top_y.transpose(-1, -2), idx_y.transpose(-1, -2), avg_y, avg_x)
    return forward, backward


def xsim_predict(
    x: torch.Tensor, y: torch.Tensor, k: int = 4, margin: str = "ratio"
) -> torch.Tensor:
    """Index of the retrieved target for every source: x [n, d], y [m, d] -> [n] long."""
    check_options(y.shape[0], k, margin)
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return _predict(x @ y.T, k, margin)


def retrieval_accuracy(
    x: torch.Tensor, y: torch.Tensor, k: int = 4, margin: str = "ratio"
) -> float:
    """Share of sources x_i whose retrieved target is y_i."""
    pred = xsim_predict(x, y, k, margin)
    return (pred == torch.arange(len(pred))).float().mean().item()


def _index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype that holds a sentence index below ``n``."""
    return torch.int16 if n <= 2**15 else torch.int32


def _pair_blocks(m: int, n: int) -> int:
    """Target languages per block: as many [N, N] float32 similarity matrices as fit in the
    budget (at least one, at most the ``m`` languages)."""
    return max(1, min(m, _BLOCK_BYTES // (n * n * 4)))


BF16_UNIT = 2.0**-9  # bfloat16's unit roundoff (round to nearest, 8 significant bits)
FP32_UNIT = 2.0**-24
RESCORE_CHUNK = 4096  # candidate entries rescored at a time (1.8x faster than 65,536 here)
DENSE = 0.25  # a block with more candidates than this share of its entries is scored in fp32


def bf16_bound(d: int) -> float:
    """An upper bound on |s₁₆ − s₃₂| for two unit vectors x, y in d dimensions, s₃₂ their
    cosine as a float32 product computes it and s₁₆ as a bf16 product (inputs rounded to bf16,
    products accumulated in float32, the result rounded to bf16) computes it.

    With u = 2⁻⁹ (bf16) and γ = d·2⁻²⁴ (a float32 dot product of length d, Higham's γ_d
    to first order): rounding the inputs moves the cosine by at most
    |x̃·ỹ − x·y| ≤ ‖x̃ − x‖‖ỹ‖ + ‖x‖‖ỹ − y‖ ≤ u(1 + u) + u; accumulating x̃·ỹ in float32 adds at
    most γ(1 + u)², and rounding the result to bf16 u·|x̃·ỹ| ≤ u(1 + u)²; the float32 product
    itself is within γ of the exact cosine. (The vectors are normalised in float32, so their
    norms are 1 within d·2⁻²⁴, inside γ.) Doubled, so that no kernel's summation order or an
    FMA's missing rounding can slip past it."""
    u, gamma = BF16_UNIT, d * FP32_UNIT
    return 2 * (u * (1 + u) + u + (gamma + u) * (1 + u) ** 2 + gamma)


def _rescored_block(x: torch.Tensor, ys: torch.Tensor, k: int, margin: str) -> torch.Tensor:
    """The similarities [b, N, N] of sources x [N, d] and targets ys [b, N, d] (unit vectors)
    that can decide a prediction, in float32; -inf where they cannot.

    All similarities are computed in bf16 first, s₁₆, each within δ = :func:`bf16_bound` of its
    float32 value. A row's float32 top-k are then among the entries with s₁₆ ≥ kth₁₆ − 2δ, kth₁₆
    the row's k-th largest s₁₆ (an entry of the float32 top-k has s₃₂ ≥ kth₃₂ ≥ kth₁₆ − δ, so
    s₁₆ ≥ kth₁₆ − 2δ), and likewise a column's. Only those entries are computed in float32, so
    the top-k values, the margins' averages and the best candidates are the float32 scorer's
    (k = 1 for the cosine margin: each row's and column's best). A block where more than
    :data:`DENSE` of the entries are candidates (nearly identical states) is computed whole in
    float32. The candidates are rescored one dot product each, not inside one matrix product,
    so where two of them are within float32's own rounding of each other (a few 1e-7), the pick
    may differ from the float32 product's, as it may between two CPUs or thread counts.

    Measured on an AMD EPYC with AVX512-BF16 (2 threads, 10 targets × 1,012 sentences, d 640,
    standardised states: 2 % of the entries are candidates): 1.34 s a block against 0.27 s for
    the float32 product, of which the bf16 product is 0.16 s; gathering the candidates' vectors
    and a second top-k cost more than bf16 saves, so the probe scores in float32."""
    d = x.shape[-1]
    sim16 = torch.einsum("nd,tmd->tnm", x.bfloat16(), ys.bfloat16()).float()
    need_k = 1 if margin == "cosine" else k
    slack = 2 * bf16_bound(d)
    row_kth = sim16.topk(need_k, dim=-1).values[..., -1:]  # [b, N, 1]
    col_kth = sim16.topk(need_k, dim=-2).values[..., -1:, :]  # [b, 1, N]
    need = (sim16 >= row_kth - slack) | (sim16 >= col_kth - slack)
    if need.float().mean().item() > DENSE:
        return torch.einsum("nd,tmd->tnm", x, ys)
    exact = torch.full_like(sim16, float("-inf"))
    t, n, m = need.nonzero(as_tuple=True)
    for start in range(0, len(t), RESCORE_CHUNK):
        part = slice(start, start + RESCORE_CHUNK)
        exact[t[part], n[part], m[part]] = (x[n[part]] * ys[t[part], m[part]]).sum(-1)
    return exact


def layer_predictions(
    e: torch.Tensor, k: int = 4, margin: str = "ratio", bf16: bool = False
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Multiway retrieval of one layer, a block of language pairs at a time: e [M, N, d] ->
    (sources, targets, predicted target index [len(sources), len(targets), N] long).

    Each block is one source language against a run of targets, one [b, N, N] similarity
    tensor within a fixed memory budget; a pair's N × N matrix is never split, so its margins
    (avg_y over all N sources) are exact. s → t and t → s come from one product
    (:func:`_predict_both_ways`), so only the targets t ≥ s are computed, and each block yields
    both directions: M(M + 1)/2 products a layer instead of M². The diagonal pairs (a language
    against itself) are scored too. ``bf16``: the products in bf16, only the candidates that
    can decide a prediction recomputed in float32 (:func:`_rescored_block`): the float32
    predictions (up to float32's own ties), for machines where a bf16 product is many times
    faster than a float32 one; on the EPYC measured here it is slower.
    """
    m, n, _ = e.shape
    check_options(n, k, margin)
    e = F.normalize(e.float(), dim=-1)
    # the bf16 route holds a block three times over (bf16 products as float32, the candidate
    # mask, the rescored block)
    per_block = max(1, _pair_blocks(m, n) // (3 if bf16 else 1))
    for s in range(m):
        src = slice(s, s + 1)
        for t0 in range(s, m, per_block):
            tgt = slice(t0, min(t0 + per_block, m))
            if bf16:
                sim = _rescored_block(e[s], e[tgt], k, margin)
            else:
                sim = torch.einsum("nd,tmd->tnm", e[s], e[tgt])  # [b, N, N]
            forward, backward = _predict_both_ways(sim, k, margin)  # [b, N] each
            yield src, tgt, forward.unsqueeze(0)
            skip = 1 if t0 == s else 0  # (s, s) is scored once, by the forward direction
            if tgt.stop - t0 > skip:
                yield slice(t0 + skip, tgt.stop), src, backward[skip:].unsqueeze(1)


def all_pairs_predictions(emb: torch.Tensor, k: int = 4, margin: str = "ratio") -> torch.Tensor:
    """Multiway retrieval: emb [L, M, N, d] -> predicted target index [L, M, M, N] for every
    layer, source language, target language and source sentence, in the smallest integer
    dtype that holds N (int16 up to 32,768 sentences). Scores need only
    :func:`all_pairs_accuracy`, which never holds all predictions."""
    n_layers, m, n, _ = emb.shape
    check_options(n, k, margin)
    pred = torch.empty(n_layers, m, m, n, dtype=_index_dtype(n))
    for layer in range(n_layers):
        for src, tgt, block in layer_predictions(emb[layer], k, margin):
            pred[layer, src, tgt] = block
    return pred


def all_pairs_accuracy(
    emb: torch.Tensor, k: int = 4, margin: str = "ratio", bf16: bool = False
) -> torch.Tensor:
    """Multiway retrieval accuracy: emb [L, M, N, d] -> [L, M, M] (source, target), NaN diagonal.

    Streams over layers and blocks of language pairs: beyond the input, memory is one layer's
    normalised states and one similarity block, whatever L and M (FLoRes-200's 204 languages ×
    1,012 sentences included); predictions are reduced to accuracies block by block.
    """
    n_layers, m, n, _ = emb.shape
    check_options(n, k, margin)
    acc = torch.empty(n_layers, m, m)
    for layer in range(n_layers):
        acc[layer] = layer_accuracy(emb[layer], k, margin, bf16)
    return acc


def layer_accuracy(
    e: torch.Tensor, k: int = 4, margin: str = "ratio", bf16: bool = False
) -> torch.Tensor:
    """:func:`all_pairs_accuracy` of one layer: e [M, N, d] -> [M, M], NaN diagonal."""
    m, n, _ = e.shape
    acc = torch.empty(m, m)
    for src, tgt, pred in layer_predictions(e, k, margin, bf16):
        acc[src, tgt] = (pred == torch.arange(n)).float().mean(-1)
    acc[torch.arange(m), torch.arange(m)] = float("nan")
    return acc


def pair_accuracy(
    emb: dict[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    k: int = 4,
    margin: str = "ratio",
) -> torch.Tensor:
    """Retrieval for explicit pairs of sides (e.g. Tatoeba's x↔English): -> [L, P].

    emb maps a side to [L, n, d]; the two sides of a pair have the same n. Batched over layers.
    """
    columns = []
    for src, tgt in pairs:
        x, y = F.normalize(emb[src].float(), dim=-1), F.normalize(emb[tgt].float(), dim=-1)
        check_options(y.shape[1], k, margin)
        pred = _predict(x @ y.transpose(-1, -2), k, margin)  # [L, n]
        columns.append((pred == torch.arange(x.shape[1])).float().mean(-1))
    return torch.stack(columns, dim=1)


# --------------------------------------------------------------------------- aggregates


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(
    acc: torch.Tensor,
    layers: Sequence[int],
    corpus: ParallelCorpus,
    groups: dict[str, list[str]] | None = None,
) -> dict:
    """JSON-ready aggregates of pair accuracies acc [L, P] (P = ``corpus.pairs``), keyed by
    layer as an int (JSON writes it as a string: results.json's ``"9"``).

    - ``per_layer[l]``: mean, std, min, max over pairs;
    - ``aggregate``: the model's single number, the mean over even layers > 0 (2, 4, …, L);
    - ``best_layer``: the layer with the highest mean;
    - ``per_language[l]``: {"source"|"target"|"both": {lang: mean over the pairs it is in}};
    - ``pair_matrix[l]``: [source][target] accuracies in ``languages`` order, null if unscored;
    - ``groups[name][l]``: mean of the group's languages' "both" accuracies.
    """
    a = acc.numpy()
    langs = corpus.languages
    index = {lang: i for i, lang in enumerate(langs)}
    src = np.array([corpus.lang[s] for s, _ in corpus.pairs])
    tgt = np.array([corpus.lang[t] for _, t in corpus.pairs])
    per_layer, per_language, pair_matrix = {}, {}, {}
    for li, layer in enumerate(layers):
        row = a[li]
        per_layer[layer] = {
            "mean": float(row.mean()),
            "std": float(row.std()),
            "min": float(row.min()),
            "max": float(row.max()),
        }
        per_language[layer] = {
            "source": {g: _mean(row[src == g]) for g in langs},
            "target": {g: _mean(row[tgt == g]) for g in langs},
            "both": {g: _mean(row[(src == g) | (tgt == g)]) for g in langs},
        }
        matrix: list[list[float | None]] = [[None] * len(langs) for _ in langs]
        for v, s, t in zip(row, src, tgt, strict=True):
            matrix[index[s]][index[t]] = float(v)
        pair_matrix[layer] = matrix
    even = [layer for layer in layers if layer > 0 and layer % 2 == 0]
    summary = {
        "languages": langs,
        "pairs": len(corpus.pairs),
        "per_layer": per_layer,
        "aggregate": _mean([per_layer[layer]["mean"] for layer in even]),
        "aggregate_layers": even,
        "best_layer": max(layers, key=lambda layer: per_layer[layer]["mean"]),
        "per_language": per_language,
        "pair_matrix": pair_matrix,
    }
    if groups:
        unknown = sorted({g for members in groups.values() for g in members} - set(langs))
        if unknown:
            raise InputError(f"--group: {', '.join(unknown)} not among the probed languages")
        summary["groups"] = {
            name: {
                layer: _mean([per_language[layer]["both"][g] for g in members]) for layer in layers
            }
            for name, members in groups.items()
        }
    return summary


def correlate(per_lang_retrieval: dict[str, float | None], scores: dict[str, float]) -> dict:
    """Pearson r and Spearman ρ between per-language retrieval and downstream scores
    (the paper's Figure 1(b)), over the languages both have."""
    from scipy.stats import pearsonr, spearmanr

    common = [g for g in per_lang_retrieval if g in scores and per_lang_retrieval[g] is not None]
    result: dict = {"n": len(common), "languages": common, "pearson": None, "spearman": None}
    if len(common) >= 3:
        x = [per_lang_retrieval[g] for g in common]
        y = [scores[g] for g in common]
        if np.std(x) > 0 and np.std(y) > 0:
            result["pearson"] = float(pearsonr(x, y).statistic)
            result["spearman"] = float(spearmanr(x, y).statistic)
    return result
