"""The base model's per-layer statistics of pooled states, for ``align.stats: base``.

μ and σ per dimension of the states the alignment loss sees (pooled, before the final norm at
layer L), measured once on the base model over the alignment training pairs, both sides, before
LoRA is attached. They stay constant during training, so the normalisation does not drift with
the adapter it trains, and they are saved as ``align_stats.safetensors`` (tensors
``layer.<l>.mean`` and ``layer.<l>.std``, float64, [d]) in the run directory, next to the adapter
and in every checkpoint; ``--resume`` loads them from the checkpoint instead of recomputing.
Under several processes every rank computes them and all use rank 0's (:func:`broadcast_stats`).

Every language weighs the same, as in the alignment stream (which draws a language uniformly):
μ and σ² are those of the uniform mixture of the languages' rows (law of total variance), on at
most ``per_lang`` pairs per language, a seeded sample. σ is floored as in the loss
(:func:`midalign.training.losses.floored_std`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from midalign.data.pairs import Pairs, encode_pairs
from midalign.errors import InputError
from midalign.files import atomic_file
from midalign.modeling.forward import pooled_states
from midalign.modeling.layers import input_device
from midalign.training.losses import Stats, floored_std

STATS_FILE = "align_stats.safetensors"


@torch.no_grad()
def base_stats(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    layers: Sequence[int],
    pool: str,
    special_ids: Sequence[int],
    max_length: int,
    per_lang: int,
    seed: int,
    batch_pairs: int = 16,
) -> Stats:
    """(μ, σ), each [len(layers), d] float64, of the pooled states of ``model`` as it is (call
    it before LoRA is attached) over at most ``per_lang`` pairs per language."""
    was_training = model.training
    model.eval()
    device = input_device(model)
    means, variances = [], []
    for i, items in enumerate(pairs.values()):
        n = min(per_lang, len(items))
        chosen = np.random.default_rng([seed, 2, i]).choice(len(items), n, replace=False)
        sample = [items[int(j)] for j in sorted(chosen)]
        rows = []
        for start in range(0, n, batch_pairs):
            batch = encode_pairs(tokenizer, sample[start : start + batch_pairs], max_length)
            rows.append(
                pooled_states(
                    model,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    layers,
                    pool,
                    special_ids,
                    final_norm=False,
                ).double()
            )
        h = torch.cat(rows, dim=1).cpu()  # [n_layers, 2n, d]: both sides of every pair
        mean = h.mean(dim=1)
        means.append(mean)
        variances.append((h - mean[:, None]).pow(2).mean(dim=1))
    model.train(was_training)
    mean_l, var_l = torch.stack(means), torch.stack(variances)  # [n_langs, n_layers, d]
    mean = mean_l.mean(dim=0)
    var = (var_l + (mean_l - mean).pow(2)).mean(dim=0)  # within + between languages
    return mean, floored_std(var)


def save_stats(path: Path, stats: Stats, layers: Sequence[int], info: dict[str, str]) -> None:
    """Write ``layer.<l>.mean`` / ``layer.<l>.std`` and ``info`` (as metadata) atomically."""
    mean, std = stats
    tensors = {}
    for i, layer in enumerate(layers):
        tensors[f"layer.{layer}.mean"] = mean[i].contiguous()
        tensors[f"layer.{layer}.std"] = std[i].contiguous()
    metadata = {"layers": json.dumps(list(layers)), **{k: str(v) for k, v in info.items()}}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_stats(path: Path, layers: Sequence[int]) -> Stats:
    """(μ, σ) [len(layers), d] from a file :func:`save_stats` wrote; an error if a layer is
    missing."""
    tensors = load_file(str(path))
    missing = [layer for layer in layers if f"layer.{layer}.mean" not in tensors]
    if missing:
        raise InputError(f"{path} has no statistics for layer(s) {missing}")
    mean = torch.stack([tensors[f"layer.{layer}.mean"] for layer in layers])
    std = torch.stack([tensors[f"layer.{layer}.std"] for layer in layers])
    return mean, std


def broadcast_stats(stats: Stats, device: torch.device) -> Stats:
    """Rank 0's statistics on every rank (unchanged without a process group): each rank
    computed its own, and all must normalise with the same ones, bit for bit."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats
    out = []
    for t in stats:
        t = t.to(device)
        dist.broadcast(t, src=0)
        out.append(t.cpu())
    return out[0], out[1]
