"""ALMA's human-written translation data as (x, English) pairs.

Read once for the translation task's examples and for the alignment loss's training pairs.
"""

from __future__ import annotations

from pathlib import Path

from midalign.data import sources
from midalign.data.parallel import ENGLISH
from midalign.data.reading import read_json, read_sentences
from midalign.errors import InputError
from midalign.languages import iso639_1

# ALMA's folders without a valid file (isen has train and test only)
_NO_VALID = {"isen": "Icelandic"}


def two_letter(code: str) -> str:
    """The ISO 639-1 code of a FLoRes code, as ALMA and WMT23 name their files."""
    short = iso639_1(code)
    if short is None:
        raise InputError(f"{code}: no two-letter code, which ALMA and WMT23 file names use")
    return short


def read_alma_pairs(root: Path, src: str, tgt: str, split: str) -> list[tuple[str, str]]:
    """(x, English) pairs of the direction ``src``-``tgt`` (FLoRes codes, one of them English).

    ALMA human-written data: ``DIR/<xx>en/train.<xx>-en.{xx,en}`` (line-aligned, split
    ``train``), ``DIR/<xx>en/valid.<xx>-en.json`` (a JSON list of ``{"translation": {xx,
    en}}``, split ``valid``/``dev``; either direction reads it; Icelandic has none) and, split
    ``test``, the WMT test sets ALMA ships one per direction: ``DIR/<xx>en/test.<src>-<tgt>.json``.
    A missing folder is an error naming it, a missing file one naming the direction and the
    split."""
    root = sources.folder("alma", root)
    if ENGLISH not in (src, tgt):
        raise InputError(f"alma:{root}: ALMA pairs every language with English, not {src}-{tgt}")
    other = tgt if src == ENGLISH else src
    xx = two_letter(other)
    s, t = two_letter(src), two_letter(tgt)
    folder = root / f"{xx}en"
    if split == "train":
        files = dict(zip((xx, "en"), train_files(root, other), strict=True))
        texts = {c: read_sentences(_existing(root, p, f"{s}-{t}", split)) for c, p in files.items()}
        if len(texts[xx]) != len(texts["en"]):
            raise InputError(
                f"{files[xx]} has {len(texts[xx])} lines but {files['en']} has "
                f"{len(texts['en'])}; line-aligned files must have the same number of lines"
            )
        return list(zip(texts[xx], texts["en"], strict=True))
    if split in ("valid", "dev", "validation"):
        path = folder / f"valid.{xx}-en.json"
    elif split == "test":
        path = folder / f"test.{s}-{t}.json"
    else:
        raise InputError(f"alma:{root}: split {split!r} (ALMA has train, valid and test)")
    return _read_alma_json(_existing(root, path, f"{s}-{t}", split), xx)


def train_files(root: Path, lang: str) -> tuple[Path, Path]:
    """ALMA's line-aligned training files of ``lang`` and English: (``lang``'s, English's)."""
    xx = two_letter(lang)
    return root / f"{xx}en" / f"train.{xx}-en.{xx}", root / f"{xx}en" / f"train.{xx}-en.en"


def _existing(root: Path, path: Path, direction: str, split: str) -> Path:
    """``path``, or an error naming the direction and the split that need it."""
    if path.is_file():
        return path
    language = _NO_VALID.get(path.parent.name) if path.name.startswith("valid.") else None
    lacks = f" (ALMA has no valid file for {language}: use split train or test)" if language else ""
    raise InputError(f"alma:{root}: {direction} split {split}: no {path}{lacks}")


def _read_alma_json(path: Path, xx: str) -> list[tuple[str, str]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {{'translation': {{...}}}}")
    pairs = []
    for n, row in enumerate(data, 1):
        pair = row.get("translation") if isinstance(row, dict) else None
        if not isinstance(pair, dict) or not all(
            isinstance(pair.get(c), str) and pair[c] for c in (xx, "en")
        ):
            raise InputError(f"{path}: item {n} lacks translation.{xx} or translation.en")
        pairs.append((pair[xx].strip(), pair["en"].strip()))
    return pairs
