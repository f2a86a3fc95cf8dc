"""``data.align_pivot: all``: every ordered language pair of a multiway source (the paper's
all-to-all alignment, its Table 4), and a training run on it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_train import WORDS, X_WORDS, _config, _run

from midalign.data.pairs import load_pairs
from midalign.errors import InputError

LANGS = {"eng_Latn": WORDS, "deu_Latn": X_WORDS["deu"], "fra_Latn": X_WORDS["fra"]}


def _sib200(root: Path, n: int = 12) -> Path:
    """A SIB-200-style folder: sentence i (index_id 10 + i) in each language, words drawn per
    language from one seeded stream, so the texts are known."""
    rng = random.Random(0)
    lengths = [rng.randint(2, 6) for _ in range(n)]
    for lang, words in LANGS.items():
        (root / lang).mkdir(parents=True)
        rows = ["index_id\tcategory\ttext"] + [
            f"{10 + i}\ttravel\t{' '.join(rng.choices(words, k=k))}" for i, k in enumerate(lengths)
        ]
        (root / lang / "dev.tsv").write_text("\n".join(rows) + "\n")
    return root


def _texts(root: Path, lang: str) -> list[str]:
    lines = (root / lang / "dev.tsv").read_text().splitlines()[1:]
    return [line.split("\t")[2] for line in lines]


def test_all_pairs_are_every_ordered_pair_of_the_same_sentences(tmp_path):
    root = _sib200(tmp_path / "sib")
    pairs = load_pairs(f"sib200:{root}", ["eng", "deu", "fra"], "dev", pivot="all")
    assert list(pairs) == [
        "eng_Latn-deu_Latn",
        "eng_Latn-fra_Latn",
        "deu_Latn-eng_Latn",
        "deu_Latn-fra_Latn",
        "fra_Latn-eng_Latn",
        "fra_Latn-deu_Latn",
    ]
    for group, items in pairs.items():
        a, b = group.split("-")
        assert items == list(zip(_texts(root, a), _texts(root, b), strict=True))
    # English as the pivot: the x-English pairs, as before
    english = load_pairs(f"sib200:{root}", ["deu", "fra"], "dev")
    assert english == {
        "deu_Latn": pairs["deu_Latn-eng_Latn"],
        "fra_Latn": pairs["fra_Latn-eng_Latn"],
    }


@pytest.mark.parametrize(
    ("spec", "langs", "message"),
    [
        ("tatoeba:DIR", ["deu", "fra"], "needs a multiway source"),
        ("hf-tatoeba", ["deu", "fra"], "needs a multiway source"),
        ("sib200:DIR", ["deu"], "at least two"),
    ],
)
def test_all_pairs_refuse_what_cannot_give_them(spec, langs, message):
    with pytest.raises(InputError, match=message):
        load_pairs(spec, langs, "dev", pivot="all")
    with pytest.raises(InputError, match="align_pivot must be one of english, all"):
        load_pairs(spec, langs, "dev", pivot="every")


def test_a_run_aligns_on_every_ordered_pair(tmp_path):
    c = _config(tmp_path)
    c.data.align_data = f"sib200:{_sib200(tmp_path / 'sib', n=30)}"
    c.data.align_langs = ["eng", "deu", "fra"]
    c.data.align_pivot = "all"
    result = _run(c, tmp_path / "run")
    assert sorted(result.align_pairs) == sorted(f"{a}-{b}" for a in LANGS for b in LANGS if a != b)
    assert all(n == 30 - 4 for n in result.align_pairs.values())  # 4 held out for dev
    assert result.global_step == c.optim.max_steps
