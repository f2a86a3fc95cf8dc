"""Translation: directions, ALMA/WMT23 readers, the paper's prompt, BLEU equal to sacrebleu's
own command line (13a, ja-mecab, zh), chrF, and the COMET extra's message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

from midalign.errors import InputError
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.translation import bleu_tokenizer, comet_scores, corpus_scores

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
TASK = get_task("mt")


def test_directions() -> None:
    assert TASK.languages("de-en,en-ja") == ["deu_Latn-eng_Latn", "eng_Latn-jpn_Jpan"]
    assert TASK.languages("cs, zho-Hans") == [
        "ces_Latn-eng_Latn",
        "eng_Latn-ces_Latn",
        "zho_Hans-eng_Latn",
        "eng_Latn-zho_Hans",
    ]
    assert TASK.languages("deu_Latn-eng_Latn") == ["deu_Latn-eng_Latn"]
    with pytest.raises(InputError, match="into itself"):
        TASK.languages("en-en")
    with pytest.raises(InputError, match=r"^--langs: 'de-deu' translates deu_Latn into itself"):
        TASK.languages("de-deu")
    with pytest.raises(InputError, match="unknown language"):
        TASK.languages("xx-en")


@pytest.mark.parametrize(
    ("item", "lang", "region"),
    [("fr-CA", "fr", "CA"), ("pt-BR", "pt", "BR"), ("de-DE", "de", "DE"), ("es-419", "es", "419"),
     ("zh-Hant-TW", "zh", "TW"), ("pt_BR", "pt", "BR"), ("de-DE-en", "de", "DE")],
)  # fmt: skip
def test_a_locale_is_not_a_direction(item: str, lang: str, region: str) -> None:
    """Read as directions, fr-CA would be French into Catalan, pt-BR Portuguese into Breton."""
    with pytest.raises(InputError) as e:
        TASK.languages(f"de-en,{item}", "r.yaml: task.test.langs")
    assert str(e.value) == (
        f"r.yaml: task.test.langs: {item!r} is a locale (language {lang}, region {region}), not "
        "a translation direction: give directions SRC-TGT of two language codes, e.g. "
        f"{lang}-en,en-{lang}, or a bare {lang} for both directions with English"
    )


def test_an_english_locale_suggests_another_language() -> None:
    with pytest.raises(InputError, match=r"\(language en, region GB\).* e\.g\. en-de,de-en$"):
        TASK.languages("en-GB")


def test_codes_that_only_look_like_locales_stay_directions() -> None:
    """A script subtag is part of a code; capitals on both sides are a direction in capitals."""
    assert TASK.languages("zh-Hant") == ["zho_Hant-eng_Latn", "eng_Latn-zho_Hant"]
    assert TASK.languages("DE-EN") == ["deu_Latn-eng_Latn"]
    assert TASK.languages("fr-CAT") == ["fra_Latn-cat_Latn"]


def test_alma_readers_both_directions() -> None:
    src = f"alma:{FIXTURES / 'alma'}"
    train = TASK.read(src, ["deu_Latn-eng_Latn", "eng_Latn-deu_Latn"], "train")
    assert len(train) == 6
    de_en, en_de = train[0], train[3]
    assert (de_en.text, de_en.reference, de_en.lang) == (
        "Guten Morgen.",
        "Good morning.",
        "deu_Latn",
    )
    assert (en_de.text, en_de.reference, en_de.lang) == (
        "Good morning.",
        "Guten Morgen.",
        "deu_Latn",
    )
    assert TASK.instruction(en_de) == (
        "Translate the following sentences from English to German.",
        "Good morning.",
    )
    assert TASK.target(en_de) == "Guten Morgen."
    valid = TASK.read(src, ["deu_Latn-eng_Latn"], "valid")
    assert [(ex.text, ex.reference) for ex in valid] == [
        ("Danke schön.", "Thank you very much."),
        ("Wo ist der Bahnhof?", "Where is the station?"),
    ]
    # ALMA's test sets are one file per direction: en→de has one, de→en none here
    test = TASK.read(src, ["eng_Latn-deu_Latn"], "test")
    assert [(ex.text, ex.reference, ex.key) for ex in test] == [
        ("I am reading a book.", "Ich lese ein Buch.", "eng_Latn-deu_Latn")
    ]
    with pytest.raises(InputError, match=r"deen/test\.de-en\.json"):
        TASK.read(src, ["deu_Latn-eng_Latn"], "test")
    with pytest.raises(InputError, match="English"):
        TASK.read(src, ["deu_Latn-jpn_Jpan"], "train")


def test_wmt23_reader_and_mismatched_lines() -> None:
    examples = TASK.read(f"wmt23:{FIXTURES / 'wmt23'}", ["eng_Latn-jpn_Jpan"], "test")
    assert [ex.reference for ex in examples] == ["おはようございます。", "今日は天気がいいです。"]
    assert examples[0].key == "eng_Latn-jpn_Jpan" and examples[0].lang == "jpn_Jpan"
    with pytest.raises(InputError, match=r"has 1 lines but .*refA\.en has 2"):
        TASK.read(f"wmt23:{FIXTURES / 'wmt23'}", ["jpn_Jpan-eng_Latn"], "test")
    with pytest.raises(InputError, match="no generaltest2023.de-en"):
        TASK.read(f"wmt23:{FIXTURES / 'wmt23'}", ["deu_Latn-eng_Latn"], "test")


def test_shared_alma_and_wmt23() -> None:
    wmt = shared_data("wmt23")
    examples = TASK.read(str(wmt), ["de-en", "en-zh"], "test")
    assert sum(ex.key == "deu_Latn-eng_Latn" for ex in examples) == 549
    assert sum(ex.key == "eng_Latn-zho_Hans" for ex in examples) == 2074
    alma = shared_data("alma")
    valid = TASK.read(f"alma:{alma}", ["zh-en"], "valid")
    assert valid and all(ex.text and ex.reference for ex in valid)


HYPS = {
    "eng_Latn": ["The cat sat on the mat.", "It is raining today in Berlin.", "I like tea"],
    "jpn_Jpan": ["今日は天気がいい。", "猫がマットの上に座った。", "私はお茶が好き"],
    "zho_Hans": ["今天天气很好。", "猫坐在垫子上了。", "我喜欢茶"],
}
REFS = {
    "eng_Latn": ["The cat sat on the mat.", "Today it is raining in Berlin.", "I love tea."],
    "jpn_Jpan": [
        "今日は天気がいいです。",
        "猫がマットの上に座りました。",
        "私はお茶が大好きです。",
    ],
    "zho_Hans": ["今天天气很好。", "猫坐在垫子上。", "我很喜欢喝茶。"],
}


@pytest.mark.parametrize("lang", list(HYPS))
def test_bleu_and_chrf_equal_sacrebleu_cli(lang: str, tmp_path: Path) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(HYPS[lang]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFS[lang]) + "\n", encoding="utf-8")
    ours = corpus_scores(HYPS[lang], REFS[lang], lang)
    tokenize = bleu_tokenizer(lang)
    assert tokenize == {"eng_Latn": "13a", "jpn_Jpan": "ja-mecab", "zho_Hans": "zh"}[lang]

    def cli(*args: str) -> float:
        cmd = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "6"]
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, check=True)
        return float(done.stdout.strip())

    assert ours["bleu"] == pytest.approx(cli("-tok", tokenize), abs=1e-6)
    assert ours["chrf"] == pytest.approx(cli("-m", "chrf"), abs=1e-6)
    assert 0 < ours["bleu"] < 100
    assert f"tok:{tokenize}" in ours["signatures"]["bleu"]


def test_bleu_of_perfect_and_empty_output() -> None:
    refs = REFS["eng_Latn"]
    assert corpus_scores(refs, refs, "eng_Latn")["bleu"] == pytest.approx(100.0)
    assert corpus_scores(["", "", ""], refs, "eng_Latn")["bleu"] == 0.0


def test_parse_takes_first_line_and_counts_empty() -> None:
    ex = TASK.read(f"alma:{FIXTURES / 'alma'}", ["de-en"], "train")[0]
    assert TASK.parse("\n Good morning. \nUser: next", ex).value == "Good morning."
    assert not TASK.parse("   ", ex).ok


def test_comet_without_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "comet", None)  # import comet fails, as without the extra
    with pytest.raises(InputError, match=r"midalign\[comet\]"):
        comet_scores([], [], tmp_path)


@pytest.mark.parametrize("cuda", [False, True])
def test_comet_loads_local_files_only_and_predicts_on_the_gpu_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cuda: bool
) -> None:
    """unbabel-comet 2.2.7's ``load_from_checkpoint(checkpoint_path, reload_hparams, strict,
    local_files_only)`` and ``CometModel.predict(samples, batch_size, gpus, ...)``, faked."""
    import types

    import torch

    calls: dict[str, object] = {}

    class Model:
        def predict(self, data, **kwargs):
            calls["predict"] = (data, kwargs)
            return types.SimpleNamespace(scores=[0.5] * len(data))

    def load_from_checkpoint(checkpoint_path: str, **kwargs) -> Model:
        calls["load"] = (checkpoint_path, kwargs)
        return Model()

    comet = types.ModuleType("comet")
    comet.load_from_checkpoint = load_from_checkpoint
    monkeypatch.setitem(sys.modules, "comet", comet)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    ckpt = tmp_path / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir()
    ckpt.touch()
    examples = TASK.read(f"alma:{FIXTURES / 'alma'}", ["de-en"], "train")[:2]

    assert comet_scores(examples, ["a", "b"], tmp_path, batch_size=4) == [0.5, 0.5]
    assert calls["load"] == (str(ckpt), {"local_files_only": True})
    data, kwargs = calls["predict"]
    first, second = examples
    assert data == [
        {"src": first.text, "mt": "a", "ref": first.reference},
        {"src": second.text, "mt": "b", "ref": second.reference},
    ]
    assert kwargs == {"batch_size": 4, "gpus": 1 if cuda else 0, "progress_bar": False}
