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
