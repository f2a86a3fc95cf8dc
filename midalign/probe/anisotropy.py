"""Anisotropy diagnostics: how the raw pooled states fill their space, per layer.

They tell whether a cosine (in the probe's xsim, in the alignment loss's InfoNCE) measures
meaning or a few rogue dimensions (Ethayarajh 2019; Timkey & van Schijndel 2021; Sun et al. 2024;
docs/design.md §3).

For the states h of every sentence of every side at one layer:

- ``mean_cosine``: E cos(h_p, h_q) over ordered pairs of sentences at different positions
  (position i of one side translates position i of the others, so these are the non-parallel
  pairs, same-language ones included). Computed exactly, not sampled: with u = h / ‖h‖,
  S = Σ_p u_p and G_i = Σ_{p at position i} u_p, the sum over those pairs is ‖S‖² − Σ_i ‖G_i‖²
  and their number N² − Σ_i n_i². Near 1: every sentence points the same way.
- ``mean_norm_ratio``: ‖E h‖ / E ‖h‖, 1 when all states are one vector, 0 when centred.
- ``top_pc_share``: the largest eigenvalue of the covariance over its trace.
- ``top_dims``: the dimensions with the largest share E[h_j²] / E‖h‖², and ``top_dims_share``
  their sum: near 1, the dot product is decided by those few dimensions.

Pure tensor math in float64; no model, no language identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TOP_DIMS = 3


def anisotropy(states: torch.Tensor, position: torch.Tensor, top: int = TOP_DIMS) -> dict:
    """Diagnostics of one layer: states [N, d] of all sides stacked, position [N] the index of
    each sentence in its side (equal positions = translations). JSON-ready: ``mean_cosine`` is
    None when there is no non-parallel pair, ``top_pc_share`` when all states are equal."""
    h = states.double()  # [N, d]
    n, d = h.shape
    u = F.normalize(h, dim=-1)
    groups = torch.zeros(int(position.max()) + 1, d, dtype=h.dtype).index_add_(0, position, u)
    sizes = torch.bincount(position).double()
    pairs = n * n - (sizes**2).sum().item()
    total = u.sum(dim=0)
    mean_cosine = ((total @ total).item() - (groups**2).sum().item()) / pairs if pairs else None

    mean = h.mean(dim=0)
    centred = h - mean
    gram = centred @ centred.T if n < d else centred.T @ centred  # same nonzero eigenvalues
    eig = torch.linalg.eigvalsh(gram)  # ascending
    energy = (h**2).mean(dim=0)  # [d], sums to E‖h‖²
    share = energy / energy.sum()
    top_share, top_dim = share.topk(min(top, d))
    return {
        "mean_cosine": mean_cosine,
        "mean_norm_ratio": (mean.norm() / h.norm(dim=-1).mean()).item(),
        "top_pc_share": (eig[-1] / eig.sum()).item() if eig.sum() > 0 else None,
        "top_dims": [
            {"dim": int(j), "share": float(s)}
            for j, s in zip(top_dim.tolist(), top_share.tolist(), strict=True)
        ],
        "top_dims_share": top_share.sum().item(),
    }


def anisotropy_by_layer(
    emb_by_side: dict[str, torch.Tensor], layers: Sequence[int], top: int = TOP_DIMS
) -> dict[int, dict]:
    """:func:`anisotropy` of every layer: side -> [L, n, d] in, {layer: diagnostics} out."""
    sides = list(emb_by_side.values())
    position = torch.cat([torch.arange(e.shape[1]) for e in sides])  # [N]
    return {
        layer: anisotropy(torch.cat([e[li] for e in sides]), position, top)
        for li, layer in enumerate(layers)
    }
