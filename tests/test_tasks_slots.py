"""Slot filling: MASSIVE/xSID readers, the "type: value" target and its parser, MASSIVE-style
span F1 checked against seqeval on hand-built BIO sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_data
from hypothesis import given
from hypothesis import strategies as st
from seqeval.metrics import f1_score

from midalign.errors import InputError
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.base import Example
from midalign.evaluation.tasks.slot_filling import (
    SYSTEM,
    convert_to_bio,
    format_slots,
    parse_slots,
    span_f1,
)
from midalign.evaluation.tasks.slot_readers import parse_annotation, read_conll_slots

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
TASK = get_task("slots")


def _example(text: str, slots: list[tuple[str, str]], lang: str = "eng_Latn") -> Example:
    """An example whose gold spans are the first occurrence of each value."""
    spans = [(t, text.index(v), text.index(v) + len(v)) for t, v in slots]
    return Example("x", lang, lang, text, slots, {"spans": spans})


# --------------------------------------------------------------------------- target and parser

types = st.from_regex(r"[a-z][a-z_/]{0,15}", fullmatch=True)
values = st.text(
    alphabet=st.characters(blacklist_characters=";\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    min_size=1,
    max_size=20,
).filter(lambda v: v == v.strip() and v != "")


@given(st.lists(st.tuples(types, values), max_size=5))
def test_parse_inverts_format(slots: list[tuple[str, str]]) -> None:
    parsed = parse_slots(format_slots(slots))
    assert parsed.value == slots and parsed.ok


def test_paper_targets_and_tolerant_parser() -> None:
    assert format_slots([("time", "five am"), ("date", "this week")]) == (
        "time: five am; date: this week"
    )
    assert format_slots([]) == "None"
    assert parse_slots("  time :five am ;date: this week;\nUser: more").value == [
        ("time", "five am"),
        ("date", "this week"),
    ]
    assert parse_slots("1. music_genre: jazz").value == [("music_genre", "jazz")]
    assert parse_slots("None.") == parse_slots("none")
    assert parse_slots("None.").ok and parse_slots("None.").value == []
    for garbage in ("", "   \n", "I cannot help with that", ": jazz"):
        assert not parse_slots(garbage).ok and parse_slots(garbage).value == []
    partly = parse_slots("time: five am; nonsense")
    assert partly.value == [("time", "five am")] and not partly.ok


# --------------------------------------------------------------------------- scoring


def test_convert_to_bio_merges_runs_like_massive() -> None:
    tags = ["date", "date", "Other", "time", "Other", "date"]
    assert convert_to_bio(tags) == ["B-date", "I-date", "O", "B-time", "O", "B-date"]


def test_span_f1_hand_case_equals_seqeval() -> None:
    wake = _example("wake me up at five am this week", [("time", "five am"), ("date", "this week")])
    play = _example("play jazz", [("music_genre", "jazz")])
    # one of two right in the first; the right words with the wrong type in the second
    scores = span_f1([wake, play], [[("time", "Five AM")], [("genre", "jazz.")]])
    # gold 3 spans, predicted 2, correct 1: P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.4)
    gold = [["O"] * 4 + ["B-time", "I-time", "B-date", "I-date"], ["O", "B-music_genre"]]
    pred = [["O"] * 4 + ["B-time", "I-time", "O", "O"], ["O", "B-genre"]]
    assert f1_score(gold, pred) == pytest.approx(scores["f1"])


def test_span_f1_unmatched_values_and_empty_answers() -> None:
    wake = _example("wake me up at five am this week", [("time", "five am"), ("date", "this week")])
    scores = span_f1([wake], [[("time", "six pm"), ("date", "this week")]])
    assert scores["unmatched_values"] == 1
    assert scores["f1"] == pytest.approx(2 / 3)  # P = 1/1, R = 1/2
    assert span_f1([wake], [[]])["f1"] == 0.0
    # the same value twice tags two different runs, never one run twice
    twice = _example("one and one", [("number", "one")])
    assert span_f1([twice], [[("number", "one"), ("number", "one")]])["precision"] == 0.5


def test_span_f1_japanese_by_characters() -> None:
    ja = _example("今週の午前五時に起こして", [("date", "今週"), ("time", "午前五時")], "jpn_Jpan")
    scores = span_f1([ja], [[("time", "午前 五時")]])  # spaces do not matter by characters
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["precision"] == 1.0


# --------------------------------------------------------------------------- readers


def test_massive_jsonl_reader_and_paper_prompts() -> None:
    examples = TASK.read(f"massive:{FIXTURES / 'massive'}", ["eng_Latn", "deu_Latn"], "test")
    assert [ex.lang for ex in examples] == ["deu_Latn", "deu_Latn", "eng_Latn"]
    de, joke, en = examples
    assert en.text == "wake me up at five am this week"
    assert TASK.target(en) == "time: five am; date: this week"  # Appendix D.2, verbatim
    assert TASK.target(de) == "date: dieser woche; time: fünf uhr"  # Appendix D.2, verbatim
    assert TASK.target(joke) == "None"
    assert TASK.instruction(en) == (SYSTEM, en.text)
    assert "essential for carry out the command" in SYSTEM  # the paper's typo, kept
    system, _ = TASK.instruction(en, zero_shot=True)
    assert "carry out the the command" in system and "coffee_type" in system
    train = TASK.read(str(FIXTURES / "massive"), ["eng_Latn"], "train")
    assert [TASK.target(ex) for ex in train] == ["music_genre: jazz"]


def test_massive_annotation_errors_name_file_and_line() -> None:
    assert parse_annotation("[date : today] [time : now]", "x") == (
        "today now",
        [("date", 0, 5), ("time", 6, 9)],
    )
    with pytest.raises(InputError, match=r"massive_bad\.jsonl:2: '\[' without '\]'"):
        TASK.read(f"massive:{FIXTURES / 'massive_bad.jsonl'}", ["eng_Latn"], "test")
    for bad in ("a ] b", "[time five]", "[a : [b : c]]"):
        with pytest.raises(InputError):
            parse_annotation(bad, "f:1")


def test_massive_missing_locale() -> None:
    with pytest.raises(InputError, match="no examples for fra_Latn"):
        TASK.read(f"massive:{FIXTURES / 'massive'}", ["fra_Latn"], "test")


def test_massive_hub_schema_from_local_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ["1", "2", "3"],
            "locale": ["de-DE", "de-DE", "en-US"],
            "partition": ["test", "train", "test"],
            "scenario": [0, 1, 0],
            "intent": [3, 4, 3],
            "utt": ["spiele jazz", "x", "play jazz"],
            "annot_utt": ["spiele [music_genre : jazz]", "x", "play [music_genre : jazz]"],
        }
    )
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    examples = TASK.read(f"hf:{tmp_path}", ["deu_Latn"], "test")
    assert [(ex.id, ex.text, ex.reference) for ex in examples] == [
        ("1", "spiele jazz", [("music_genre", "jazz")])
    ]


def test_xsid_reader_fixture() -> None:
    examples = TASK.read(f"xsid:{FIXTURES / 'xsid'}", ["de", "zh"], "test")
    de = examples[0]
    assert de.text == "Erinnerung für heute um 4 Uhr hinzufügen"
    assert de.reference == [("datetime", "heute um 4 Uhr")]
    assert TASK.target(examples[2]) == "None"
    zh = examples[-1]
    assert zh.lang == "zho_Hans" and zh.reference == [("weather/attribute", "毛衣")]
    assert de.meta["types"] == ("datetime", "weather/attribute")
    assert "datetime weather/attribute" in TASK.instruction(de, zero_shot=True)[0]


def test_xsid_malformed_line() -> None:
    with pytest.raises(InputError, match=r"xsid_bad\.conll:4: expected 4 tab-separated"):
        read_conll_slots(FIXTURES / "xsid_bad.conll", "deu_Latn")


def test_xsid_shared_data() -> None:
    root = shared_data("xsid")
    examples = TASK.read(f"xsid:{root}", ["de", "ja"], "test")
    by_lang = {
        lang: [ex for ex in examples if ex.lang == lang] for lang in ("deu_Latn", "jpn_Jpan")
    }
    assert len(by_lang["deu_Latn"]) == 500 and len(by_lang["jpn_Jpan"]) == 250
    first = by_lang["deu_Latn"][1]
    assert first.text == "Benötige ich einen Pullover?"
    assert first.reference == [("weather/attribute", "Pullover")]
    # every gold value maps back onto its own utterance: a perfect answer scores 1.0
    for exs in by_lang.values():
        assert span_f1(exs, [ex.reference for ex in exs])["f1"] == pytest.approx(1.0)
