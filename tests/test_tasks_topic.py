"""Topic classification: SIB-200 readers (TSV and the hub's parquet layout), the label parser,
accuracy and macro-F1 by hand and against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_data

from midalign.errors import InputError
from midalign.tasks import get_task
from midalign.tasks.topic import LABELS, accuracy_macro_f1, parse_label

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


def test_sib200_hub_layout_from_local_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "deu_Latn").mkdir()
    table = pa.table(
        {"index_id": [5, 6], "category": ["politics", "geography"], "text": ["P", "G"]}
    )
    pq.write_table(table, tmp_path / "deu_Latn" / "validation-00000-of-00001.parquet")
    examples = TASK.read(f"hf:{tmp_path}", ["de"], "dev")
    assert [(ex.id, ex.text, ex.reference) for ex in examples] == [
        ("5", "P", "politics"),
        ("6", "G", "geography"),
    ]


def test_sib200_shared_data() -> None:
    root = shared_data("sib200")
    examples = TASK.read(str(root), ["en", "sw"], "test")
    assert sum(ex.lang == "eng_Latn" for ex in examples) == 204
    assert sum(ex.lang == "swh_Latn" for ex in examples) == 204
    assert {ex.reference for ex in examples} == set(LABELS)
