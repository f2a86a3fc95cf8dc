"""Reading the user's files so that every failure names the file and line to fix.

Shared by all readers: strict UTF-8, line-aligned text, CSV-quoted TSV with a header, and
matching the languages a user asked for against the languages a data set has (each set names
them its own way: ``deu_Latn``, ``cmn_Hans``, ``deu``, ``ara``).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from midalign.errors import InputError
from midalign.languages import to_flores

log = logging.getLogger(__name__)
T = TypeVar("T")
BOM = "\ufeff"


def read_text(path: Path) -> str:
    """The whole file as text; invalid UTF-8 is reported with its line, and so is a NUL byte:
    valid UTF-8, but never in text (a UTF-16 or binary file), and a model given one embeds
    garbage without a word.

    A byte-order mark is dropped: at the start silently, inside the file (files joined with
    ``cat``) with a warning naming its first line. U+FEFF inside text has meant nothing since
    Unicode 3.2 (U+2060 took over its zero-width no-break role), so removing it loses nothing,
    while keeping it gives the sentence after it other tokens and other embeddings."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputError(f"{path}:{line}: NUL byte (UTF-16 or binary?); convert the file to UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x}); convert the file to UTF-8"
        ) from None
    if BOM in text:
        log.warning(
            "%s:%d: %d byte-order mark(s) (U+FEFF) inside the file (files joined?), removed",
            path,
            text.count("\n", 0, text.index(BOM)) + 1,
            text.count(BOM),
        )
        text = text.replace(BOM, "")
    return text


def is_blank(text: str) -> bool:
    """True for a text with nothing to read: whitespace and invisible format characters only
    (Unicode category Cf: zero-width space U+200B, joiners, direction marks, word joiner).
    ``str.strip`` keeps these, so a line of U+200B would pass for a sentence."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def invisible_note(text: str) -> str:
    """`` (only invisible characters U+200B, …)`` for a blank ``text`` that is not plain
    whitespace, ``""`` otherwise: the end of an "empty line" message."""
    invisible = dict.fromkeys(f"U+{ord(c):04X}" for c in text if not c.isspace())
    return f" (only invisible characters {', '.join(invisible)})" if invisible else ""


# PyYAML's scanner takes time quadratic in the depth of unclosed flow brackets ("[" * 2000
# takes 2 s before it hits the recursion limit), so a depth no config has is refused up front.
MAX_YAML_DEPTH = 64
_FLOW = re.compile(r"[\[\]{}]")
_FLOW_DEPTH = {"[": 1, "{": 1, "]": -1, "}": -1}


class _UniqueKeys(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping. YAML leaves it open
    and PyYAML keeps the last, so a recipe's second ``systems:`` or a config's second
    ``align:`` would silently replace the first (an aligned run turned into SFT). Merge keys
    (``<<``) still override as YAML means them."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's value through ``yaml.safe_load``: plain data only, so a ``!!python/...``
    tag is an error, never code that runs; a key given twice in one mapping is an error too.
    Every failure names the file (and line)."""
    text = read_text(path)
    depth = max(itertools.accumulate(_FLOW_DEPTH[c] for c in _FLOW.findall(text)), default=0)
    if depth > MAX_YAML_DEPTH:
        raise InputError(f"{path}: YAML nested too deeply ({depth} > {MAX_YAML_DEPTH} levels)")
    try:
        loader = _UniqueKeys(text)  # yaml.safe_load's steps, with the duplicate check
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            line = f":{mark.line + 1}"
        elif isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
            line = f":{text.count(chr(10), 0, e.position) + 1}"
        else:
            line = ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise InputError(f"{path}{line}: not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None


def parse_json(text: str, where: str, lines: bool = True) -> Any:
    """``json.loads`` whose every failure is an InputError naming ``where`` (and the line when
    ``lines``): bad syntax, nesting deeper than the interpreter recurses, an integer of over
    4300 digits (which Python refuses to convert)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"{where}:{e.lineno}" if lines else where
        raise InputError(f"{at}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    except ValueError:
        raise InputError(f"{where}: a JSON number has more than 4300 digits") from None


def read_json(path: Path, option: str | None = None) -> Any:
    """A JSON file's value; errors name the file (after ``option``, e.g. ``--scores``)."""
    return parse_json(read_text(path), f"{option}: {path}" if option else str(path))


def split_lines(text: str) -> list[str]:
    """Lines of a line-aligned file: split on ``\\n`` only (``str.splitlines`` also splits on
    U+2028 and friends, which occur inside sentences and would shift the alignment)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_sentences(path: Path) -> list[str]:
    """One sentence per line; an empty line is an error, since it would pair with a sentence,
    and so is an empty file."""
    sentences = []
    for lineno, line in enumerate(split_lines(read_text(path)), 1):
        if is_blank(line):
            raise InputError(
                f"{path}:{lineno}: empty line{invisible_note(line)}; every line must hold a "
                "sentence"
            )
        sentences.append(line.strip())
    if not sentences:
        raise InputError(f"{path}: empty file")
    return sentences


def jsonl_rows(path: Path) -> Iterator[tuple[str, int, object]]:
    """``(where, line number, parsed value)`` of every non-blank line of a jsonl file; a line
    that is not JSON is an error naming ``file:line``, and so is a file without any."""
    lines = split_lines(read_text(path))
    if not any(line.strip() for line in lines):
        raise InputError(f"{path}: empty file")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        yield where, lineno, parse_json(line, where, lines=False)


def conll_sentences(path: Path) -> Iterator[tuple[dict[str, str], list[tuple[int, list[str]]]]]:
    """Sentences of a CoNLL-style file (UNER IOB2, xSID): each sentence's ``# key = value``
    headers and its token lines as (line number, tab-separated fields). A blank line, or a header
    after token lines, ends a sentence."""
    header: dict[str, str] = {}
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(split_lines(read_text(path)), 1):
        if not line.strip() or (line.startswith("#") and rows):
            if rows:
                yield header, rows
            header, rows = {}, []
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if sep:
                header[key.strip()] = value.strip()
        elif line.strip():
            rows.append((lineno, line.split("\t")))
    if rows:
        yield header, rows


def read_tsv(path: Path, columns: Iterable[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file with a header that must name ``columns``, each with the line
    it starts on.

    Fields are CSV-quoted as Python's ``csv`` and pandas write them with a tab delimiter (the
    ``excel-tab`` dialect): a field holding a quote, a tab or a line break is written ``"…"``
    with its own quotes doubled, so ``"He said ""yes""."`` reads ``He said "yes".``; a quote
    anywhere but a field's start is text. SIB-200 is such a file (pandas ``to_csv``), and 4 %
    of its rows are quoted.
    """
    rows: list[tuple[int, dict[str, str]]] = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""), "excel-tab", strict=True)
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if header is None:
                header = fields
                missing = [c for c in columns if c not in header]
                if missing:
                    raise InputError(
                        f"{path}:1: header lacks column(s) {', '.join(missing)} (has {header})"
                    )
            elif not fields:
                raise InputError(f"{path}:{start}: empty line")
            elif len(fields) != len(header):
                raise InputError(
                    f"{path}:{start}: {len(fields)} tab-separated fields, header has {len(header)}"
                )
            else:
                rows.append((start, dict(zip(header, fields, strict=True))))
            start = reader.line_num + 1
    except csv.Error as e:
        problem = str(e).replace("\t", "\\t")  # csv names the tab it expected as a raw tab
        raise InputError(
            f"{path}:{start}: not valid TSV ({problem}); a field that starts with a quote must end "
            'with one, and the quotes inside it must be doubled ("")'
        ) from None
    if header is None:
        raise InputError(f"{path}: empty file (expected a header line)")
    return rows


def check_same_length(texts: Mapping[Path, list[str]]) -> None:
    """Line-aligned files must agree on their number of lines, or the pairing is meaningless."""
    (first, first_lines), *rest = texts.items()
    for path, lines in rest:
        if len(lines) != len(first_lines):
            raise InputError(
                f"{first} has {len(first_lines)} lines but {path} has {len(lines)}; "
                "line-aligned files must have the same number of lines"
            )


def by_language(names: Mapping[str, T]) -> dict[str, T]:
    """Key a data set's items by FLoRes code, given each item's own language name.

    Names that are not language codes are skipped; when two names mean the same language, the
    one spelled exactly as the FLoRes code wins.
    """
    found: dict[str, T] = {}
    for name, item in names.items():
        try:
            code = to_flores(name)
        except InputError:
            continue
        if code not in found or name == code:
            found[code] = item
    return found


def select(langs: list[str], available: Mapping[str, T], where: str) -> dict[str, T]:
    """The requested languages' items, in request order (all of them if none is requested)."""
    if not langs:
        if not available:
            raise InputError(f"{where}: no data found")
        return {code: available[code] for code in sorted(available)}
    missing = [lang for lang in langs if lang not in available]
    if missing:
        listed = ", ".join(sorted(available)) or "none"
        raise InputError(f"{where}: no {', '.join(missing)}; available: {listed}")
    return {lang: available[lang] for lang in langs}


def align_by_id(rows: Mapping[str, dict[str, str]], where: Mapping[str, object]) -> list[str]:
    """Ids present in every language, in the first language's order.

    ``rows`` maps language -> {id: text}; ``where`` maps language -> its file. Data sets keyed
    by id may legitimately miss some sentences in some languages, and the rest stays usable;
    the warning names the file that lacks a sentence (the one to fix, if it is a mistake) and
    its ids, and says that the other languages leave that sentence out too.
    """
    langs = list(rows)
    common = set.intersection(*(set(r) for r in rows.values()))
    every = dict.fromkeys(i for r in rows.values() for i in r)  # first-seen order
    for lang in langs:
        lacking = [i for i in every if i not in rows[lang]]
        if lacking:
            log.warning(
                "%s: lacks %d sentence(s) that other languages have (id %s), left out of "
                "every language",
                where[lang],
                len(lacking),
                first_few(lacking),
            )
    return [i for i in rows[langs[0]] if i in common]


def first_few(items: list[str], n: int = 5) -> str:
    """The first ``n`` of ``items``, comma-separated, for a message about many."""
    more = f", … ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
