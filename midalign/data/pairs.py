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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from midalign.data import ParallelCorpus, load_parallel
from midalign.data.alma import read_alma_pairs, train_files
from midalign.data.hub import HubUnreachable, load_split
from midalign.data.reading import first_few, is_blank
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
# Where side s (0: x, 1: y) of pair i of a group was read: "file:line", or the data set's row.
Where = Callable[[int, int], str]
Located = dict[str, tuple[list[tuple[str, str]], Where]]  # group -> (pairs as read, their Where)

# A sentence end and more text after it: Latin/Arabic/Devanagari marks need a space before the
# next sentence (so "3.5" is not an end), CJK marks do not. Closing quotes/brackets may follow.
# Groups: the word before the mark, the mark, the first character after.
_CLOSE = "\"'”’»)\\]」』"
_SENTENCE_END = re.compile(
    rf"(\w*)(?:([.!?؟।])[{_CLOSE}]*\s+|([。！？])[{_CLOSE}]*\s*)(?=([^\s{_CLOSE}.!?。！？؟।]))"
)
# Words a period ends without ending the sentence, as they come before a name: "Dr. Miller".
TITLES = frozenset(
    "mr mrs ms mx dr prof st mt jr sr gen col lt sgt capt adm rev hon gov pres sen rep messrs "
    "mme mlle mm hr fr frl sra srta dra sig dott".split()
)


def is_one_sentence(text: str) -> bool:
    """False for an empty text or one with a sentence end followed by more text.

    A mark followed by a lowercase letter ends no sentence (``He said "Good morning!" and
    left.``, ``e.g. this``), nor does a period after a title or a single letter (``Dr. Miller``,
    ``J. K. Rowling``, ``U.S. Army``, ``z. B. Äpfel``)."""
    text = text.strip()
    if is_blank(text):
        return False
    for m in _SENTENCE_END.finditer(text):
        word, mark, after = m.group(1), m.group(2) or m.group(3), m.group(4)
        if after.islower():
            continue
        if mark == "." and (word.lower() in TITLES or (len(word) == 1 and word.isalpha())):
            continue
        return False
    return True


def _hf_tatoeba(source: str, langs: list[str]) -> Located:
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
    pairs: Located = {}
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
        items = list(zip(table["non_english"], table["english"], strict=True))
        pairs[lang] = items, _rows(where, ("non_english", "english"))
    return pairs


PIVOTS = ("english", "all")


def load_pairs(
    spec: str,
    langs: list[str],
    split: str = "dev",
    max_pairs: int | None = None,
    pivot: str = "english",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = 128,
) -> Pairs:
    """Filtered translation pairs per group, in the data's order: with ``pivot`` ``english``,
    (x, English) pairs per language of ``langs``; with ``all``, (x, y) pairs per ordered pair
    of ``langs`` (group ``"x-y"``, e.g. ``deu_Latn-fra_Latn``), from a multiway source.

    Dropped pairs (empty, or several sentences on a side) are counted in a warning naming the
    first few sides that failed (``file:line``). With ``tokenizer``, so are the pairs kept
    whose sentence is longer than ``max_length`` tokens, which :func:`encode_pairs` cuts."""
    if pivot not in PIVOTS:
        raise InputError(f"data.align_pivot must be one of {', '.join(PIVOTS)}, not {pivot!r}")
    langs = list(dict.fromkeys(to_flores(lang) for lang in langs))
    if pivot == "all":
        raw = _all_pairs(spec, langs, split)
    else:
        raw = _english_pairs(spec, langs, split)
    pairs: Pairs = {}
    for group in raw if pivot == "all" else langs:  # a language without pairs is an error
        items, where = raw.get(group, ([], _rows(spec, ("x", "y"))))  # none: the error below
        kept, dropped = [], []
        for i, (x, y) in enumerate(items):
            if not is_one_sentence(x):
                dropped.append(where(i, 0))
            elif not is_one_sentence(y):
                dropped.append(where(i, 1))
            else:
                kept.append(i)
        if dropped:
            log.warning(
                "%s: dropped %d of %d pairs (empty or several sentences): %s",
                group,
                len(dropped),
                len(items),
                first_few(dropped),
            )
        if len(kept) < 2:
            raise InputError(
                f"--align-langs: {group} has {len(kept)} usable pair(s) in {spec} "
                "(at least 2 are needed for in-batch negatives)"
            )
        kept = kept[:max_pairs] if max_pairs else kept
        if tokenizer is not None:
            _warn_long(group, items, kept, where, tokenizer, max_length)
        pairs[group] = [(items[i][0].strip(), items[i][1].strip()) for i in kept]
    return pairs


def _warn_long(
    group: str,
    items: list[tuple[str, str]],
    kept: list[int],
    where: Where,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    option: str = "--align-max-length",
) -> None:
    """Warn of the kept pairs :func:`encode_pairs` will cut (a side over ``max_length``
    tokens, counted as it counts them), naming the first few sentences and their lengths, and
    ``option``, the setting that sets the limit."""
    texts = [items[i][s].strip() for i in kept for s in (0, 1)]  # x, y of each kept pair
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    long = [(k, n) for k, n in enumerate(lengths) if n > max_length]
    if long:
        log.warning(
            "%s: %d of %d pairs have a sentence over %s %d tokens, cut at the end: %s",
            group,
            len({k // 2 for k, _ in long}),
            len(kept),
            option,
            max_length,
            first_few([f"{where(kept[k // 2], k % 2)} ({n} tokens)" for k, n in long]),
        )


def _rows(where: str, sides: tuple[str, str]) -> Where:
    """Pair i of a table read as a whole: its row and column."""
    return lambda i, s: f"{where} row {i + 1} ({sides[s]})"


def _sides(corpus: ParallelCorpus, src: str, tgt: str) -> Where:
    """Pair i of the corpus sides ``src`` and ``tgt``: each side's file and line, or segment."""
    return lambda i, s: corpus.where((src, tgt)[s], i)


def _english_pairs(spec: str, langs: list[str], split: str) -> Located:
    """(x, English) pairs by language, unfiltered (a language the data lacks has no entry).

    Files without language suffixes are read in the order ``--align-langs``, then English."""
    if ENGLISH in langs:
        raise InputError("--align-langs: English is the pivot of every pair; list the others")
    if not langs:
        raise InputError("--align-langs: give at least one language")
    if spec == "hf-tatoeba" or spec.startswith("hf-tatoeba:"):
        return _hf_tatoeba(spec.partition(":")[2], langs)
    if spec.startswith("alma:"):
        # the task's own training pairs, as the paper aligns for translation
        root = Path(spec[len("alma:") :]).expanduser()
        raw: Located = {}
        for lang in langs:
            items = read_alma_pairs(root, lang, ENGLISH, "train")
            files = train_files(root, lang)
            raw[lang] = items, (lambda i, s, files=files: f"{files[s]}:{i + 1}")
        return raw
    corpus = load_parallel(
        spec, [*langs, ENGLISH], split, option="--align-langs (and English, the pivot, last)"
    )
    raw = {}
    for src, tgt in corpus.pairs:
        if corpus.lang[tgt] == ENGLISH and corpus.lang[src] != ENGLISH:
            items = list(zip(corpus.texts[src], corpus.texts[tgt], strict=True))
            raw[corpus.lang[src]] = items, _sides(corpus, src, tgt)
    return raw


def _all_pairs(spec: str, langs: list[str], split: str) -> Located:
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
    corpus = load_parallel(spec, langs, split, option="--align-langs")
    side = {corpus.lang[s]: s for s in corpus.texts}
    if len({len(corpus.texts[s]) for s in corpus.texts}) != 1:
        raise InputError(f"data.align_pivot all: {spec} is not multiway (sides differ in length)")
    return {
        f"{a}-{b}": (
            list(zip(corpus.texts[side[a]], corpus.texts[side[b]], strict=True)),
            _sides(corpus, side[a], side[b]),
        )
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


def warn_long_pairs(
    pairs: Pairs, tokenizer: PreTrainedTokenizerBase, max_length: int, name: str
) -> None:
    """The warning :func:`load_pairs` gives of the pairs :func:`encode_pairs` will cut, for
    pairs handed over in memory (a trainer's ``name``, e.g. ``align_pairs``): a sentence is
    named by its group and its place in the group, the limit by ``align_max_length``."""
    for group, items in pairs.items():

        def where(i: int, side: int, group: str = group) -> str:
            return f"{name}[{group!r}][{i}] ({'xy'[side]})"

        kept = list(range(len(items)))
        _warn_long(group, items, kept, where, tokenizer, max_length, "align_max_length")


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
