"""Likelihood scoring of a closed label set: each label's log-probability as the answer.

A classification task (topic) can be scored without generating: the model reads the prompt
once, and each label's log-probability as the answer that follows it is summed over the
label's tokens, as lm-evaluation-harness scores multiple choice. The prediction is the label
with the highest sum (``accuracy``) or the highest sum per character of the label
(``accuracy_norm``, lm-evaluation-harness's ``acc_norm``). Unlike generation, every item gets
an answer among the labels, and the scores of all labels are kept.

What is computed, for B prompts and K labels each:

0. the prompts' common start (a task's instruction: 40 of ~80 tokens for topic on Gemma 3),
   once for the whole test set, its KV cache copied into every batch;
1. the rest of each prompt, left-padded, in one forward continuing that cache; the logits only
   at each prompt's last position (its log-softmax scores every label's first token);
2. every label of length ≥ 2 but its last token, as B·K short rows that continue their
   prompt's cache; logits only at the label positions that predict a next label token.

So a prompt is computed once, not once per label, its shared start once in all, and the
vocabulary projection (262k × 640 on Gemma 3, more than its 18 layers) runs only where a label
token is scored. (Padding sits between the common start and the rest of a prompt; a model with
a sliding window shorter than its longest prompt and label, where those padded slots would
narrow the window, gets no shared start.)

A label's tokens are those the model is trained to answer (:func:`midalign.modeling.prompting.
encode_example`: a chat template's assistant turn may tokenise the label differently from the
label alone), up to the end of the label's text: the end-of-turn or EOS after it is not scored,
as lm-evaluation-harness does not score it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedTokenizerBase

from midalign.errors import InputError
from midalign.modeling.forward import output_logits
from midalign.modeling.layers import decoder_stack, input_device, unwrap
from midalign.modeling.prompting import IGNORE_INDEX, encode_example


def label_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, label: str, system: str | None = None
) -> list[int]:
    """The tokens of ``label`` as the answer after ``prompt``, the way training encodes it,
    without the tokens that end the answer (EOS, a chat template's end of turn)."""
    ids, labels = encode_example(tokenizer, prompt, label, system)
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    for n in range(1, len(answer) + 1):  # the shortest start that spells the whole label
        if label.strip() in tokenizer.decode(answer[:n], skip_special_tokens=True):
            return answer[:n]
    raise InputError(f"label {label!r} is not spelled by its tokens {answer} after the prompt")


@torch.inference_mode()
def label_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[Sequence[int]]],
    batch_size: int = 16,
    progress: bool = True,
    share_start: bool = True,
) -> list[list[float]]:
    """For each prompt (token ids) and each of its labels (token ids), the log-probability of
    the label's tokens following the prompt: ``out[i][k] = Σ_t log p(labels[i][k][t] | prompt
    i, labels[i][k][:t])``. Prompts are batched by length, longest first; results come back in
    input order. ``share_start=False`` computes every prompt whole (benchmarks/loglik_speed.py
    times the two)."""
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} label lists")
    if any(not ids for choices in labels for ids in choices):
        raise ValueError("a label has no tokens")
    device = input_device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    scores: list[list[float]] = [[] for _ in prompts]
    longest = max(len(p) for p in prompts) + max(len(x) for c in labels for x in c)
    start = shared_start(prompts, model, longest) if share_start else 0
    prefix = None
    if start:  # the shared start, once for the whole set
        prefix = decoder_stack(model)(
            input_ids=torch.tensor([list(prompts[0][:start])], device=device), use_cache=True
        ).cache
    bar = tqdm(total=len(prompts), desc="scoring labels", unit="prompt", disable=not progress)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        batch = _score_batch(
            model,
            [prompts[i][start:] for i in rows],
            [labels[i] for i in rows],
            device,
            start,
            prefix,
        )
        for i, row_scores in zip(rows, batch, strict=True):
            scores[i] = row_scores
        bar.update(len(rows))
    bar.close()
    return scores


def shared_start(prompts: Sequence[Sequence[int]], model: torch.nn.Module, longest: int) -> int:
    """How many first tokens every prompt shares and the scorer computes once: the common
    prefix, less one so that no prompt is all prefix; 0 for fewer than 2 prompts, a prefix
    of fewer than 2 tokens, or a model whose sliding window is shorter than ``longest`` (the
    longest prompt and label), where the padding after the prefix would narrow the window."""
    window = getattr(unwrap(model).config, "sliding_window", None)
    if len(prompts) < 2 or (window is not None and window < longest):
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n if n >= 2 else 0


def _score_batch(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[Sequence[int]]],
    device: torch.device,
    start: int = 0,
    prefix: Cache | None = None,
) -> list[list[float]]:
    """The batch's label scores; ``prompts`` are the prompts' tokens after their ``start``
    shared ones, whose cache is ``prefix`` (None without a shared start)."""
    stack = decoder_stack(model)
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, W], left-padded
    mask = torch.zeros((len(prompts), start + width), dtype=torch.long)  # the prefix's too
    mask[:, :start] = 1
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, start + width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
    longest = max(len(ids_) for choices in labels for ids_ in choices)
    cache = None
    if prefix is not None:  # a copy for this batch, one row a prompt
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(prompts))
    out = stack(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=longest > 1 or cache is not None,
    )
    first = output_logits(model, out.last_hidden_state[:, -1]).log_softmax(-1)  # [B, vocab]
    scores = [
        [float(first[r, choice[0]]) for choice in choices] for r, choices in enumerate(labels)
    ]
    if longest == 1:
        return scores
    # labels of two or more tokens: all but their last token continue their prompt's cache
    rows = [(r, k) for r, choices in enumerate(labels) for k, c in enumerate(choices) if len(c) > 1]
    span = longest - 1
    cont = torch.zeros((len(rows), span), dtype=torch.long)  # [R, span], right-padded
    cont_mask = torch.zeros((len(rows), span), dtype=torch.long)
    for j, (r, k) in enumerate(rows):
        tokens = labels[r][k][:-1]
        cont[j, : len(tokens)] = torch.tensor(tokens)
        cont_mask[j, : len(tokens)] = 1
    source = torch.tensor([r for r, _ in rows])
    cache = out.cache
    cache.batch_select_indices(source.to(device))  # one copy of its prompt's cache per row
    lengths = mask.sum(-1)[source]  # [R] tokens of each row's prompt, its shared start too
    hidden = stack(
        input_ids=cont.to(device),
        attention_mask=torch.cat([mask[source], cont_mask], dim=1).to(device),
        position_ids=(lengths[:, None] + torch.arange(span)).to(device),
        cache=cache,
        use_cache=True,
    ).last_hidden_state  # [R, span, d]
    # position t of a row predicts its label's token t + 1
    where = [(j, t) for j, (r, k) in enumerate(rows) for t in range(len(labels[r][k]) - 1)]
    picked = hidden[[j for j, _ in where], [t for _, t in where]]  # [n, d]
    logp = output_logits(model, picked).log_softmax(-1)  # [n, vocab]
    targets = [labels[rows[j][0]][rows[j][1]][t + 1] for j, t in where]
    token_logp = logp[torch.arange(len(where)), torch.tensor(targets)].tolist()
    for (j, _), value in zip(where, token_logp, strict=True):
        r, k = rows[j]
        scores[r][k] += value
    return scores
