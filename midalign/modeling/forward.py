"""The two forwards midalign runs on a causal LM: early exit with pooling, and the task loss.

The early-exit forward pools the layers it is asked for; the task loss computes logits only
where a label is.

Hidden-state indexing follows HF's ``output_hidden_states`` tuple: 0 = embedding output,
l = output of decoder layer l. Layer L (the last) is taken after the final norm by default, as
``hidden_states[L]`` holds it (the probe measures that), or before it with ``final_norm=False``:
the residual stream, as at every other layer, which is what the alignment loss uses at L, as
the paper's code does (its parallel forward never reaches the norm). The forward stops after the
highest requested layer: later layers, the final norm (unless L is requested after it) and the
lm_head never run, so no logits are computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from midalign.errors import InputError
from midalign.modeling.layers import decoder_stack, input_device, unwrap

POOL_MODES = ("mean", "mean-all")


def pooling_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool: str,
    special_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Which tokens a sentence embedding averages over: [B, T] float.

    ``mean`` drops BOS/EOS and other special tokens: small models park an attention sink on the
    first position, and averaging it in makes mid-layer embeddings nearly identical across
    sentences. ``mean-all`` keeps every non-padding token, as the paper's reference code did.
    A row with no content token (e.g. an empty string) falls back to its non-padding tokens,
    so pooling never divides by zero.
    """
    if pool not in POOL_MODES:
        raise InputError(f"--pool must be one of {', '.join(POOL_MODES)}, not {pool!r}")
    mask = attention_mask.bool()
    if pool == "mean" and len(special_ids):
        content = mask & ~torch.isin(
            input_ids, torch.as_tensor(list(special_ids), device=input_ids.device)
        )
        empty = ~content.any(dim=1, keepdim=True)
        mask = torch.where(empty, mask, content)
    return mask.to(torch.float32)


def _masked_mean(h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over tokens: h [B, T, d], weights [B, T] -> [B, d], at least float32
    whatever the model dtype (a float64 model stays float64). A row without any weight (all
    padding, or an empty sentence with no BOS) is a zero vector rather than 0/0, and its cosine
    with anything is 0. Positions of weight 0 are never read, so a NaN an attention kernel may
    leave at a fully masked position stays out. Inside a bf16 autocast forward (mixed-precision
    training) too: autocast would run the einsum in bf16."""
    with torch.autocast(h.device.type, enabled=False):
        h = h.to(torch.promote_types(h.dtype, torch.float32))
        w = weights.to(h.device, h.dtype)
        h = torch.where(w[..., None] > 0, h, 0.0)
        total = torch.einsum("btd,bt->bd", h, w)
        return total / w.sum(dim=1, keepdim=True).clamp(min=1.0)


@contextlib.contextmanager
def _truncated(stack: nn.Module, n: int) -> Iterator[None]:
    """Temporarily keep only the first ``n`` decoder layers and drop the final norm, so the
    unmodified transformers forward stops there."""
    full, norm = stack.layers, stack.norm
    stack.layers, stack.norm = full[:n], nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = full, norm


def pooled_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    pool: str = "mean",
    special_ids: Sequence[int] = (),
    final_norm: bool = True,
) -> torch.Tensor:
    """Sentence embeddings at ``layers``: [len(layers), B, d], float32 (float64 for a float64
    model).

    One forward through the decoder, stopped after max(layers); each requested layer is pooled
    by a hook the moment it is produced, so no [B, T, d] state is kept beyond the next layer.
    Differentiable: the alignment loss backpropagates through it. Works with left or right
    padding (positions are computed from the mask). ``final_norm``: layer L after the final
    norm (HF's ``hidden_states[L]``, the probe's view) or before it (the residual stream, the
    alignment loss's view); other layers are unaffected.

    A model spread over devices by ``--device-map`` runs as well: the inputs go to the
    embedding layer's device, accelerate's hooks carry the states from layer to layer (and
    bring an offloaded layer's weights in for its forward), each layer is pooled on its own
    device, and the result comes back to the device of ``input_ids``.
    """
    stack = decoder_stack(model)
    n_layers = len(stack.layers)
    layers = list(layers)
    if not layers or min(layers) < 0 or max(layers) > n_layers:
        raise InputError(f"layers {layers} out of range 0..{n_layers}")
    caller = input_ids.device
    device = input_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    weights = pooling_mask(input_ids, attention_mask, pool, special_ids)
    norm = stack.norm
    pooled: dict[int, torch.Tensor] = {}

    def keep(index: int, output: torch.Tensor | tuple) -> None:
        h = output[0] if isinstance(output, tuple) else output
        if index == n_layers and final_norm:  # HF's hidden_states[L] is after the final norm
            h = norm(h)
        pooled[index] = _masked_mean(h, weights)

    hooks = []
    if 0 in layers:
        hooks.append(stack.embed_tokens.register_forward_hook(lambda m, i, o: keep(0, o)))
    for index in layers:
        if index > 0:
            hooks.append(
                stack.layers[index - 1].register_forward_hook(
                    lambda m, i, o, index=index: keep(index, o)
                )
            )
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    try:
        with _truncated(stack, max(layers)):
            stack(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([pooled[index].to(caller) for index in layers])


def length_groups(lengths: Sequence[int], overhead: float) -> list[list[int]]:
    """Rows grouped by length so that the tokens computed, padding included, plus ``overhead``
    token-equivalents per group, are fewest: [[row, ...], ...], each group of rows adjacent in
    length order. Exact (dynamic programming over the sorted lengths, O(n²) for n rows)."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    ordered = [lengths[row] for row in order]
    best = [0.0] + [float("inf")] * len(order)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):  # the last group is sorted rows first..end-1
        for first in range(end):
            cost = best[first] + (end - first) * ordered[end - 1] + overhead
            if cost < best[end]:
                best[end], start[end] = cost, first
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[start[end] : end])
        end = start[end]
    return groups[::-1]


def grouped_pooled_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    overhead: float,
    **kwargs,
) -> torch.Tensor:
    """:func:`pooled_states` of a padded batch run as length-sorted sub-batches
    (:func:`length_groups`), each trimmed to its own longest row, the rows put back in their
    order: the same states (each row's forward sees only its own tokens) for less padding.

    The alignment micro-batch is 2B sentences of different lengths padded to the longest; on
    the default batch of docs/benchmarks.md 38 % of its tokens are padding. A sub-batch costs
    a forward's fixed work (``overhead``, in tokens), so short batches stay whole."""
    groups = length_groups(attention_mask.sum(dim=1).tolist(), overhead)
    if len(groups) == 1:
        return pooled_states(model, input_ids, attention_mask, layers, **kwargs)
    parts, order = [], []
    for rows in groups:
        index = torch.tensor(rows, device=input_ids.device)
        mask = attention_mask[index]
        columns = mask.any(dim=0)  # padding is on one side, so these are contiguous
        parts.append(
            pooled_states(model, input_ids[index][:, columns], mask[:, columns], layers, **kwargs)
        )
        order += rows
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts, dim=1)[:, inverse.to(parts[0].device)]


# --------------------------------------------------------------------------- task loss


def response_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Causal-LM cross-entropy (mean over labelled tokens), equal to ``model(...).loss``, with
    logits computed only where a label is.

    The vocabulary projection is the largest matmul of a small multilingual model (Gemma 3:
    262k × 640, more than its 18 layers together), and a task example's prompt carries no loss:
    the head only needs to run on the response tokens, e.g. 3 of 60 for a topic label.
    """
    hidden = decoder_stack(model)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, T, d], after the final norm
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100
    logits = output_logits(model, hidden[:, :-1][keep])  # [n, vocab]
    return nn.functional.cross_entropy(logits, targets[keep])


def output_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits (in at least float32) at the final-norm states ``hidden`` [..., d]:
    its output embedding, and the final soft-capping where the model has one (Gemma 2)."""
    inner = unwrap(model)
    logits = inner.get_output_embeddings()(hidden)  # [..., vocab]
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
