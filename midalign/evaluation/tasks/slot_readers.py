"""Slot filling's data sets as examples: MASSIVE 1.0 jsonl, the hub's MASSIVE, xSID CoNLL.

MASSIVE's ``annot_utt`` marks slots as ``[type : value]`` (one jsonl file per locale); the hub's
``AmazonScience/massive`` is read from its Parquet conversion (or a local parquet/jsonl of its
schema); xSID tags tokens in BIO. Every example keeps its slot spans in characters
(``meta["spans"]``, which scoring tags tokens from) and the slot types its zero-shot prompt
lists (``meta["types"]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.data.hub import load_hf_table, load_split
from midalign.data.reading import by_language, conll_sentences, jsonl_rows, select
from midalign.data.sources import Reader, folder, folder_with, is_hub_id
from midalign.errors import InputError
from midalign.evaluation.tasks.base import Example
from midalign.languages import to_flores

# MASSIVE's slot types, as the paper's zero-shot prompt lists them (Appendix D.2).
MASSIVE_TYPES = (
    "transport_descriptor house_place music_album sport_type playlist_name movie_name song_name "
    "place_name radio_name cooking_type weather_descriptor person email_folder business_type "
    "audiobook_author transport_type general_frequency meal_type game_name device_type "
    "transport_name time_zone joke_type drink_type email_address food_type date relation "
    "currency_name ingredient player_setting movie_type definition_word game_type list_name "
    "artist_name personal_info audiobook_name timeofday transport_agency media_type podcast_name "
    "coffee_type business_name news_topic app_name podcast_descriptor color_type music_genre "
    "event_name time change_amount alarm_type order_type music_descriptor"
).split()

# The 52 MASSIVE locales (hub configs and file names; ca-ES since MASSIVE 1.1).
MASSIVE_LOCALES = (
    "af-ZA am-ET ar-SA az-AZ bn-BD ca-ES cy-GB da-DK de-DE el-GR en-US es-ES fa-IR fi-FI fr-FR "
    "he-IL hi-IN hu-HU hy-AM id-ID is-IS it-IT ja-JP jv-ID ka-GE km-KH kn-IN ko-KR lv-LV ml-IN "
    "mn-MN ms-MY my-MM nb-NO nl-NL pl-PL pt-PT ro-RO ru-RU sl-SL sq-AL sv-SE sw-KE ta-IN te-IN "
    "th-TH tl-PH tr-TR ur-PK vi-VN zh-CN zh-TW"
).split()

MASSIVE_SPLITS = {
    "dev": "dev",
    "validation": "dev",
    "valid": "dev",
    "train": "train",
    "test": "test",
}
HUB_SPLITS = {"dev": "validation", "valid": "validation"}
XSID_SPLITS = {"dev": "valid", "validation": "valid"}


def parse_annotation(annot: str, where: str) -> tuple[str, list[tuple[str, int, int]]]:
    """MASSIVE's ``annot_utt`` (``wake me up at [time : five am]``) → the plain utterance and
    its slot spans (type, start, end) in characters."""
    text, spans, i = [], [], 0
    length = 0
    while i < len(annot):
        open_ = annot.find("[", i)
        if open_ < 0:
            rest = annot[i:]
            if "]" in rest:
                raise InputError(f"{where}: ']' without '[' in annot_utt {annot!r}")
            text.append(rest)
            break
        before = annot[i:open_]
        if "]" in before:
            raise InputError(f"{where}: ']' without '[' in annot_utt {annot!r}")
        text.append(before)
        length += len(before)
        close = annot.find("]", open_)
        nested = annot.find("[", open_ + 1)
        if close < 0 or 0 <= nested < close:
            raise InputError(f"{where}: '[' without ']' in annot_utt {annot!r}")
        type_, sep, value = annot[open_ + 1 : close].partition(":")
        type_, value = type_.strip(), value.strip()
        if not sep or not type_ or not value:
            raise InputError(
                f"{where}: slot {annot[open_ : close + 1]!r} is not '[type : value]' in {annot!r}"
            )
        spans.append((type_, length, length + len(value)))
        text.append(value)
        length += len(value)
        i = close + 1
    return "".join(text), spans


def _locale_lang(locale: str) -> str:
    """MASSIVE locale → FLoRes code (zh-TW is Traditional Chinese)."""
    lang, _, region = locale.partition("-")
    if lang == "zh" and region == "TW":
        return "zho_Hant"
    return to_flores(lang)


def _massive_example(row: dict[str, Any], where: str, lang: str, n: int) -> Example:
    annot = row.get("annot_utt")
    if not isinstance(annot, str):
        raise InputError(f"{where}: no annot_utt")
    text, spans = parse_annotation(annot, where)
    if not text.strip():
        raise InputError(f"{where}: empty utterance")
    slots = [(t, text[a:b]) for t, a, b in spans]
    return Example(
        id=str(row.get("id", n)),
        lang=lang,
        key=lang,
        text=text,
        reference=slots,
        meta={"spans": spans, "types": MASSIVE_TYPES},
    )


def read_massive_jsonl(paths: Sequence[Path], langs: Sequence[str], split: str) -> list[Example]:
    """MASSIVE 1.0 jsonl (``data/<locale>.jsonl``; rows with ``locale``, ``partition``,
    ``annot_utt``): the rows of ``split`` in ``langs``."""
    part = MASSIVE_SPLITS.get(split, split)
    examples = []
    for path in paths:
        for where, lineno, row in jsonl_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("locale"), str):
                raise InputError(f"{where}: expected an object with 'locale' and 'annot_utt'")
            if row.get("partition", part) != part:
                continue
            try:
                lang = _locale_lang(row["locale"])
            except InputError:
                continue
            if langs and lang not in langs:
                continue
            examples.append(_massive_example(row, where, lang, lineno))
    return examples


def read_massive(source: str, langs: Sequence[str], split: str) -> list[Example]:
    """MASSIVE 1.0 jsonl: one file, or a folder of them (``<locale>.jsonl``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"massive:{path}: not found")
    if not files:
        raise InputError(f"massive:{path}: no .jsonl files")
    return read_massive_jsonl(files, langs, split)


def read_massive_table(source: str, langs: Sequence[str], split: str) -> list[Example]:
    """The hub's ``AmazonScience/massive`` or a local copy of its Parquet conversion, or a local
    parquet/jsonl file or folder of the same schema (rows with ``locale``, ``annot_utt``,
    optionally ``partition``).

    The repo is a loading script (``massive.py``, which downloads MASSIVE 1.0's tarball), which
    ``datasets`` no longer runs; the hub's Parquet conversion of it (branch
    ``refs/convert/parquet``: ``<locale>/<split>/0000.parquet``, one folder per locale such as
    ``de-DE``, splits ``train``, ``validation``, ``test``; the script's columns ``id``,
    ``locale``, ``partition``, ``scenario``, ``intent``, ``utt``, ``annot_utt``, ``worker_id``,
    ``slot_method``, ``judgments``; seen in the repo's file tree and script) is read instead."""
    if not langs:
        raise InputError(f"{source}: give --langs (the hub has one config per locale)")
    local = Path(source).expanduser()
    tables = []
    export_copy = local.is_dir() and any((local / loc).is_dir() for loc in MASSIVE_LOCALES)
    if local.exists() and not export_copy:
        files = sorted(local.rglob("*.parquet")) if local.is_dir() else [local]
        if not files:
            raise InputError(f"{local}: no .parquet files")
        builder = "parquet" if files[0].suffix == ".parquet" else "json"
        table = load_hf_table(
            str(local), builder, data_files=[str(f) for f in files], split="train"
        )
        tables.append((str(local), table, True))
    else:
        locales = {_locale_lang(loc): loc for loc in MASSIVE_LOCALES}
        missing = [lang for lang in langs if lang not in locales]
        if missing:
            raise InputError(f"{source}: no MASSIVE locale for {', '.join(missing)}")
        for lang in langs:
            hub_split = HUB_SPLITS.get(split, split)
            where = f"hf:{source} config {locales[lang]} split {hub_split}"
            table = load_split(where, source, locales[lang], hub_split, export=True)
            tables.append((where, table, False))
    part = MASSIVE_SPLITS.get(split, split)
    examples = []
    for where, table, filter_split in tables:
        for n, row in enumerate(table, 1):
            if filter_split and row.get("partition", part) != part:
                continue
            lang = _locale_lang(str(row.get("locale", "")))
            if lang in langs:
                examples.append(_massive_example(row, f"{where} row {n}", lang, n))
    return examples


def _token_offsets(text: str, tokens: Sequence[str]) -> list[tuple[int, int]] | None:
    """Where each token sits in ``text``, searched left to right; None if one is missing."""
    spans, at = [], 0
    for token in tokens:
        start = text.find(token, at)
        if start < 0:
            return None
        spans.append((start, start + len(token)))
        at = start + len(token)
    return spans


def read_conll_slots(path: Path, lang: str) -> list[Example]:
    """xSID CoNLL: ``# text = ...`` and ``# intent = ...`` headers, then ``idx token intent
    slot`` per line (tab-separated), slots in BIO. An ``I-`` tag after ``O`` or after another
    type opens a new span, as conlleval reads it."""
    examples: list[Example] = []
    for header, lines in conll_sentences(path):
        rows: list[tuple[int, str, str]] = []
        for lineno, fields in lines:
            if len(fields) != 4 or not fields[1] or not fields[3]:
                line = "\t".join(fields)
                raise InputError(
                    f"{path}:{lineno}: expected 4 tab-separated fields (index, token, intent, "
                    f"BIO slot), got {len(fields)}: {line!r}"
                )
            tag = fields[3]
            if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag):
                raise InputError(f"{path}:{lineno}: slot tag {tag!r} is not O, B-type or I-type")
            rows.append((lineno, fields[1], tag))
        examples.append(_conll_example(path, lang, header, rows, len(examples) + 1))
    return examples


def _conll_example(
    path: Path, lang: str, header: dict[str, str], rows: list[tuple[int, str, str]], n: int
) -> Example:
    tokens = [token for _, token, _ in rows]
    text = header.get("text") or " ".join(tokens)
    offsets = _token_offsets(text, tokens)
    if offsets is None:  # tokens that are not spelled as in the text: score on the tokens
        text = " ".join(tokens)
        offsets = _token_offsets(text, tokens)
        assert offsets is not None
    spans: list[tuple[str, int, int]] = []
    prev = "O"
    for (_, _, tag), (start, end) in zip(rows, offsets, strict=True):
        if tag == "O":
            prev = tag
            continue
        bio, type_ = tag[0], tag[2:]
        if bio == "I" and prev != "O" and prev[2:] == type_:
            spans[-1] = (type_, spans[-1][1], end)
        else:
            spans.append((type_, start, end))
        prev = tag
    slots = [(t, text[a:b]) for t, a, b in spans]
    return Example(
        id=header.get("id", str(n)),
        lang=lang,
        key=lang,
        text=text,
        reference=slots,
        meta={"spans": spans, "line": rows[0][0]},
    )


def read_xsid(root: str | Path, langs: Sequence[str], split: str) -> list[Example]:
    """xSID 0.5: ``DIR/<lang>.<split>.conll`` (splits ``valid``, ``test``); the zero-shot
    prompt lists the slot types found in the files read."""
    root = folder("xsid", root)
    split = XSID_SPLITS.get(split, split)
    files = {p.name[: -len(f".{split}.conll")]: p for p in sorted(root.glob(f"*.{split}.conll"))}
    if not files:
        raise InputError(f"xsid:{root}: no <lang>.{split}.conll files")
    chosen = select(list(langs), by_language(files), f"xsid:{root} ({split})")
    examples = [ex for lang, path in chosen.items() for ex in read_conll_slots(path, lang)]
    types = tuple(sorted({t for ex in examples for t, _ in ex.reference}))
    return [
        Example(ex.id, ex.lang, ex.key, ex.text, ex.reference, {**ex.meta, "types": types})
        for ex in examples
    ]


READERS: dict[str, Reader[list[Example]]] = {  # format name -> reader, sniffed in this order
    "xsid": Reader(read_xsid, "xsid:DIR (xSID <lang>.<split>.conll)", folder_with("*.conll")),
    "massive": Reader(
        read_massive,
        "massive:DIR or massive:FILE.jsonl (MASSIVE 1.0 jsonl)",
        lambda s, path: path.is_dir() or path.suffix == ".jsonl",
    ),
    "hf": Reader(
        read_massive_table,
        "hf:AmazonScience/massive, a hub id, or hf:FILE/DIR (parquet of the hub schema)",
        lambda s, path: path.suffix == ".parquet" or is_hub_id(s),
    ),
}
