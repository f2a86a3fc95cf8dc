"""JSON NER: UNER IOB2 and aya readers, the JSON target and its forgiving parser, micro-F1 over
(type, text) tuples on a hand-counted case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data
from hypothesis import given
from hypothesis import strategies as st

from midalign.errors import InputError
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.json_ner import (
    EXAMPLE_RESULT,
    TYPES,
    entity_f1,
    format_entities,
    json_complete,
    parse_entities,
    read_iob2,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
TASK = get_task("ner")

entities = st.lists(
    st.tuples(
        st.sampled_from(TYPES),
        st.text(max_size=20),
        st.integers(0, 500),
        st.integers(0, 500),
    ),
    max_size=5,
)


@given(entities)
def test_parse_inverts_format(ents: list[tuple[str, str, int, int]]) -> None:
    text = format_entities(ents)
    parsed = parse_entities(text)
    assert parsed.ok and parsed.value == ents
    assert json_complete(text) and not json_complete(text[:-1])


def test_paper_example_and_prompt() -> None:
    assert EXAMPLE_RESULT == (
        '{"Results": [{"TypeName": "LOC", "Text": "Iguazu", "Start": 22, "End": 28}]}'
    )
    assert "Where in the world is Iguazu?"[22:28] == "Iguazu"
    ex = TASK.read(f"uner:{FIXTURES / 'uner'}", ["da"], "test")[0]
    system, prompt = TASK.instruction(ex)
    assert system is None
    assert prompt.startswith("Please identify all the named entities mentioned in the input")
    assert prompt.endswith("what is the output result? " + ex.text)


def test_parser_survives_broken_output() -> None:
    ok = '{"Results": [{"TypeName": "PER", "Text": "Ole", "Start": 0, "End": 3}]}'
    assert parse_entities(ok + " and some chatter").value == [("PER", "Ole", 0, 3)]
    no_braces = '"Results": [{"TypeName": "LOC", "Text": "Oslo", "Start": 4, "End": 8}]'
    assert parse_entities(no_braces).value == [("LOC", "Oslo", 4, 8)]
    missing_offsets = parse_entities('{"Results": [{"TypeName": "ORG", "Text": "EU"}]}')
    assert missing_offsets.ok and missing_offsets.value == [("ORG", "EU", -1, -1)]
    for broken in (
        "",
        "no json here",
        '{"Results": [{"TypeName": "PER", "Te',
        '{"Results": 3}',
        "[1, 2]",
        '{"Results": ["PER"]}',
    ):
        parsed = parse_entities(broken)
        assert not parsed.ok and parsed.value == []


def test_json_complete_ignores_brackets_in_strings() -> None:
    assert not json_complete('{"Results": [{"Text": "a]}"}')
    assert json_complete('{"Results": [{"Text": "a]}"}]}')
    assert json_complete('"Results": []')
    assert not json_complete('"Results": ')
    assert not json_complete('{"Text": "say \\"}\\""')


def test_entity_f1_hand_case() -> None:
    gold = [
        [("PER", "Igor Klamkin", 0, 12), ("LOC", "Rusland", 22, 29)],
        [("LOC", "Aarhus", 10, 16), ("ORG", "Novo Nordisk", 21, 33)],
    ]
    pred = [
        [("PER", "Igor Klamkin", 0, 12), ("ORG", "Rusland", -1, -1)],  # 1 right, 1 wrong type
        [("LOC", "Aarhus", 0, 0), ("LOC", "Aarhus", 0, 0)],  # the repeat finds no second gold
    ]
    # 4 gold, 4 predicted, 2 correct: P = R = F1 = 0.5 (offsets are not compared)
    assert entity_f1(gold, pred) == {
        "f1": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "gold": 4,
        "predicted": 4,
    }
    assert entity_f1(gold, [[], []])["f1"] == 0.0
    assert entity_f1([[]], [[]])["f1"] == 0.0


def test_uner_reader_fixture() -> None:
    examples = TASK.read(f"uner:{FIXTURES / 'uner'}", ["da"], "test")
    assert [ex.reference for ex in examples] == [
        [("PER", "Igor Klamkin", 0, 12), ("LOC", "Rusland", 22, 29)],
        # conlleval: an I- tag after O opens an entity
        [("LOC", "Aarhus", 10, 16), ("ORG", "Novo Nordisk", 21, 33)],
        [],  # OTH is not among the prompt's categories
    ]
    assert examples[0].text[22:29] == "Rusland"
    assert json.loads(TASK.target(examples[0]))["Results"][0] == {
        "TypeName": "PER",
        "Text": "Igor Klamkin",
        "Start": 0,
        "End": 12,
    }
    with pytest.raises(InputError) as bad:
        read_iob2(FIXTURES / "uner_bad.iob2", "dan_Latn")
    assert str(bad.value) == (
        f"{FIXTURES / 'uner_bad.iob2'}:3: unknown tag PER (expected O, or B-/I- with PER, ORG, "
        "LOC or OTH)"
    )
    with pytest.raises(InputError, match="no swe_Latn"):
        TASK.read(f"uner:{FIXTURES / 'uner'}", ["sv"], "test")


def test_aya_reader_jsonl_and_parquet(tmp_path: Path) -> None:
    path = FIXTURES / "aya" / "templated_uner_llm_test.jsonl"
    examples = TASK.read(f"aya:{path}", ["da"], "test")
    assert [(ex.text, ex.reference) for ex in examples] == [
        ("Maria bor i Lissabon.", [("PER", "Maria", 0, 5), ("LOC", "Lissabon", 12, 20)]),
        ("Det regner.", []),
    ]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    from_parquet = TASK.read(f"aya:{tmp_path}", ["pt"], "test")
    assert [(ex.text, ex.reference) for ex in from_parquet] == [
        ("Maria mora em Lisboa.", [("LOC", "Lisboa", 14, 20)])
    ]


def test_uner_shared_data() -> None:
    root = shared_data("uner")
    examples = TASK.read(str(root), ["da", "sv"], "test")
    assert sum(ex.lang == "dan_Latn" for ex in examples) == 565
    assert sum(ex.lang == "swe_Latn" for ex in examples) == 1219
    assert [(t, x) for t, x, *_ in examples[0].reference] == [
        ("PER", "Andronik Mirganjan"),
        ("PER", "Igor Klamkin"),
        ("LOC", "Rusland"),
    ]
    for ex in examples:  # offsets point at the entity text
        assert all(ex.text[a:b] == x for _, x, a, b in ex.reference)


# aya's Portuguese template (its closing question as the paper authors' scripts/utils.py has it),
# over several lines: no English text to look for, and the sentence followed by a blank line.
PT_TEMPLATE = (
    "Identifique todas as entidades nomeadas mencionadas na frase abaixo. Use apenas as "
    "categorias: PER - pessoa, ORG - organização e LOC - local.\n"
    'Exemplo de frase e resultados: Onde fica Iguaçu? {"Results": [{"TypeName": "LOC", '
    '"Text": "Iguaçu", "Start": 10, "End": 16}]}\n'
    "\n"
    "Considerando a frase de entrada abaixo, qual é o resultado produzido?{sentence}\n"
    "\n"
)


def test_aya_reader_translated_template_and_empty_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lisboa = {"TypeName": "LOC", "Text": "Lisboa", "Start": 14, "End": 20}
    rows = [
        (1, PT_TEMPLATE.replace("{sentence}", "\nMaria mora em Lisboa."), [lisboa]),
        (2, PT_TEMPLATE.replace("{sentence}", "  Chove.  "), []),  # on the question's line
        (3, PT_TEMPLATE.replace("{sentence}", ""), []),  # nothing after the question
        (4, "Uma pergunta que a lista não tem?\n Maria mora em Lisboa.\n\n", [lisboa]),
        (5, PT_TEMPLATE.replace("{sentence}", " O Porto ganhou."), [lisboa]),  # cut wrong?
        (6, PT_TEMPLATE.replace("{sentence}", " Chove."), []),  # script "Latin": no code
    ]
    path = tmp_path / "templated_uner_llm_test.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": n,
                    "inputs": inputs,
                    "targets": json.dumps({"Results": results}, ensure_ascii=False),
                    "language": "por",
                    "script": "Latin" if n == 6 else "Latn",
                },
                ensure_ascii=False,
            )
            + "\n"
            for n, inputs, results in rows
        ),
        encoding="utf-8",
    )
    examples = TASK.read(f"aya:{path}", ["pt"], "test")
    assert [(ex.id, ex.text, ex.reference) for ex in examples] == [
        ("1", "Maria mora em Lisboa.", [("LOC", "Lisboa", 14, 20)]),
        ("2", "Chove.", []),
        ("4", "Maria mora em Lisboa.", [("LOC", "Lisboa", 14, 20)]),
        ("5", "O Porto ganhou.", [("LOC", "Lisboa", 14, 20)]),
    ]
    assert [
        r.getMessage() for r in caplog.records if r.name == "midalign.evaluation.tasks.json_ner"
    ] == [
        f"aya:{path}: rows whose language/script is no language code left out: 'por_Latin' (1)",
        f"aya:{path}: 1 row(s) without a sentence after the template left out (first: row 3)",
        f"aya:{path}: 1 row(s) with entities not in the sentence cut from 'inputs', a template "
        "cut wrong? (first: row 5)",
    ]
