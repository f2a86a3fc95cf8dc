"""Contrastive alignment loss on pooled mid-layer states (docs/design.md §2). Tensor math only.

InfoNCE with in-batch negatives, as in the paper (Liu & Niehues, "Middle-layer representation
alignment for cross-lingual transfer in fine-tuned LLMs", 2025) and sentence-transformers'
MultipleNegativesRankingLoss::

    s_ij = cos(x̃_i, ỹ_j) / τ
    loss = mean_i  −log( exp(s_ii) / Σ_j exp(s_ij) )          (x → y)

``symmetric`` averages it with the y → x direction. With several layers the per-layer losses are
averaged. ``gather`` all-gathers y across ranks *with gradient* so that every rank's anchors see
the global batch as negatives, which is what a single process holding the whole batch computes.

x̃, ỹ are the pooled states after an optional per-dimension normalisation (``normalize``)::

    none          x̃ = x                     (the paper)
    center        x̃ = x − μ
    standardize   x̃ = (x − μ) / σ           (σ floored, see :func:`floored_std`)

Why: some models' residual streams carry a few dimensions of huge magnitude ("massive
activations"; Gemma 3 270M at layer 9: 99.3 % of E‖h‖² in 3 of 640 dimensions), so every pooled
state points nearly the same way (cosine 0.99 between unrelated sentences) and cos / τ barely
varies: the loss sits at ln B. Centering removes the shared direction; standardising also stops
a few dimensions from deciding the cosine. μ, σ are either constants (``stats``: the base
model's, computed once before training) or the statistics of the current 2B rows x ∪ y, taken
over every rank's rows when ``gather`` is set, so that W processes still equal one. Gradients
flow through batch statistics, as through batch normalisation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

NORMALIZE = ("none", "center", "standardize")
# σ_d is at least STD_FLOOR · RMS_d(σ_d) of its layer: a dimension that hardly varies (rounding
# noise around a constant) would otherwise weigh as much as a real one, and a constant one
# would divide 0 by 0. 1e-3 only touches dimensions a thousand times flatter than typical.
STD_FLOOR = 1e-3

Stats = tuple[torch.Tensor, torch.Tensor]  # (μ, σ), each [d] or [n_layers, d]


class _GatherRows(torch.autograd.Function):
    """All-gather along ``dim`` with plain synchronous c10d calls. Backward: every rank's loss
    saw every slice, so the gradient of this rank's slice is the sum over ranks of theirs (an
    all-reduce, then this rank's chunk) — what a reduce-scatter computes, on any backend."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        mine = grad.chunk(dist.get_world_size(), dim=ctx.dim)[dist.get_rank()]
        return mine.contiguous(), None


def _gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``t`` [..., B, d] from every rank along the batch dim; gradients flow back
    to the rank that produced each slice. Returns the gathered tensor and this rank's offset.
    (Not torch's functional ``all_gather_tensor_autograd``: deprecated, and a gloo run through
    it once died of SIGSEGV in CI.)"""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, 0
    gathered = _GatherRows.apply(t.contiguous(), t.dim() - 2)
    return gathered, dist.get_rank() * t.shape[-2]


def floored_std(var: torch.Tensor) -> torch.Tensor:
    """σ = √max(var_d, STD_FLOOR² · mean_d var_d) per dimension of the last axis. The floor is
    applied to the variance, before the square root, so that its gradient stays finite."""
    floor = STD_FLOOR**2 * var.mean(dim=-1, keepdim=True)
    return torch.maximum(var, floor).clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def feature_stats(rows: torch.Tensor) -> Stats:
    """Per-dimension mean and (population, floored) standard deviation over the rows of
    ``rows`` [..., N, d]: two tensors [..., d]."""
    mean = rows.mean(dim=-2)
    var = (rows - mean.unsqueeze(-2)).pow(2).mean(dim=-2)
    return mean, floored_std(var)


def standardize(h: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None) -> torch.Tensor:
    """(h − μ) / σ, or h − μ when ``std`` is None; h [..., N, d], μ and σ [..., d]."""
    h = h - mean.to(h.dtype).unsqueeze(-2)
    return h if std is None else h / std.to(h.dtype).unsqueeze(-2)


def _unit_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: str,
    stats: Stats | None,
    gather: bool,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Normalised unit rows [n_layers, B, d] of x and y, of y_all (y of every rank when
    gathering) and x_all (gathered too if the y → x direction or the batch statistics need
    it), and this rank's offset in them."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, not {normalize!r}")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    y = y.to(torch.promote_types(y.dtype, torch.float32))
    if x.dim() == 2:
        x, y = x[None], y[None]  # [n_layers=1, B, d]
    if stats is not None and any(
        t.shape not in ((x.shape[-1],), (x.shape[0], x.shape[-1])) for t in stats
    ):
        shapes = [tuple(t.shape) for t in stats]
        raise ValueError(f"stats must be [d] or [n_layers, d] for x {tuple(x.shape)}: {shapes}")
    y_all, offset = _gather_with_grad(y) if gather else (y, 0)
    batch_stats = normalize != "none" and stats is None
    x_all, _ = _gather_with_grad(x) if gather and (symmetric or batch_stats) else (x, 0)
    if normalize != "none":
        if batch_stats:  # the statistics of every row x ∪ y, of every rank when gathering
            stats = feature_stats(torch.cat([x_all, y_all], dim=-2))
        mean, std = stats
        std = None if normalize == "center" else std
        x, y, x_all, y_all = (standardize(t, mean, std) for t in (x, y, x_all, y_all))
    x, y, x_all, y_all = (F.normalize(t, dim=-1) for t in (x, y, x_all, y_all))
    return x, y, x_all, y_all, offset


def info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.1,
    symmetric: bool = False,
    gather: bool = False,
    normalize: str = "none",
    stats: Stats | None = None,
) -> torch.Tensor:
    """Alignment loss for parallel pairs (x_i, y_i).

    x, y: [B, d] or [n_layers, B, d] pooled states (row i of x translates row i of y).
    ``normalize``: none, center or standardize (module docstring); ``stats``: constant (μ, σ)
    of shape [d] or [n_layers, d], or None for the statistics of the batch x ∪ y.
    Returns a scalar: the mean over layers (and directions, if symmetric).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    x, y, x_all, y_all, offset = _unit_rows(x, y, normalize, stats, gather, symmetric)
    batch = x.shape[-2]
    labels = torch.arange(offset, offset + batch, device=x.device).repeat(x.shape[0])
    logits = x @ y_all.transpose(-1, -2) / temperature  # [n_layers, B, B_global]
    loss = F.cross_entropy(logits.flatten(0, 1), labels)
    if symmetric:
        logits_yx = y @ x_all.transpose(-1, -2) / temperature
        loss = (loss + F.cross_entropy(logits_yx.flatten(0, 1), labels)) / 2
    return loss


def top1_accuracy(
    x: torch.Tensor, y: torch.Tensor, normalize: str = "none", stats: Stats | None = None
) -> torch.Tensor:
    """In-batch retrieval x → y: the share of rows i (over layers too) whose own translation
    is strictly the most similar, cos(x̃_i, ỹ_i) > cos(x̃_i, ỹ_j) for every j ≠ i, after the
    loss's normalisation. Free of τ, unlike InfoNCE values, so runs at different τ compare;
    a tie counts as a miss, so states that collapsed to one direction score 0, not 1/B."""
    x, y, _, _, _ = _unit_rows(x, y, normalize, stats, gather=False)
    sim = x @ y.transpose(-1, -2)  # [n_layers, B, B]
    own = sim.diagonal(dim1=-2, dim2=-1)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    best_other = sim.masked_fill(eye, float("-inf")).amax(dim=-1)
    return (own > best_other).to(sim.dtype).mean()
