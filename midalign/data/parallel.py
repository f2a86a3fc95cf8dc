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
    read_sentences,
    read_tsv,
    select,
)
from midalign.errors import InputError
from midalign.languages import to_flores

ENGLISH = "eng_Latn"
_TATOEBA_FILE = re.compile(r"tatoeba\.([a-z]+)-eng\.\1")


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
            if not row["text"].strip():
                raise InputError(f"{path}:{lineno}: empty text")
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
    """Line-aligned files, one per language; languages given in file order, or read from the
    suffix (``test.de``, ``test.deu_Latn``) when none are given."""
    if langs and len(langs) != len(files):
        raise InputError(
            f"parallel: {len(files)} files but {len(langs)} languages ({', '.join(langs)}); "
            "give one language per file, in the same order"
        )
    if not langs:
        langs = []
        for path in files:
            try:
                langs.append(to_flores(path.suffix[1:]))
            except InputError:
                raise InputError(
                    f"parallel: cannot tell the language of {path} from its suffix; name it "
                    "like test.de or test.deu_Latn, or give the languages"
                ) from None
    if len(set(langs)) != len(langs):
        raise InputError(f"parallel: a language occurs twice in {', '.join(langs)}")
    texts = {path: read_sentences(path) for path in files}
    check_same_length(texts)
    n = len(texts[files[0]])
    return ParallelCorpus.multiway(
        {lang: texts[path] for lang, path in zip(langs, files, strict=True)},
        source="parallel:" + ",".join(map(str, files)),
        ids=[str(i) for i in range(1, n + 1)],
        files={lang: str(path) for lang, path in zip(langs, files, strict=True)},
    )
