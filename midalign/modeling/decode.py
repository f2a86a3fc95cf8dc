"""The greedy decoding loop of batched generation: finished rows leave the batch at once.

``model.generate`` keeps every row of a batch in every forward until the last row finishes,
so a row that stopped after 10 tokens still pays for a full row of each later step (on Gemma 3
270M two thirds of a decode step is the 640 × 262k lm_head). :func:`greedy_decode` is handed
to ``model.generate`` as its ``custom_generate`` callable: generate prepares everything as it
always does (the generation config merged with the model's own, logits processors, stopping
criteria, position ids, the KV cache, logits of the last position only) and this loop runs
the steps, removing each finished row from the token ids, the attention mask, the position
ids and the cache (``Cache.batch_select_indices``). A row sees the same forwards it would see
in the full batch and masked keys contribute nothing to attention, so its tokens are the ones
``generate``'s own loop picks, up to float rounding, which a batch changes anyway (matmul
kernels sum in another order for 1 row than for 16); tests/test_generate.py compares with one
``model.generate`` per prompt, and benchmarks/generation.py on the real model.

Two more costs go: the prefill's padding and the head's weight packing. A batch of prompts of
27-74 tokens left-padded to 74 spends a third of its prefill on padding, so rows are
prefilled in groups of similar length (each row at least 90 % of its group's width), each
group padded to its own width, and the groups' keys and values are left-padded with zeros to
the batch width and written into generate's cache: the cache a single padded prefill would
hold, up to the values at masked positions, which attention never reads. And the LM head runs
as W·hᵀ rather than h·Wᵀ (:func:`_streamed_head`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

GROUP_WIDTH = 0.9
"""A row joins a prefill group when its length is at least this share of the group's width."""


def greedy_decode(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria,
    generation_config,
    **model_kwargs,
) -> torch.LongTensor:
    """Greedy tokens for left-padded ``input_ids`` [B, T]: [B, T + new], finished rows padded.

    The signature is ``GenerationMixin._sample``'s, which ``custom_generate`` callables share;
    ``model_kwargs`` holds the attention mask, position ids, cache and forward options.
    """
    batch, width = input_ids.shape
    rows = torch.arange(batch, device=input_ids.device)  # the batch row of each running row
    pad = generation_config.pad_token_id
    out = input_ids.new_full((batch, generation_config.max_length), pad)  # [B, T + cap]
    with _streamed_head(model):
        logits = _prefill(model, input_ids, model_kwargs)  # [B, V]
        while True:
            scores = logits_processor(input_ids, logits.float())  # float32, as _sample
            input_ids = torch.cat([input_ids, scores.argmax(dim=-1)[:, None]], dim=-1)
            done = stopping_criteria(input_ids, scores)  # [b] bool: EOS, cap, the stop rule
            if done.any():
                out[rows[done], : input_ids.shape[1]] = input_ids[done]
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    return out[:, : input_ids.shape[1]]  # the last rows were the longest
                rows, input_ids = rows[keep], input_ids[keep]
                model_kwargs["cache"].batch_select_indices(keep)
                for key in ("attention_mask", "position_ids"):
                    if model_kwargs.get(key) is not None:
                        model_kwargs[key] = model_kwargs[key][keep]
            model_kwargs = _advance(model_kwargs)
            inputs = model.prepare_inputs_for_generation(
                input_ids, next_sequence_length=1, **model_kwargs
            )
            logits = model(**inputs, return_dict=True).logits[:, -1]


@contextmanager
def _streamed_head(model: torch.nn.Module) -> Iterator[None]:
    """The LM head computed as W·hᵀ instead of h·Wᵀ while generating (a bias-free
    ``nn.Linear`` head; any other head as it is).

    Both are the same products and sums. On a CPU, h·Wᵀ with a few rows h goes through a GEMM
    that packs the whole weight on every call (Gemma 3: 262k × 640, 671 MB in float32), while
    W·hᵀ streams it once: measured 1.1-1.4× faster at 12-32 rows and 1.1-3× at 2-8 rows,
    the rows left at the end of a batch (docs/benchmarks.md). The model's own forward still runs
    the head, so what it does around it (Gemma 2's soft-capping, the last-position slice) is
    unchanged.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        type(head) is not torch.nn.Linear
        or head.bias is not None
        or hasattr(head, "_hf_hook")  # weights placed by accelerate's hooks (--device-map)
        or "forward" in head.__dict__
    ):
        yield
        return

    def streamed(h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])  # [n, d]
        logits = (head.weight @ flat.T).T.contiguous()  # [n, V]; argmax on the transposed
        return logits.reshape(*h.shape[:-1], head.out_features)  # view took 3x the copy

    head.forward = streamed
    try:
        yield
    finally:
        del head.forward


def prefill_groups(lengths: list[int], share: float = GROUP_WIDTH) -> list[list[int]]:
    """Rows grouped for the prefill, longest first: a row joins the current group while its
    length is at least ``share`` of the group's first (widest) row, else starts a new one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= share * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _prefill(model: torch.nn.Module, input_ids: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
    """The last position's logits [B, V] of left-padded ``input_ids`` [B, T]; fills the cache.

    One forward when the rows need no grouping (one group, no mask) or the cache holds more
    than plain and sliding-window key/value layers; else one forward per group (module doc).
    """
    cache, mask = model_kwargs.get("cache"), model_kwargs.get("attention_mask")
    groups = [] if mask is None else prefill_groups(mask.sum(dim=1).tolist())
    plain = isinstance(cache, DynamicCache) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers
    )
    if len(groups) < 2 or not plain or cache.get_seq_length() > 0:
        inputs = model.prepare_inputs_for_generation(
            input_ids, is_first_iteration=True, **model_kwargs
        )
        return model(**inputs, return_dict=True).logits[:, -1]
    width = input_ids.shape[1]
    logits, keys, values = [], [[] for _ in cache.layers], [[] for _ in cache.layers]
    for rows in groups:
        cut = width - int(mask[rows[0]].sum())  # the group's columns: the last width - cut
        kwargs = dict(model_kwargs, cache=DynamicCache(config=model.config))
        for key in ("attention_mask", "position_ids"):
            if model_kwargs.get(key) is not None:
                kwargs[key] = model_kwargs[key][rows, cut:]
        inputs = model.prepare_inputs_for_generation(
            input_ids[rows, cut:], is_first_iteration=True, **kwargs
        )
        logits.append(model(**inputs, return_dict=True).logits[:, -1])
        for layer, k, v in zip(kwargs["cache"].layers, keys, values, strict=True):
            # [rows, heads, stored, dim], right-aligned to the batch's width (a sliding layer
            # stores at most its window; update() below keeps the same tail of the padded one)
            k.append(F.pad(layer.keys, (0, 0, width - layer.keys.shape[-2], 0)))
            v.append(F.pad(layer.values, (0, 0, width - layer.values.shape[-2], 0)))
    # back to batch order
    order = torch.tensor([i for rows in groups for i in rows], device=input_ids.device).argsort()
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        layer.update(torch.cat(k)[order], torch.cat(v)[order])
    return torch.cat(logits)[order]


def _advance(model_kwargs: dict) -> dict:
    """The attention mask and position ids one token longer (what
    ``GenerationMixin._update_model_kwargs_for_generation`` does for a decoder-only model)."""
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], -1)
    position = model_kwargs.get("position_ids")
    if position is not None:
        model_kwargs["position_ids"] = torch.cat([position, position[..., -1:] + 1], dim=-1)
    return model_kwargs
