"""The layer-wise cross-lingual retrieval probe: pooled sentence embeddings per layer, scored.

One early-exit forward per batch gives the pooled states of every requested layer, then xsim
retrieval scores every language pair (docs/design.md §1). :func:`probe_model` does it all for a
model already in memory; `midalign probe` and a recipe's probe step add reading the data and
loading the model (:mod:`midalign.probe.run`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from midalign.data.corpus import ParallelCorpus
from midalign.errors import InputError
from midalign.modeling.compiled import compiled_layers
from midalign.modeling.forward import pooled_states
from midalign.modeling.layers import input_device, num_layers, parse_layers
from midalign.probe.anisotropy import anisotropy_by_layer
from midalign.probe.retrieval import (
    check_options,
    layer_accuracy,
    normalize_states,
    pair_accuracy,
    summarize,
)

MAX_TOKENS = 2048
"""Longest sentence embedded, in tokens (``--max-tokens``): about 8× the longest SIB-200
sentence in Gemma 3's tokens (247, Khmer). A longer line is nearly always a file without its line
breaks, whose one forward would need tens of gigabytes; it is an error naming the file and line,
never truncated, since a cut sentence no longer translates its partner."""
CHARS_PER_TOKEN = 32
"""More characters per token than any tokenizer averages (Gemma 3's longest token has 31), so a
line of over ``CHARS_PER_TOKEN × max_tokens`` characters is too long whatever the model: it is
refused before the model loads."""


def check_languages(corpus: ParallelCorpus, option: str) -> None:
    """Retrieval pairs one language with another: one language alone leaves nothing to score."""
    if len(corpus.languages) < 2:
        raise InputError(
            f"{option}: the probe needs at least 2 distinct languages; got "
            f"{len(corpus.languages)} ({', '.join(corpus.languages)})"
        )


def check_characters(corpus: ParallelCorpus, max_tokens: int) -> None:
    """Refuse a sentence too long for ``max_tokens`` whatever the tokenizer (see
    :data:`CHARS_PER_TOKEN`), before any model is loaded."""
    limit = CHARS_PER_TOKEN * max_tokens
    for side, texts in corpus.texts.items():
        for i, text in enumerate(texts):
            if len(text) > limit:
                raise InputError(
                    f"{corpus.where(side, i)}: sentence of {len(text)} characters, too long for "
                    f"--max-tokens {max_tokens} (a missing line break?)"
                )


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """BOS/EOS/PAD/CLS/SEP ids: the tokens ``--pool mean`` leaves out of the average."""
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id")
    ids = {getattr(tokenizer, name, None) for name in names}
    return sorted(i for i in ids if i is not None)


def default_batch_tokens(model: torch.nn.Module) -> int:
    """1024 tokens per batch on CPU (measured fastest: activations stay in cache; 8192 runs at
    half the speed on Gemma 3 270M), 16384 on GPU."""
    return 16384 if input_device(model).type == "cuda" else 1024


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that rows × longest row ≤ ``batch_tokens``.

    Sorting by length keeps padding near zero; the budget keeps activation memory flat whatever
    the sentence lengths. A single sentence longer than the budget gets a batch of its own.
    """
    if batch_tokens < 1:
        raise InputError(f"--batch-tokens must be positive, not {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def extract_embeddings(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    layers: Sequence[int],
    pool: str = "mean",
    batch_tokens: int = 1024,
    progress: bool = True,
) -> torch.Tensor:
    """Sentence embeddings at ``layers``: [len(layers), n, d] float32, in input order.

    Plain text with the tokenizer's own special tokens (BOS for Llama/Gemma), no chat template.
    Tokenised once, sorted by length, batched by token budget, right-padded.
    """
    encoded = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    return embed_ids(model, tokenizer, encoded, layers, pool, batch_tokens, progress)


@torch.inference_mode()
def embed_ids(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[Sequence[int]],
    layers: Sequence[int],
    pool: str = "mean",
    batch_tokens: int = 1024,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`extract_embeddings` of sentences already tokenised: [len(layers), n, d]."""
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = special_token_ids(tokenizer)
    out: torch.Tensor | None = None
    bar = tqdm(total=len(encoded), desc="embedding", unit="sent", disable=not progress)
    for batch in token_budget_batches([len(x) for x in encoded], batch_tokens):
        # at least one (padding) position: a batch of empty sentences from a tokenizer that adds
        # no BOS (Qwen2) would otherwise be a zero-width forward; such rows pool to zeros
        width = max(len(encoded[batch[0]]), 1)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        pooled = pooled_states(model, ids.to(device), mask.to(device), layers, pool, special)
        if out is None:  # [L, n, d]
            out = torch.empty(len(layers), len(encoded), pooled.shape[-1], dtype=torch.float32)
        out[:, batch] = pooled.float().cpu()
        bar.update(len(batch))
    bar.close()
    if out is None:
        raise InputError("no sentences to embed")
    return out


def embed_corpus(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpus: ParallelCorpus,
    layers: Sequence[int],
    pool: str = "mean",
    batch_tokens: int = 1024,
    progress: bool = True,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, torch.Tensor]:
    """Embeddings of every side of ``corpus``: side -> [len(layers), n_side, d].

    All sides go through one length-sorted pass, so batches mix languages and padding stays
    minimal across the whole corpus. A sentence of more than ``max_tokens`` tokens is an error
    naming its file and line, raised before the first forward.
    """
    check_characters(corpus, max_tokens)
    sides = list(corpus.texts)
    where = [(side, i) for side in sides for i in range(len(corpus.texts[side]))]
    flat = [corpus.texts[side][i] for side, i in where]
    encoded = tokenizer(flat, add_special_tokens=True)["input_ids"]
    for (side, i), ids in zip(where, encoded, strict=True):
        if len(ids) > max_tokens:
            raise InputError(
                f"{corpus.where(side, i)}: sentence of {len(ids)} tokens, over --max-tokens "
                f"{max_tokens}"
            )
    emb = embed_ids(model, tokenizer, encoded, layers, pool, batch_tokens, progress)
    result, start = {}, 0
    for side in sides:
        n = len(corpus.texts[side])
        result[side] = emb[:, start : start + n]
        start += n
    return result


def is_multiway(corpus: ParallelCorpus) -> bool:
    """One side per language, equal lengths, and every ordered pair requested."""
    sides = list(corpus.texts)
    lengths = {len(t) for t in corpus.texts.values()}
    all_pairs = {(a, b) for a in sides for b in sides if a != b}
    return len(lengths) == 1 and set(corpus.pairs) == all_pairs


def score_corpus(
    embeddings: dict[str, torch.Tensor], corpus: ParallelCorpus, k: int = 4, margin: str = "ratio"
) -> torch.Tensor:
    """Retrieval accuracy of every pair of ``corpus.pairs`` at every layer: [L, P]."""
    if is_multiway(corpus):
        sides = list(corpus.texts)
        n_layers = embeddings[sides[0]].shape[0]
        acc = torch.stack(  # [L, M, M]; one layer's states stacked at a time, [M, N, d]
            [
                layer_accuracy(torch.stack([embeddings[s][li] for s in sides]), k, margin)
                for li in range(n_layers)
            ]
        )
        index = {s: i for i, s in enumerate(sides)}
        src = torch.tensor([index[a] for a, _ in corpus.pairs])
        tgt = torch.tensor([index[b] for _, b in corpus.pairs])
        return acc[:, src, tgt]
    return pair_accuracy(embeddings, corpus.pairs, k=k, margin=margin)


@dataclass
class Probe:
    """What :func:`probe_model` computed: retrieval of every pair at every probed layer."""

    corpus: ParallelCorpus
    layers: list[int]  # the probed layers, ascending
    num_layers: int  # the model's L (layers 0..L)
    embeddings: dict[str, torch.Tensor]  # side -> [len(layers), n_side, d], raw (not normalised)
    acc: torch.Tensor  # [len(layers), len(corpus.pairs)] retrieval accuracy
    summary: dict  # retrieval.summarize of acc: per layer, language, pair and group
    anisotropy: dict[int, dict]  # layer -> diagnostics of the raw states
    compile: dict  # what --compile did (midalign.modeling.compiled.Compiled)

    @property
    def by_layer(self) -> dict[int, float]:
        """Mean retrieval accuracy over all ordered pairs, per layer."""
        return {layer: self.summary["per_layer"][layer]["mean"] for layer in self.layers}


def probe_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: ParallelCorpus | Mapping[str, Sequence[str]],
    layers: str | Sequence[int] = "all",
    *,
    pool: str = "mean",
    margin: str = "ratio",
    normalize: str = "none",
    k: int = 4,
    batch_tokens: int | None = None,
    max_tokens: int = MAX_TOKENS,
    groups: dict[str, list[str]] | None = None,
    progress: bool = False,
    compile: str = "auto",
) -> Probe:
    """xsim retrieval of every ordered language pair at ``layers``, for a model in memory.

    ``sentences``: ``{language: [sentence, ...]}``, sentence i of every language translating
    the others' (the keys name the languages in the results), or a
    :class:`~midalign.data.corpus.ParallelCorpus` (:func:`midalign.data.load_parallel`).
    ``layers``: ``all``, ``even``, ``middle``, ``"2,4,9"`` or a list of ints (0 = embeddings).
    The options are `midalign probe`'s: ``pool`` ``mean``|``mean-all``, ``margin``
    ``ratio``|``cosine`` with ``k`` neighbours, ``normalize`` ``none``|``center``|``standardize``,
    ``groups`` ``{name: [language, ...]}``. ``batch_tokens`` defaults to 1024 on CPU, 16384 on
    GPU. ``compile``: ``off``, ``on`` or ``auto``, the decoder layers' forward under
    ``torch.compile`` (:mod:`midalign.modeling.compiled`).
    """
    if isinstance(sentences, ParallelCorpus):
        corpus = sentences
    else:
        texts = {lang: list(side) for lang, side in sentences.items()}
        if len({len(side) for side in texts.values()}) > 1:
            counts = ", ".join(f"{lang} {len(side)}" for lang, side in texts.items())
            raise InputError(f"sentences: every language needs as many sentences ({counts})")
        corpus = ParallelCorpus.multiway(texts)
    check_languages(corpus, "sentences")
    check_options(min(len(t) for t in corpus.texts.values()), k, margin)
    chosen = parse_layers(layers, num_layers(model), "layers")
    if batch_tokens is None:
        batch_tokens = default_batch_tokens(model)
    with compiled_layers(model, compile, option="compile") as how:
        embeddings = embed_corpus(
            model, tokenizer, corpus, chosen, pool, batch_tokens, progress, max_tokens
        )
    # [L, P], scored on normalised copies, freed at once; anisotropy and the caller get the raw
    # states
    acc = score_corpus(normalize_states(embeddings, normalize), corpus, k, margin)
    return Probe(
        corpus=corpus,
        layers=chosen,
        num_layers=num_layers(model),
        embeddings=embeddings,
        acc=acc,
        summary=summarize(acc, chosen, corpus, groups=groups),
        anisotropy=anisotropy_by_layer(embeddings, chosen),
        compile=how.as_dict(),
    )
