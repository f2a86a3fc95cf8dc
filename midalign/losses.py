"""Contrastive alignment loss on pooled mid-layer states (SPEC §2). Tensor math only.

InfoNCE with in-batch negatives, as in the paper (Liu & Niehues, "Middle-layer representation
alignment for cross-lingual transfer in fine-tuned LLMs", 2025) and sentence-transformers'
MultipleNegativesRankingLoss::

    s_ij = cos(x_i, y_j) / τ
    loss = mean_i  −log( exp(s_ii) / Σ_j exp(s_ij) )          (x → y)

``symmetric`` averages it with the y → x direction. With several layers the per-layer losses are
averaged. ``gather`` all-gathers y across ranks *with gradient* so that every rank's anchors see
the global batch as negatives, which is what a single process holding the whole batch computes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``t`` [..., B, d] from every rank along the batch dim; gradients flow back
    to the rank that produced each slice. Returns the gathered tensor and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, 0
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    gathered = all_gather_tensor_autograd(
        t.contiguous(), gather_dim=t.dim() - 2, group=dist.group.WORLD
    )
    return gathered, dist.get_rank() * t.shape[-2]


def info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 0.1,
    symmetric: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """Alignment loss for parallel pairs (x_i, y_i).

    x, y: [B, d] or [n_layers, B, d] pooled states (row i of x translates row i of y).
    Returns a scalar: the mean over layers (and directions, if symmetric).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)
    y = F.normalize(y.to(torch.promote_types(y.dtype, torch.float32)), dim=-1)
    if x.dim() == 2:
        x, y = x[None], y[None]  # [n_layers=1, B, d]
    y_all, offset = _gather_with_grad(y) if gather else (y, 0)
    batch = x.shape[-2]
    labels = torch.arange(offset, offset + batch, device=x.device)
    logits = x @ y_all.transpose(-1, -2) / temperature  # [n_layers, B, B_global]
    loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat(x.shape[0]))
    if symmetric:
        x_all, _ = _gather_with_grad(x) if gather else (x, 0)
        logits_yx = y @ x_all.transpose(-1, -2) / temperature
        loss = (loss + F.cross_entropy(logits_yx.flatten(0, 1), labels.repeat(x.shape[0]))) / 2
    return loss
