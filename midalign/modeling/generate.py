"""Batched greedy generation: the prompts of a whole test set, answered in few forward passes.

Prompts are sorted by length (so a batch wastes little on padding), left-padded (so every row's
next token sits in the last column, which is what the KV cache extends), and decoded greedily
by ``model.generate`` with the cache on, through :func:`midalign.modeling.decode.greedy_decode`: the
prefill runs in groups of similar length, and each row leaves the batch as soon as it stops
at EOS or at its task's stop rule (a newline; the closing bracket of a JSON answer), so no
step computes a row that has finished. Results come back in input order. Greedy decoding is
deterministic, and the batched answers equal one ``model.generate`` per prompt
(tests/test_generate.py checks that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria

from midalign.errors import InputError
from midalign.modeling.decode import greedy_decode
from midalign.modeling.layers import input_device, unwrap

log = logging.getLogger(__name__)


class TextStop(StoppingCriteria):
    """Stops each row once its generated text satisfies ``done`` (decoded every step: cheap
    next to a forward of the model)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, done: Callable):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.done = done

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs
    ) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]  # [B, generated so far]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return torch.tensor([self.done(t) for t in texts], device=input_ids.device)


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (chat models end turns with
    their own token, e.g. <end_of_turn>, <|eot_id|>)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [] if extra is None else [extra]
    return list(dict.fromkeys(ids))


def greedy_config(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int
) -> GenerationConfig:
    """Greedy decoding with the KV cache, up to ``max_new_tokens``, ending at any EOS of the
    tokenizer or the model, padding with the tokenizer's pad token (its EOS if it has none).
    More new tokens than the model has positions is an error, before the cache is allocated
    for them (a mistyped --max-new-tokens 100000000000 asked for terabytes)."""
    context = getattr(getattr(unwrap(model), "config", None), "max_position_embeddings", None)
    if context is not None and max_new_tokens > context:
        raise InputError(
            f"--max-new-tokens {max_new_tokens}: more than the model's {context} positions"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad,
        eos_token_id=_eos_ids(model, tokenizer),
    )


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    stop: Callable[[str], bool] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy answers (decoded, special tokens dropped) to token-id ``prompts``, in order.

    ``stop`` says whether a row's text so far is a whole answer (a task's
    :meth:`~midalign.evaluation.tasks.Task.stop`); without it a row runs to EOS or the cap. The
    text after the stop point is returned too (the task's parser reads only what it needs), so
    nothing the model said is hidden.
    """
    config = greedy_config(model, tokenizer, max_new_tokens)
    pad, eos = config.pad_token_id, config.eos_token_id
    device = input_device(model)  # the embeddings' device, also under --device-map
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    answers: list[str] = [""] * len(prompts)
    desc = f"generating (up to {max_new_tokens} new tokens)"  # the cap sets how long a row can take
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    capped = 0  # answers that ran to max_new_tokens without finishing
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, T], left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        criteria = [TextStop(tokenizer, width, stop)] if stop is not None else []
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            stopping_criteria=criteria,
            custom_generate=greedy_decode,  # finished rows leave the batch
        )  # [B, T + new]
        new = out[:, width:]  # [B, new]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        for r, (i, text) in enumerate(zip(rows, texts, strict=True)):
            answers[i] = text
            if new.shape[1] == max_new_tokens and not set(new[r].tolist()) & set(eos):
                capped += stop is None or not stop(text)
        bar.update(len(rows))
    bar.close()
    if capped:
        log.warning(
            "%d of %d answers ran to the cap of %d new tokens without finishing; they take most "
            "of the time (the cap is the task's, unless eval's --max-new-tokens or a recipe's "
            "eval.max_new_tokens sets it)",
            capped,
            len(prompts),
            max_new_tokens,
        )
    return answers
