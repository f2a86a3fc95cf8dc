"""Translation pairs x ↔ English for the alignment loss, and the stream that serves them.

Pairs come from any parallel reader (``load_parallel`` specs: tatoeba, sib200, flores, udhr,
parallel files), from ALMA's training files, or from the hub's parquet Tatoeba
(``sentence-transformers/parallel-sentences-tatoeba``). Pairs with an empty side or more than
one sentence on a side are dropped: a contrastive loss over pooled states should compare
sentences with sentences.

The stream is stateless: micro-batch k draws its language uniformly and then B distinct pairs
of that language from an RNG seeded with (seed, k). So 200 Javanese pairs weigh as much as
10,000 Spanish ones, every rank of a distributed run can compute any micro-batch, and resuming
needs nothing but k.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from midalign.data import load_parallel
from midalign.data.alma import read_alma_pairs
from midalign.data.hub import HubUnreachable, load_split
from midalign.errors import InputError
from midalign.languages import iso639_1, to_flores

log = logging.getLogger(__name__)

ENGLISH = "eng_Latn"
# Tatoeba x-English pairs as parquet, one config per pair (en-de, en-ja, ...; ~50 languages, not
# cy, jv, sw or tl), splits train and dev, columns english and non_english. Layout from the
# repo's file tree (en-de/train-00000-of-00001.parquet, en-de/dev-00000-of-00001.parquet, a
# README with configs, as push_to_hub writes it) and sentence-transformers'
# examples/training/multilingual, which reads it this way.
HF_TATOEBA = "sentence-transformers/parallel-sentences-tatoeba"
# What hf-tatoeba read before: loading scripts, which datasets 4+ no longer runs.
SCRIPT_TATOEBA = ("Helsinki-NLP/tatoeba", "Helsinki-NLP/tatoeba_mt")
Pairs = dict[str, list[tuple[str, str]]]  # language -> [(x, English)]

# A sentence end and more text after it: Latin/Arabic/Devanagari marks need a space before the
# next sentence (so "3.5" is not an end), CJK marks do not. Closing quotes/brackets may follow.
_CLOSE = "\"'”’»)\\]」』"
_SECOND_SENTENCE = re.compile(
    rf"(?:[.!?؟।][{_CLOSE}]*\s+|[。！？][{_CLOSE}]*\s*)[^\s{_CLOSE}.!?。！？؟।]"
)


def is_one_sentence(text: str) -> bool:
    """False for an empty text or one with a sentence end followed by more text."""
    text = text.strip()
    return bool(text) and _SECOND_SENTENCE.search(text) is None


def _hf_tatoeba(source: str, langs: list[str]) -> Pairs:
    """The ``train`` split of :data:`HF_TATOEBA` (or of a repo laid out like it: a hub id, or a
    local copy with its README), one config per language."""
    repo = source or HF_TATOEBA
    if repo in SCRIPT_TATOEBA:
        raise InputError(
            f"hf-tatoeba:{repo} is a loading-script data set, which datasets no longer runs; use "
            f"hf-tatoeba ({HF_TATOEBA}) or tatoeba:DIR (LASER's Tatoeba)"
        )
    local = Path(repo).expanduser()
    if repo.startswith((".", "/", "~")) and not local.is_dir():
        raise InputError(f"hf-tatoeba:{repo}: directory not found")
    if local.is_dir() and not (local / "README.md").is_file():
        raise InputError(
            f"hf-tatoeba:{repo}: no README.md; expected a copy of {HF_TATOEBA} (its README.md "
            "and en-<xx>/train-*.parquet); line-aligned files go in parallel:FILE,FILE"
        )
    pairs: Pairs = {}
    for lang in langs:
        code = iso639_1(lang)
        if code is None:
            raise InputError(
                f"hf-tatoeba: {lang} has no two-letter code, which {HF_TATOEBA}'s configs "
                "(en-<xx>) use; tatoeba:DIR (LASER's Tatoeba) has three-letter ones"
            )
        config = f"en-{code}"
        where = f"hf:{repo} config {config} split train"
        try:
            table = load_split(where, repo, config, "train")
        except HubUnreachable as e:
            raise InputError(f"{e}: hf-tatoeba:DIR or tatoeba:DIR") from None
        except InputError as e:  # most often a language the repo lacks
            raise InputError(f"{e}; tatoeba:DIR (LASER's Tatoeba) has 112 languages") from e
        if not {"english", "non_english"} <= set(table.column_names):
            columns = ", ".join(table.column_names)
            raise InputError(f"{where}: needs columns english, non_english (has {columns})")
        pairs[lang] = list(zip(table["non_english"], table["english"], strict=True))
    return pairs


PIVOTS = ("english", "all")


def load_pairs(
    spec: str,
    langs: list[str],
    split: str = "dev",
    max_pairs: int | None = None,
    pivot: str = "english",
) -> Pairs:
    """Filtered translation pairs per group, in the data's order: with ``pivot`` ``english``,
    (x, English) pairs per language of ``langs``; with ``all``, (x, y) pairs per ordered pair
    of ``langs`` (group ``"x-y"``, e.g. ``deu_Latn-fra_Latn``), from a multiway source."""
    if pivot not in PIVOTS:
        raise InputError(f"data.align_pivot must be one of {', '.join(PIVOTS)}, not {pivot!r}")
    langs = list(dict.fromkeys(to_flores(lang) for lang in langs))
    if pivot == "all":
        raw = _all_pairs(spec, langs, split)
    else:
        raw = _english_pairs(spec, langs, split)
    pairs: Pairs = {}
    for group in raw if pivot == "all" else langs:  # a language without pairs is an error
        items = raw.get(group, [])
        kept = [
            (x.strip(), y.strip()) for x, y in items if is_one_sentence(x) and is_one_sentence(y)
        ]
        if len(kept) < len(items):
            log.info(
                "%s: dropped %d of %d pairs (empty or several sentences)",
                group,
                len(items) - len(kept),
                len(items),
            )
        if len(kept) < 2:
            raise InputError(
                f"--align-langs: {group} has {len(kept)} usable pair(s) in {spec} "
                "(at least 2 are needed for in-batch negatives)"
            )
        pairs[group] = kept[:max_pairs] if max_pairs else kept
    return pairs


def _english_pairs(spec: str, langs: list[str], split: str) -> Pairs:
    """(x, English) pairs by language, unfiltered (a language the data lacks has no entry)."""
    if ENGLISH in langs:
        raise InputError("--align-langs: English is the pivot of every pair; list the others")
    if not langs:
        raise InputError("--align-langs: give at least one language")
    if spec == "hf-tatoeba" or spec.startswith("hf-tatoeba:"):
        return _hf_tatoeba(spec.partition(":")[2], langs)
    if spec.startswith("alma:"):
        # the task's own training pairs, as the paper aligns for translation
        root = Path(spec[len("alma:") :]).expanduser()
        return {lang: read_alma_pairs(root, lang, ENGLISH, "train") for lang in langs}
    corpus = load_parallel(spec, [*langs, ENGLISH], split)
    raw: Pairs = {}
    for src, tgt in corpus.pairs:
        if corpus.lang[tgt] == ENGLISH and corpus.lang[src] != ENGLISH:
            raw[corpus.lang[src]] = list(zip(corpus.texts[src], corpus.texts[tgt], strict=True))
    return raw


def _all_pairs(spec: str, langs: list[str], split: str) -> Pairs:
    """(x, y) pairs for every ordered pair of ``langs`` from a multiway corpus: sentence i of
    every language translates sentence i of the others."""
    if len(langs) < 2:
        raise InputError("--align-langs: align_pivot all pairs languages: give at least two")
    if spec.startswith(("hf-tatoeba", "alma:", "tatoeba:", "parallel:")):
        raise InputError(
            f"data.align_pivot all needs a multiway source (sib200:DIR, flores:DIR, udhr), "
            f"where every language has the same sentences; {spec} pairs each language with "
            "English only"
        )
    corpus = load_parallel(spec, langs, split)
    side = {corpus.lang[s]: s for s in corpus.texts}
    if len({len(corpus.texts[s]) for s in corpus.texts}) != 1:
        raise InputError(f"data.align_pivot all: {spec} is not multiway (sides differ in length)")
    return {
        f"{a}-{b}": list(zip(corpus.texts[side[a]], corpus.texts[side[b]], strict=True))
        for a in langs
        for b in langs
        if a != b
    }


def split_dev(pairs: Pairs, per_lang: int, seed: int) -> tuple[Pairs, Pairs]:
    """Hold out a fixed random sample of ``per_lang`` pairs per language (at most a fifth of a
    language's pairs, and none where fewer than 2 would be held out)."""
    train, dev = {}, {}
    for i, (lang, items) in enumerate(pairs.items()):
        n = min(per_lang, len(items) // 5)
        if n < 2:
            train[lang] = items
            continue
        held = set(np.random.default_rng([seed, 1, i]).choice(len(items), n, replace=False))
        dev[lang] = [p for j, p in enumerate(items) if j in held]
        train[lang] = [p for j, p in enumerate(items) if j not in held]
    return train, dev


def as_pairs(rows: Pairs | Iterable[Mapping[str, str]]) -> Pairs:
    """Translation pairs by language from rows ``{x, y, lang?}`` (a ``datasets.Dataset`` or
    any iterable of mappings; y is the pivot side, English in ``midalign train``), or
    ``midalign``'s own ``{lang: [(x, y), ...]}``. Rows without ``lang`` form one group. Each
    alignment micro-batch draws its pairs from one language, as in ``midalign train``."""
    if isinstance(rows, Mapping):
        return {lang: [(x, y) for x, y in items] for lang, items in rows.items()}
    pairs: Pairs = {}
    for i, row in enumerate(rows):
        if "x" not in row or "y" not in row:
            raise ValueError(f"alignment pair {i} needs the columns x and y, has {sorted(row)}")
        pairs.setdefault(row.get("lang", "all"), []).append((row["x"], row["y"]))
    return pairs


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_length: int
) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the B x sentences, then their B English sides.

    Plain sentences with the tokenizer's own special tokens (BOS), no template, as the probe
    embeds them, so that the trained alignment is the one the probe measures.
    """
    texts = [x for x, _ in pairs] + [y for _, y in pairs]
    enc = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class AlignStream:
    """The infinite alignment stream: ``batch(k)`` is a pure function of (seed, k).

    With ``world`` processes, micro-batch k is one draw of W·B pairs of one language, split in
    W equal slices: rank r trains on slice r. W processes with B pairs each thus see exactly the
    micro-batches one process sees with W·B pairs, and gathered negatives (``align.
    gather_negatives``) give every rank the same denominator as that one process.
    """

    def __init__(
        self, pairs: Pairs, batch_pairs: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        if not pairs:
            raise InputError("no alignment pairs")
        few = {lang: len(items) for lang, items in pairs.items() if len(items) < 2 * world}
        if few:
            raise InputError(
                f"too few alignment pairs for {world} process(es) (each needs at least 2 "
                f"in-batch pairs): {few}"
            )
        self.pairs = pairs
        self.langs = list(pairs)
        self.batch_pairs = batch_pairs
        self.seed = seed
        self.rank, self.world = rank, world

    def batch(self, k: int) -> tuple[str, list[tuple[str, str]]]:
        """Language and this rank's pairs of micro-batch k: a uniform language, then
        W·min(B, n // W) distinct pairs of it (duplicates would be false negatives)."""
        rng = np.random.default_rng([self.seed, 0, k])
        lang = self.langs[int(rng.integers(len(self.langs)))]
        items = self.pairs[lang]
        per_rank = min(self.batch_pairs, len(items) // self.world)
        chosen = rng.choice(len(items), per_rank * self.world, replace=False)
        mine = chosen[self.rank * per_rank : (self.rank + 1) * per_rank]
        return lang, [items[int(j)] for j in mine]


class AlignBatches(torch.utils.data.Dataset):
    """Micro-batches 0..n-1 of a stream, tokenised: the train set of the ``align`` schedule, so
    that the Trainer's own step counting and resume skipping apply to it unchanged.

    With W processes the Trainer deals dataset items to ranks in turn (item i to rank i mod W),
    so the set holds n·W items and item i is this rank's slice of micro-batch i // W.
    """

    def __init__(
        self,
        stream: AlignStream,
        n: int,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> None:
        self.stream, self.n, self.tokenizer, self.max_length = stream, n, tokenizer, max_length

    def __len__(self) -> int:
        return self.n * self.stream.world

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = i // self.stream.world
        return encode_pairs(self.tokenizer, self.stream.batch(k)[1], self.max_length)
