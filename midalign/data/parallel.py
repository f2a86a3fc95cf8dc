"""Readers for parallel text in local files: FLoRes-200 folders, SIB-200, Tatoeba, plain files.

Each returns a :class:`ParallelCorpus` whose sides are named by FLoRes code. An empty
``langs`` means every language the data has (the plain-file reader then reads each file's
language from its suffix).
"""

from __future__ import annotations

import re
from pathlib import Path

from midalign.data.corpus import ParallelCorpus
from midalign.data.reading import (
    align_by_id,
    by_language,
    check_same_length,
    invisible_note,
    is_blank,
    read_sentences,
    read_tsv,
    select,
)
from midalign.errors import InputError
from midalign.languages import to_flores

ENGLISH = "eng_Latn"
_TATOEBA_FILE = re.compile(r"tatoeba\.([a-z]+)-eng\.\1")


class LanguageMismatch(InputError):
    """The languages asked for do not fit the files: :func:`midalign.data.load_parallel`
    names the option that gave them (``--langs``, ``--align-langs``) before the message."""


def _existing_dir(path: Path, kind: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{kind}: {path} is not a directory")
    return path


def read_flores_dir(root: Path, langs: list[str], split: str) -> ParallelCorpus:
    """FLoRes-200 release layout, ``ROOT/<split>/<code>.<split>``: line i is sentence i."""
    split_dir = root / split
    if not split_dir.is_dir():
        splits = sorted(p.name for p in _existing_dir(root, "flores").iterdir() if p.is_dir())
        raise InputError(f"flores: {split_dir} not found; splits in {root}: {splits}")
    files = {p.name[: -len(split) - 1]: p for p in sorted(split_dir.glob(f"*.{split}"))}
    paths = select(langs, by_language(files), f"flores: {split_dir}")
    texts = {path: read_sentences(path) for path in paths.values()}
    check_same_length(texts)
    sentences = {lang: texts[path] for lang, path in paths.items()}
    n = len(next(iter(sentences.values())))
    return ParallelCorpus.multiway(
        sentences,
        source=f"flores:{root} ({split})",
        ids=[str(i) for i in range(1, n + 1)],
        files={lang: str(path) for lang, path in paths.items()},
    )


def read_sib200(root: Path, langs: list[str], split: str) -> ParallelCorpus:
    """SIB-200, ``ROOT/<code>/<split>.tsv`` with ``index_id  category  text``, joined on
    index_id (the same id is the same FLoRes sentence in every language)."""
    folders = {p.name: p for p in sorted(_existing_dir(root, "sib200").iterdir()) if p.is_dir()}
    chosen = select(langs, by_language(folders), f"sib200: {root}")
    rows: dict[str, dict[str, str]] = {}
    files: dict[str, Path] = {}
    for lang, folder in chosen.items():
        path = files[lang] = folder / f"{split}.tsv"
        rows[lang] = {}
        for lineno, row in read_tsv(path, ("index_id", "text")):
            if is_blank(row["text"]):
                raise InputError(f"{path}:{lineno}: empty text{invisible_note(row['text'])}")
            if row["index_id"] in rows[lang]:
                raise InputError(f"{path}:{lineno}: index_id {row['index_id']} occurs twice")
            rows[lang][row["index_id"]] = row["text"].strip()
    ids = align_by_id(rows, files)
    return ParallelCorpus.multiway(
        {lang: [rows[lang][i] for i in ids] for lang in rows},
        source=f"sib200:{root} ({split})",
        ids=ids,
    )


def read_tatoeba(root: Path, langs: list[str]) -> ParallelCorpus:
    """LASER's Tatoeba test sets, ``tatoeba.<xxx>-eng.{<xxx>,eng}``: one English side per
    language, scored x→eng and eng→x only (the English sentences differ between languages)."""
    names = {
        m.group(1): p
        for p in sorted(_existing_dir(root, "tatoeba").glob("tatoeba.*-eng.*"))
        if (m := _TATOEBA_FILE.fullmatch(p.name))
    }
    available = by_language(names)
    wanted = [lang for lang in langs if lang != ENGLISH]
    if langs and not wanted:
        raise InputError(
            f"tatoeba: pairs are x↔English only, so ask for at least one language besides "
            f"{ENGLISH}; available in {root}: {', '.join(sorted(available)) or 'none'}"
        )
    texts: dict[str, list[str]] = {}
    lang_of: dict[str, str] = {}
    files: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for lang, x_path in select(wanted, available, f"tatoeba: {root}").items():
        eng_path = x_path.with_suffix(".eng")
        both = {x_path: read_sentences(x_path), eng_path: read_sentences(eng_path)}
        check_same_length(both)
        eng_side = f"{ENGLISH}@{lang}"
        texts[lang], texts[eng_side] = both[x_path], both[eng_path]
        lang_of[lang], lang_of[eng_side] = lang, ENGLISH
        files[lang], files[eng_side] = str(x_path), str(eng_path)
        pairs += [(lang, eng_side), (eng_side, lang)]
    ids = {side: [str(i) for i in range(1, len(t) + 1)] for side, t in texts.items()}
    return ParallelCorpus(texts, lang_of, pairs, source=f"tatoeba:{root}", ids=ids, files=files)


def read_plain(files: list[Path], langs: list[str]) -> ParallelCorpus:
    """Line-aligned files, one per language, named by ``langs`` or by their suffixes.

    A file whose suffix is a language code (``test.de``, ``test.deu_Latn``) is in that
    language. When every file is so named and ``langs`` are those languages (or none are
    given), each file is read as its suffix says, whatever the order of the two lists.
    Otherwise the files take ``langs`` in file order, and a file whose suffix names another
    language than the one at its place is an error: labelled by place alone, files listed in
    another order than their languages would score (or train) German sentences as Japanese.
    """
    resolved = [path.resolve() for path in files]
    for i, path in enumerate(files):
        if resolved[i] in resolved[:i]:
            raise InputError(f"parallel: {path} is given twice; give one file per language")
    named = {path: _suffix_language(path) for path in files}
    if not langs:
        missing = [path for path, lang in named.items() if lang is None]
        if missing:
            raise InputError(
                f"parallel: cannot tell the language of {missing[0]} from its suffix; name it "
                "like test.de or test.deu_Latn, or give the languages"
            )
        langs = []
        for path, lang in named.items():
            if lang in langs:
                other = files[langs.index(lang)]
                raise InputError(f"parallel: {other} and {path} are both {lang} by their suffixes")
            langs.append(lang)
    if len(langs) != len(files):
        raise LanguageMismatch(
            f"parallel: {len(files)} files but {len(langs)} languages ({', '.join(langs)}); "
            "give one language per file, in the same order"
        )
    for path, lang in named.items():
        if lang is not None and lang not in langs:
            raise LanguageMismatch(
                f"parallel: {path} is {lang} by its suffix, not one of {', '.join(langs)}; "
                "give its language or rename the file"
            )
    suffixes = list(named.values())
    if None not in suffixes and set(suffixes) == set(langs):  # every file named by its language
        path_of = {lang: path for path, lang in named.items() if lang is not None}
    else:
        path_of = dict(zip(langs, files, strict=True))
        for lang, path in path_of.items():
            if named[path] not in (None, lang):
                raise LanguageMismatch(
                    f"parallel: {path} is {named[path]} by its suffix but stands where {lang} "
                    "is given; give the files and the languages in the same order"
                )
    texts = {path: read_sentences(path) for path in files}
    check_same_length(texts)
    n = len(texts[files[0]])
    return ParallelCorpus.multiway(
        {lang: texts[path_of[lang]] for lang in langs},
        source="parallel:" + ",".join(map(str, files)),
        ids=[str(i) for i in range(1, n + 1)],
        files={lang: str(path_of[lang]) for lang in langs},
    )


def _suffix_language(path: Path) -> str | None:
    """The FLoRes code a file's suffix names (``.de``, ``.deu_Latn``), or None."""
    try:
        return to_flores(path.suffix[1:]) if path.suffix else None
    except InputError:
        return None
