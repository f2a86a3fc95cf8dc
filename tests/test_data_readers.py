"""Parallel-text readers (flores, sib200, tatoeba, parallel, hf) on fixtures and real data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import shared_data

from midalign.data import load_parallel
from midalign.data.reading import read_tsv, split_lines
from midalign.errors import InputError
from midalign.languages import PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def copy_fixture(tmp_path: Path, name: str) -> Path:
    """A writable copy of a fixture folder, to break on purpose."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


# --- flores:DIR ------------------------------------------------------------------------------


def test_flores_dir_reads_line_aligned_split() -> None:
    corpus = load_parallel(f"flores:{FIXTURES / 'flores'}", ["en", "deu_Latn", "zh"])
    assert corpus.texts == {
        "eng_Latn": ["The cat sleeps.", "It rains today.", "We eat bread."],
        "deu_Latn": ["Die Katze schläft.", "Heute regnet es.", "Wir essen Brot."],
        "zho_Hans": ["猫在睡觉。", "今天下雨。", "我们吃面包。"],
    }
    assert corpus.ids["zho_Hans"] == ["1", "2", "3"]
    assert len(corpus.pairs) == 6
    assert ("zho_Hans", "eng_Latn") in corpus.pairs


def test_flores_dir_devtest_all_languages_and_max_sentences() -> None:
    corpus = load_parallel(f"flores:{FIXTURES / 'flores'}", [], split="devtest")
    assert corpus.texts == {
        "deu_Latn": ["Ein Hund bellt.", "Die Sonne scheint."],
        "eng_Latn": ["A dog barks.", "The sun shines."],
    }
    corpus = load_parallel(f"flores:{FIXTURES / 'flores'}", ["de", "en"], max_sentences=2)
    assert corpus.texts["deu_Latn"] == ["Die Katze schläft.", "Heute regnet es."]
    assert corpus.ids["eng_Latn"] == ["1", "2"]


def test_flores_dir_missing_language_lists_available() -> None:
    with pytest.raises(InputError) as e:
        load_parallel(f"flores:{FIXTURES / 'flores'}", ["en", "fr"])
    assert "no fra_Latn" in str(e.value)
    assert "available: deu_Latn, eng_Latn, zho_Hans" in str(e.value)


def test_flores_dir_missing_split_lists_splits() -> None:
    with pytest.raises(InputError, match=r"test not found; splits in .*\['dev', 'devtest'\]"):
        load_parallel(f"flores:{FIXTURES / 'flores'}", ["en", "de"], split="test")


def test_flores_dir_ragged_names_both_files(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "flores")
    (root / "dev" / "deu_Latn.dev").write_text("Die Katze schläft.\nHeute regnet es.\n")
    with pytest.raises(InputError) as e:
        load_parallel(f"flores:{root}", ["en", "de"])
    assert str(e.value).startswith(
        f"{root}/dev/eng_Latn.dev has 3 lines but {root}/dev/deu_Latn.dev has 2"
    )


def test_flores_dir_empty_line_names_file_and_line(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "flores")
    (root / "dev" / "deu_Latn.dev").write_text("Die Katze schläft.\n  \nWir essen Brot.\n")
    with pytest.raises(InputError, match=rf"^{root}/dev/deu_Latn.dev:2: empty line"):
        load_parallel(f"flores:{root}", ["en", "de"])


def test_flores_dir_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "flores")
    dev = root / "dev" / "deu_Latn.dev"
    dev.write_bytes(b"Die Katze\nHeute regnet es.\nWir essen Br\xf6t.\n")
    with pytest.raises(InputError, match=rf"^{dev}:3: not valid UTF-8 \(byte 0xf6"):
        load_parallel(f"flores:{root}", ["en", "de"])


def test_flores_dir_crlf_and_bom_are_not_part_of_sentences(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "flores")
    (root / "dev" / "deu_Latn.dev").write_bytes("\ufeffA\r\nB\u2028b\r\nC\r\n".encode())
    corpus = load_parallel(f"flores:{root}", ["en", "de"])
    assert corpus.texts["deu_Latn"] == ["A", "B\u2028b", "C"]


# --- sib200:DIR ------------------------------------------------------------------------------


def test_sib200_joins_on_index_id_in_first_language_order() -> None:
    corpus = load_parallel(f"sib200:{FIXTURES / 'sib200'}", ["en", "de", "ja"])
    # id 5 is missing in German, so it is left out everywhere
    assert corpus.ids["deu_Latn"] == ["7", "3", "12"]
    assert corpus.texts["eng_Latn"] == [
        "The team won.",
        'Take the "night" train.',
        "Water boils at 100 degrees.",
    ]
    assert corpus.texts["deu_Latn"] == [
        "Das Team gewann.",
        "Nimm den „Nachtzug“.",
        "Wasser kocht bei 100 Grad.",
    ]
    assert corpus.texts["jpn_Jpan"][0] == "チームが勝った。"
    corpus = load_parallel(f"sib200:{FIXTURES / 'sib200'}", ["ja", "en"])
    assert corpus.ids["eng_Latn"] == ["12", "7", "3", "5"]


def test_sib200_sentence_missing_names_the_file_that_lacks_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    load_parallel(f"sib200:{FIXTURES / 'sib200'}", ["en", "de", "ja"])
    assert [r.getMessage() for r in caplog.records] == [
        f"{FIXTURES / 'sib200'}/deu_Latn/dev.tsv: lacks 1 sentence(s) that other languages have "
        "(id 5), left out of every language"
    ]


def test_sib200_missing_file_or_language() -> None:
    fixture = FIXTURES / "sib200"
    with pytest.raises(InputError, match=rf"^{fixture}/deu_Latn/test.tsv: file not found"):
        load_parallel(f"sib200:{fixture}", ["en", "de"], split="test")
    with pytest.raises(InputError, match="no fra_Latn; available: deu_Latn, eng_Latn, jpn_Jpan"):
        load_parallel(f"sib200:{fixture}", ["fr"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"index_id\tcategory\ttext\n3\ttravel\tZug.\n7\tsports\t \n", ":3: empty text"),
        (
            "index_id\tcategory\ttext\n3\ttravel\t\u200b\u2060\n".encode(),
            r":2: empty text \(only invisible characters U\+200B, U\+2060\)",
        ),
        (b"index_id\tcategory\ttext\n3\ttravel\tA\n3\tsports\tB\n", ":3: index_id 3 occurs twice"),
        (b"id\tcategory\tsentence\n3\ttravel\tA\n", r":1: header lacks column\(s\) index_id, text"),
        (b"index_id\tcategory\ttext\n3\ttravel\n", ":2: 2 tab-separated fields, header has 3"),
        (b"index_id\tcategory\ttext\n3\ttravel\t\xff\n", ":2: not valid UTF-8"),
    ],
)
def test_sib200_bad_tsv_names_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    root = copy_fixture(tmp_path, "sib200")
    tsv = root / "deu_Latn" / "dev.tsv"
    tsv.write_bytes(content)
    with pytest.raises(InputError, match=f"^{tsv}{message}"):
        load_parallel(f"sib200:{root}", ["en", "de"])


def test_tsv_fields_are_csv_quoted(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text(
        "index_id\ttext\n"
        '1\t"He said ""yes""."\n'  # quoted, its quotes doubled
        '2\tTake the "night" train.\n'  # a quote inside an unquoted field is text
        '3\t"a tab\there, a line break\nthere"\n'  # quoted across two lines
        '4\t""""\n'  # a field that is one quote
        "5\t\n",
        encoding="utf-8",
    )
    assert read_tsv(path, ("index_id", "text")) == [
        (2, {"index_id": "1", "text": 'He said "yes".'}),
        (3, {"index_id": "2", "text": 'Take the "night" train.'}),
        (4, {"index_id": "3", "text": "a tab\there, a line break\nthere"}),
        (6, {"index_id": "4", "text": '"'}),
        (7, {"index_id": "5", "text": ""}),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('index_id\ttext\n1\tA.\n2\t"B" said.\n', r":3: not valid TSV \('\\t' expected"),
        ('index_id\ttext\n1\tA.\n2\t"B.\n3\tC.\n', r":3: not valid TSV \(unexpected end"),
        ("index_id\ttext\n1\tA.\n\n2\tB.\n", ":3: empty line"),
    ],
)
def test_tsv_bad_quoting_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=f"^{path}{message}"):
        read_tsv(path, ("index_id", "text"))


def test_sib200_real_quoted_row_reads_as_meant() -> None:
    root = shared_data("sib200")
    (line,) = [
        x for x in (root / "eng_Latn" / "test.tsv").open(encoding="utf-8") if x[:3] == "61\t"
    ]
    assert line.startswith('61\tscience/technology\t"During his 2 hour speech he stated that ""')
    corpus = load_parallel(f"sib200:{root}", ["en", "de"], split="test")
    text = corpus.texts["eng_Latn"][corpus.ids["eng_Latn"].index("61")]
    assert text == (
        'During his 2 hour speech he stated that "Today Apple is going to reinvent the phone, '
        'We are going to make history today".'
    )


def test_sib200_every_real_file_reads_whole_and_aligned() -> None:
    """All 123 files: the CSV reading keeps every row (41,164, 1,669 of them quoted in the
    file), and every language lists the same (index_id, category) rows in the same order.
    441 texts, none English, still start and end with a quote: FLoRes-200's own lines, which
    SIB-200 copies verbatim (389 of them a second CSV layer from its translation files)."""
    root = shared_data("sib200")
    files = sorted(root.glob("*/*.tsv"))
    assert len(files) == 123
    rows, unquoted, wrapped, order = 0, 0, {}, {}
    for path in files:
        raw = [line.split("\t") for line in split_lines(path.read_text(encoding="utf-8"))[1:]]
        read = read_tsv(path, ("index_id", "category", "text"))
        assert len(read) == len(raw)
        rows += len(read)
        unquoted += sum(r[2] != row["text"] for r, (_, row) in zip(raw, read, strict=True))
        wrapped[path.parent.name] = wrapped.get(path.parent.name, 0) + sum(
            len(t) > 1 and t[0] == t[-1] == '"' for t in (row["text"] for _, row in read)
        )
        order.setdefault(path.stem, set()).add(
            tuple((row["index_id"], row["category"]) for _, row in read)
        )
    assert (rows, unquoted, sum(wrapped.values())) == (41_164, 1_669, 441)
    assert wrapped["eng_Latn"] == 0 and wrapped["heb_Hebr"] == 117
    assert {split: len(orders) for split, orders in order.items()} == {
        "dev": 1,
        "test": 1,
        "train": 1,
    }


def test_sib200_real_dev_split() -> None:
    root = shared_data("sib200")
    langs = list(dict.fromkeys(PRESETS["paper35"] + PRESETS["uner"]))
    corpus = load_parallel(f"sib200:{root}", langs)
    assert len(corpus.texts) == 41
    assert {len(texts) for texts in corpus.texts.values()} == {99}
    for lang in ("eng_Latn", "deu_Latn"):
        with open(root / lang / "dev.tsv", encoding="utf-8", newline="") as f:
            first = next(csv.DictReader(f, dialect="excel-tab"))
        assert corpus.texts[lang][0] == first["text"]
        assert corpus.ids[lang][0] == first["index_id"]
    assert corpus.texts["deu_Latn"][0].startswith("Durch den Wechsel vom Viertelmeilen-")


# --- tatoeba:DIR -----------------------------------------------------------------------------


def test_tatoeba_pairs_each_language_with_its_own_english() -> None:
    corpus = load_parallel(f"tatoeba:{FIXTURES / 'tatoeba'}", ["eng", "jv", "zh"])
    assert corpus.texts == {
        "jav_Latn": ["Aku mangan.", "Kowe turu.", "Dheweke maca."],
        "eng_Latn@jav_Latn": ["I eat.", "You sleep.", "She reads."],
        "zho_Hans": ["我很好。", "谢谢。"],
        "eng_Latn@zho_Hans": ["I am fine.", "Thank you."],
    }
    assert corpus.pairs == [
        ("jav_Latn", "eng_Latn@jav_Latn"),
        ("eng_Latn@jav_Latn", "jav_Latn"),
        ("zho_Hans", "eng_Latn@zho_Hans"),
        ("eng_Latn@zho_Hans", "zho_Hans"),
    ]
    assert corpus.lang["eng_Latn@zho_Hans"] == "eng_Latn"
    assert corpus.languages == ["jav_Latn", "eng_Latn", "zho_Hans"]


def test_tatoeba_errors(tmp_path: Path) -> None:
    fixture = FIXTURES / "tatoeba"
    with pytest.raises(InputError, match="at least one language besides eng_Latn.*jav_Latn"):
        load_parallel(f"tatoeba:{fixture}", ["en"])
    with pytest.raises(InputError, match="no swh_Latn; available: jav_Latn, zho_Hans"):
        load_parallel(f"tatoeba:{fixture}", ["jv", "sw"])
    root = copy_fixture(tmp_path, "tatoeba")
    (root / "tatoeba.jav-eng.eng").write_text("I eat.\nYou sleep.\n")
    with pytest.raises(InputError, match=r"jav-eng.jav has 3 lines but .*jav-eng.eng has 2"):
        load_parallel(f"tatoeba:{root}", ["jv"])
    (root / "tatoeba.jav-eng.eng").unlink()
    with pytest.raises(InputError, match=rf"^{root}/tatoeba.jav-eng.eng: file not found"):
        load_parallel(f"tatoeba:{root}", ["jv"])


def test_tatoeba_real_laser_codes() -> None:
    root = shared_data("tatoeba")
    corpus = load_parallel(f"tatoeba:{root}", ["jv", "ar", "zh", "sw"])
    assert len(corpus.texts["jav_Latn"]) == 205
    assert len(corpus.texts["eng_Latn@jav_Latn"]) == 205
    assert len(corpus.texts["swh_Latn"]) == 390
    assert len(corpus.texts["arb_Arab"]) == 1000  # LASER's "ara"
    assert len(corpus.texts["zho_Hans"]) == 1000  # LASER's "cmn"
    first = (root / "tatoeba.jav-eng.jav").read_text(encoding="utf-8").split("\n")[0]
    assert corpus.texts["jav_Latn"][0] == first.strip()


# --- parallel:FILE,... -----------------------------------------------------------------------


def test_plain_files_with_languages_or_suffixes() -> None:
    en, de, fr = (FIXTURES / "plain" / f"greetings.{s}" for s in ("en", "de", "fra_Latn"))
    corpus = load_parallel(f"parallel:{de},{en}", ["deu", "en"])
    assert corpus.texts == {
        "deu_Latn": ["Hallo Welt.", "Gute Nacht.", "Bis bald."],
        "eng_Latn": ["Hello world.", "Good night.", "See you."],
    }
    corpus = load_parallel(f"parallel:{en},{de},{fr}", [])
    assert list(corpus.texts) == ["eng_Latn", "deu_Latn", "fra_Latn"]
    assert corpus.texts["fra_Latn"][2] == "À bientôt."


def test_plain_files_named_by_suffix_are_read_as_named_in_any_order() -> None:
    en, de = FIXTURES / "plain" / "greetings.en", FIXTURES / "plain" / "greetings.de"
    for files in (f"{de},{en}", f"{en},{de}"):
        corpus = load_parallel(f"parallel:{files}", ["en", "de"])
        assert list(corpus.texts) == ["eng_Latn", "deu_Latn"]  # the order of the languages
        assert corpus.texts["deu_Latn"][0] == "Hallo Welt."
        assert corpus.files == {"eng_Latn": str(en), "deu_Latn": str(de)}


def test_plain_files_without_suffixes_take_the_languages_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Hallo.\nTschüss.\n")
    b.write_text("Hello.\nBye.\n")
    corpus = load_parallel(f"parallel:{a},{b}", ["de", "en"])
    assert corpus.texts == {"deu_Latn": ["Hallo.", "Tschüss."], "eng_Latn": ["Hello.", "Bye."]}


def test_plain_files_that_contradict_the_languages(tmp_path: Path) -> None:
    en, de = FIXTURES / "plain" / "greetings.en", FIXTURES / "plain" / "greetings.de"
    with pytest.raises(
        InputError,
        match=rf"^--langs: parallel: {de} is deu_Latn by its suffix, not one of jpn_Jpan, "
        "eng_Latn; give its language or rename the file$",
    ):
        load_parallel(f"parallel:{de},{en}", ["ja", "en"])
    plain = tmp_path / "b"
    shutil.copy(de, plain)
    with pytest.raises(
        InputError,
        match=rf"^--align-langs: parallel: {en} is eng_Latn by its suffix but stands where "
        "deu_Latn is given; give the files and the languages in the same order$",
    ):
        load_parallel(f"parallel:{en},{plain}", ["de", "en"], option="--align-langs")
    with pytest.raises(InputError, match=f"^parallel: {en} is given twice"):
        load_parallel(f"parallel:{en},{en}", ["en", "de"])
    copy = tmp_path / "copy.txt"
    shutil.copy(en, copy)
    with pytest.raises(
        InputError,
        match=rf"eng_Latn \({en}\) and deu_Latn \({copy}\) hold the same 3 sentences",
    ):
        load_parallel(f"parallel:{en},{copy}", ["en", "de"])


def test_invisible_lines_and_inner_byte_order_marks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    en, de = tmp_path / "t.en", tmp_path / "t.de"
    en.write_text("Hello.\n\u200b\nBye.\n")
    de.write_text("\ufeffHallo.\nNa?\n\ufeffTschüss.\n")  # two files joined with cat
    with pytest.raises(
        InputError,
        match=rf"^{en}:2: empty line \(only invisible characters U\+200B\); every line must hold",
    ):
        load_parallel(f"parallel:{en},{de}", [])
    en.write_text("Hello.\nWell?\nBye.\n")
    corpus = load_parallel(f"parallel:{en},{de}", [])
    assert corpus.texts["deu_Latn"] == ["Hallo.", "Na?", "Tschüss."]
    assert [r.getMessage() for r in caplog.records] == [
        f"{de}:3: 1 byte-order mark(s) (U+FEFF) inside the file (files joined?), removed"
    ]


def test_plain_files_errors(tmp_path: Path) -> None:
    en, de = FIXTURES / "plain" / "greetings.en", FIXTURES / "plain" / "greetings.de"
    with pytest.raises(InputError, match="2 files but 3 languages"):
        load_parallel(f"parallel:{en},{de}", ["en", "de", "fr"])
    odd = tmp_path / "greetings.txt"
    odd.write_text("a\nb\nc\n")
    with pytest.raises(InputError, match=f"cannot tell the language of {odd}"):
        load_parallel(f"parallel:{en},{odd}", [])
    with pytest.raises(InputError, match=rf"^{tmp_path}/missing.de: file not found"):
        load_parallel(f"parallel:{en},{tmp_path}/missing.de", ["en", "de"])
    with pytest.raises(InputError, match=f"^parallel: {en} and {tmp_path}/x.eng are both eng_Latn"):
        load_parallel(f"parallel:{en},{tmp_path / 'x.eng'}", [])
    short = tmp_path / "short.de"
    short.write_text("Hallo.\n")
    with pytest.raises(InputError, match=f"{en} has 3 lines but {short} has 1"):
        load_parallel(f"parallel:{en},{short}", [])


# --- hf:DIR / hf:flores_plus -----------------------------------------------------------------


@pytest.fixture
def flores_plus_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of loose files named like the hub repo's, <split>/<config>.parquet (Mandarin is
    cmn_Hans), one language as jsonl, and no dataset card (a copy with the card is
    test_hub_layouts'); ids deliberately out of order and not all shared."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))

    def table(iso: str, script: str, rows: list[tuple[int, str]]) -> pa.Table:
        return pa.table(
            {
                "id": [i for i, _ in rows],
                "iso_639_3": [iso] * len(rows),
                "iso_15924": [script] * len(rows),
                "glottocode": ["stan1234"] * len(rows),
                "text": [t for _, t in rows],
            }
        )

    root = tmp_path / "flores_plus"
    (root / "dev").mkdir(parents=True)
    (root / "devtest").mkdir()
    eng = [(0, "A cat."), (1, "A dog."), (2, "A bird.")]
    pq.write_table(table("eng", "Latn", eng), root / "dev" / "eng_Latn.parquet")
    cmn = [(2, "一只鸟。"), (0, "一只猫。"), (1, "一只狗。")]
    pq.write_table(table("cmn", "Hans", cmn), root / "dev" / "cmn_Hans.parquet")
    with open(root / "dev" / "deu_Latn.jsonl", "w", encoding="utf-8") as f:
        for i, text in [(1, "Ein Hund."), (0, "Eine Katze.")]:
            row = {"id": i, "iso_639_3": "deu", "iso_15924": "Latn", "text": text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    devtest = root / "devtest"
    pq.write_table(table("eng", "Latn", [(0, "Sun."), (1, "Moon.")]), devtest / "eng_Latn.parquet")
    pq.write_table(table("cmn", "Hans", [(0, "日。"), (1, "月。")]), devtest / "cmn_Hans.parquet")
    return root


def test_hf_local_dir_joins_on_id(flores_plus_dir: Path) -> None:
    corpus = load_parallel(f"hf:{flores_plus_dir}", ["en", "zh"])
    assert corpus.ids["zho_Hans"] == ["0", "1", "2"]
    assert corpus.texts == {
        "eng_Latn": ["A cat.", "A dog.", "A bird."],
        "zho_Hans": ["一只猫。", "一只狗。", "一只鸟。"],
    }
    corpus = load_parallel(f"hf:{flores_plus_dir}", ["zh", "de", "en"])
    assert corpus.ids["deu_Latn"] == ["0", "1"]  # id 2 has no German: left out
    assert corpus.texts["deu_Latn"] == ["Eine Katze.", "Ein Hund."]
    assert corpus.texts["zho_Hans"] == ["一只猫。", "一只狗。"]
    corpus = load_parallel(f"hf:{flores_plus_dir}", ["en", "zh"], split="devtest")
    assert corpus.texts["zho_Hans"] == ["日。", "月。"]


def test_hf_local_dir_missing_or_broken(flores_plus_dir: Path) -> None:
    with pytest.raises(InputError, match=r"no fra_Latn; available: deu_Latn, eng_Latn, zho_Hans"):
        load_parallel(f"hf:{flores_plus_dir}", ["en", "fr"])
    (flores_plus_dir / "dev" / "eng_Latn.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"eng_Latn.parquet: cannot be read as parquet"):
        load_parallel(f"hf:{flores_plus_dir}", ["en", "zh"])
    with pytest.raises(InputError, match="hf:./nowhere: directory not found"):
        load_parallel("hf:./nowhere", ["en", "zh"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"id": 0, "text": "Katze."}\n{"id": 1, "text": " "}\n',
            r": row 2 \(id 1\) has an empty",
        ),
        (
            b'{"id": 0, "text": "Katze."}\n{"id": 0, "text": "Hund."}\n',
            ": row 2: id 0 occurs twice",
        ),
        (b'{"id": 0, "sentence": "Katze."}\n', ": needs columns 'id' and 'text'"),
        (b'{"id": 0, "text": "Katze."}\n{"id": 1, "text": "Hund \xff"}\n', ":2: not valid UTF-8"),
    ],
)
def test_hf_bad_rows_name_the_file(flores_plus_dir: Path, content: bytes, message: str) -> None:
    jsonl = flores_plus_dir / "dev" / "deu_Latn.jsonl"
    jsonl.write_bytes(content)
    with pytest.raises(InputError, match=f"^{jsonl}{message}"):
        load_parallel(f"hf:{flores_plus_dir}", ["en", "de"])


def test_hf_hub_id_uses_flores_plus_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: stand in for the hub and check what is asked of it."""
    import datasets

    calls = []

    def fake_load_dataset(repo: str, name: str, split: str) -> datasets.Dataset:
        calls.append((repo, name, split))
        texts = {"eng_Latn": ["One.", "Two."], "cmn_Hans": ["一。", "二。"]}[name]
        return datasets.Dataset.from_dict({"id": [1, 2], "text": texts})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("midalign.data.hub.hub_offline", lambda: False)
    monkeypatch.setattr("midalign.data.hub.hub_unreachable", lambda: None)  # the hub answers
    corpus = load_parallel("hf:flores_plus", ["en", "zh"], split="devtest")
    assert calls == [
        ("openlanguagedata/flores_plus", "eng_Latn", "devtest"),
        ("openlanguagedata/flores_plus", "cmn_Hans", "devtest"),
    ]
    assert corpus.texts == {"eng_Latn": ["One.", "Two."], "zho_Hans": ["一。", "二。"]}

    def offline(repo: str, name: str, split: str) -> datasets.Dataset:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match=r"config eng_Latn split dev: cannot load .*no network"):
        load_parallel("hf:openlanguagedata/flores_plus", ["en", "zh"])


# --- the dispatcher and the rules every reader shares ----------------------------------------


def test_unknown_spec_lists_valid_forms() -> None:
    for spec in ("wmt:foo", "flores", "sib200:", "Flores:/x"):
        with pytest.raises(InputError, match=r"unknown parallel data .*udhr:DIR.*flores:DIR"):
            load_parallel(spec, ["en", "de"])


def test_fewer_than_two_sentences_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "one.en").write_text("Hello.\n")
    (tmp_path / "one.de").write_text("Hallo.\n")
    with pytest.raises(InputError, match="1 aligned sentence.*at least 2"):
        load_parallel(f"parallel:{tmp_path}/one.en,{tmp_path}/one.de", [])
    with pytest.raises(InputError, match="max_sentences must be at least 2, not 1"):
        load_parallel(f"flores:{FIXTURES / 'flores'}", ["en", "de"], max_sentences=1)


def test_languages_are_normalised_and_deduplicated() -> None:
    corpus = load_parallel(f"flores:{FIXTURES / 'flores'}", ["de", "deu", "eng_Latn", "en"])
    assert list(corpus.texts) == ["deu_Latn", "eng_Latn"]
    with pytest.raises(InputError, match="unknown language code 'xx'"):
        load_parallel(f"flores:{FIXTURES / 'flores'}", ["en", "xx"])
