"""Topic classification: SIB-200 readers (TSV and the hub's parquet layout), the label parser,
accuracy and macro-F1 by hand and against scikit-learn, and ``limit``'s sample of a split
sorted by label."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_data

from midalign.errors import InputError
from midalign.evaluation.tasks import Example, get_task
from midalign.evaluation.tasks.base import limit_per_key, warn_one_reference
from midalign.evaluation.tasks.topic import LABELS, accuracy_macro_f1, parse_label
from midalign.languages import PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
TASK = get_task("topic")


def test_parse_label() -> None:
    assert parse_label("sports").value == "sports"
    assert parse_label(' "Travel."\nUser: more').value == "travel"
    assert parse_label("science/technology, because").value == "science/technology"
    assert parse_label("**Health**").value == "health"
    for garbage in ("", "sport", "I think it is about food", "politicsandmore"):
        parsed = parse_label(garbage)
        assert not parsed.ok and parsed.value is None


def test_accuracy_and_macro_f1_by_hand_and_sklearn() -> None:
    refs = ["travel", "travel", "sports", "health"]
    preds = ["travel", "sports", "sports", None]  # None: an unparseable answer
    scores = accuracy_macro_f1(refs, preds)
    # accuracy 2/4; F1 travel 2/3, sports 2/3, health 0 → macro (4/3)/3 = 4/9
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["macro_f1"] == pytest.approx(4 / 9)
    sklearn = pytest.importorskip("sklearn.metrics")
    as_str = [p or "none" for p in preds]
    present = [lab for lab in LABELS if lab in refs or lab in preds]
    expected = sklearn.f1_score(refs, as_str, labels=present, average="macro", zero_division=0)
    assert scores["macro_f1"] == pytest.approx(expected)


def test_sib200_tsv_reader_and_prompt() -> None:
    examples = TASK.read(f"sib200:{FIXTURES / 'sib200'}", ["de", "ja"], "test")
    assert [(ex.lang, ex.id, ex.reference) for ex in examples] == [
        ("deu_Latn", "3", "travel"),
        ("deu_Latn", "7", "sports"),
        ("deu_Latn", "9", "health"),
        ("jpn_Jpan", "3", "travel"),
        ("jpn_Jpan", "7", "sports"),
    ]
    system, prompt = TASK.instruction(examples[0])
    assert prompt == "Nimm den Nachtzug."
    assert all(label in system for label in LABELS)
    assert TASK.target(examples[0]) == "travel"
    with pytest.raises(InputError, match="no swh_Latn"):
        TASK.read(f"sib200:{FIXTURES / 'sib200'}", ["sw"], "test")


def test_sib200_bad_category(tmp_path: Path) -> None:
    (tmp_path / "deu_Latn").mkdir()
    (tmp_path / "deu_Latn" / "test.tsv").write_text(
        "index_id\tcategory\ttext\n1\ttravel\tA.\n2\tcooking\tB.\n", encoding="utf-8"
    )
    with pytest.raises(InputError, match=r"test\.tsv:3: category 'cooking'"):
        TASK.read(f"sib200:{tmp_path}", ["de"], "test")


def test_sib200_shared_data() -> None:
    root = shared_data("sib200")
    examples = TASK.read(str(root), ["en", "sw"], "test")
    assert sum(ex.lang == "eng_Latn" for ex in examples) == 204
    assert sum(ex.lang == "swh_Latn" for ex in examples) == 204
    assert {ex.reference for ex in examples} == set(LABELS)


def test_sib200_quoted_row_reads_as_the_sentence() -> None:
    (ex,) = [e for e in TASK.read(str(shared_data("sib200")), ["en"], "test") if e.id == "61"]
    assert ex.text == (
        'During his 2 hour speech he stated that "Today Apple is going to reinvent the phone, '
        'We are going to make history today".'
    )


def _examples(keys: dict[str, list[str]]) -> list[Example]:
    return [
        Example(id=i, lang=key, key=key, text=f"{key} {i}", reference="travel")
        for key, ids in keys.items()
        for i in ids
    ]


def test_limit_keeps_a_seeded_sample_of_each_key_in_file_order() -> None:
    ids = [str(i) for i in range(1, 41)]
    examples = _examples({"a": ids, "b": ids[::-1], "c": ids[:5]})
    kept = limit_per_key(examples, 6)
    by_key = {k: [ex.id for ex in kept if ex.key == k] for k in "abc"}
    # the SHA-256 of "0:<id>" ranks 15, 36, 20, 25, 18, 7 lowest of the ids 1-40
    assert by_key == {
        "a": ["7", "15", "18", "20", "25", "36"],  # the file's order
        "b": ["36", "25", "20", "18", "15", "7"],  # the same ids, in this key's file order
        "c": ["1", "2", "3", "4", "5"],  # fewer than the limit: all of them
    }
    assert limit_per_key(examples, 6) == kept
    assert [ex.id for ex in limit_per_key(examples, 3) if ex.key == "a"] == ["15", "20", "36"]
    assert limit_per_key(examples, 40) == examples  # limit ≥ size keeps everything, in order
    assert limit_per_key(examples, None) == examples


def test_limit_on_sib200_test_spreads_over_the_labels() -> None:
    """SIB-200's test split is sorted by category: in every language its first 24 rows are
    all science/technology. ``limit: 24`` (recipes/cpu_topic.yaml) samples all 7 topics, the
    same sentences in every language."""
    root = str(shared_data("sib200"))
    langs = PRESETS["paper35"]
    full = TASK.read(root, langs, "test")
    kept = TASK.read(root, langs, "test", limit=24)
    assert len(kept) == 35 * 24
    by_lang: dict[str, list[Example]] = {}
    for ex in kept:
        by_lang.setdefault(ex.lang, []).append(ex)
    for lang in by_lang:
        first = [ex.reference for ex in full if ex.lang == lang][:24]
        assert set(first) == {"science/technology"}
    ids = {lang: [ex.id for ex in exs] for lang, exs in by_lang.items()}
    assert len(ids) == 35 and all(v == ids["eng_Latn"] for v in ids.values())
    assert all(len({ex.reference for ex in exs}) > 1 for exs in by_lang.values())
    assert Counter(ex.reference for ex in by_lang["eng_Latn"]) == {
        "science/technology": 9,
        "travel": 4,
        "entertainment": 4,
        "politics": 3,
        "sports": 2,
        "health": 1,
        "geography": 1,
    }
    eng = [ex for ex in full if ex.lang == "eng_Latn"]
    positions = [eng.index(ex) for ex in by_lang["eng_Latn"]]
    assert positions == sorted(positions) and positions[-1] == 190  # file order, to the end
    assert TASK.read(root, langs, "test", limit=24) == kept
    assert TASK.read(root, ["en"], "test", limit=204) == eng


def test_one_label_selection_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "deu_Latn").mkdir()
    (tmp_path / "deu_Latn" / "test.tsv").write_text(
        "index_id\tcategory\ttext\n1\tsports\tA.\n2\tsports\tB.\n3\tsports\tC.\n", encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING, logger="midalign.evaluation.tasks.base"):
        TASK.read(f"sib200:{tmp_path}", ["de"], "test")
    (record,) = caplog.records
    assert record.getMessage() == (
        f"sib200:{tmp_path} (test): all 3 deu_Latn examples have the reference 'sports'; "
        "their score measures only how often a model answers that"
    )
    caplog.clear()
    warn_one_reference(TASK.read(str(shared_data("sib200")), ["en", "de"], "test")[:24], "x")
    assert [r.getMessage() for r in caplog.records] == [
        "x: all 24 eng_Latn examples have the reference 'science/technology'; their score "
        "measures only how often a model answers that"
    ]
    caplog.clear()
    TASK.read(str(shared_data("sib200")), ["en", "de"], "test", limit=24)
    TASK.read(f"sib200:{tmp_path}", ["de"], "test", limit=1)  # one example is no selection
    assert caplog.records == []
