"""Alignment pairs from ALMA's training files (the paper aligns translation on its task data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from midalign.data.pairs import load_pairs
from midalign.errors import InputError

ALMA = Path(__file__).parent / "fixtures" / "tasks" / "alma"


def test_alma_training_files_become_x_english_pairs() -> None:
    pairs = load_pairs(f"alma:{ALMA}", ["de"])
    assert list(pairs) == ["deu_Latn"]
    assert pairs["deu_Latn"][:3] == [
        ("Guten Morgen.", "Good morning."),
        ("Das Haus ist rot.", "The house is red."),
        ("Ich lese ein Buch.", "I am reading a book."),
    ]


def test_alma_language_without_files_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="train.cs-en.cs"):
        load_pairs(f"alma:{ALMA}", ["cs"])


def test_a_missing_alma_folder_is_named(tmp_path: Path) -> None:
    """Not "not a translation data set": the task's data and the alignment pairs both say the
    folder does not exist."""
    from midalign.evaluation.tasks import get_task

    nope = tmp_path / "nope"
    with pytest.raises(InputError, match=f"^alma:{nope}: directory not found$"):
        load_pairs(f"alma:{nope}", ["de"])
    with pytest.raises(InputError, match=f"^alma:{nope}: directory not found$"):
        get_task("mt").read(f"alma:{nope}", ["de-en"], "test")
    with pytest.raises(InputError, match=f"^wmt23:{nope}: directory not found$"):
        get_task("mt").read(f"wmt23:{nope}", ["de-en"], "test")


def test_alma_icelandic_dev_names_the_missing_valid_file(tmp_path: Path, capsys) -> None:
    """ALMA's isen has train and test files but no valid one, unlike cs, de, ru and zh: a dev
    split of is-en fails when the data is read, in one line, before any model is loaded."""
    from midalign.cli import main

    folder = tmp_path / "isen"
    folder.mkdir()
    (folder / "train.is-en.is").write_text("Góðan daginn.\nHúsið er rautt.\n")
    (folder / "train.is-en.en").write_text("Good morning.\nThe house is red.\n")

    def never(*args, **kwargs):
        raise AssertionError("loaded a model")

    with pytest.MonkeyPatch.context() as m:
        m.setattr("midalign.cli.eval.load_model", never)
        args = ["eval", "--model", "default", "--task", "mt", "--data", f"alma:{tmp_path}"]
        for direction in ("is-en", "en-is"):
            out = ["--out", str(tmp_path / "out"), "--no-progress"]
            assert main([*args, "--langs", direction, "--split", "dev", *out]) == 2
            assert capsys.readouterr().err == (
                f"midalign eval: error: alma:{tmp_path}: {direction} split dev: no "
                f"{folder / 'valid.is-en.json'} (ALMA has no valid file for Icelandic: use split "
                "train or test)\n"
            )
    assert not (tmp_path / "out").exists()
