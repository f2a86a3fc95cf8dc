"""Language codes: ISO 639-1/639-3/FLoRes in, FLoRes-200 out; names; presets."""

from __future__ import annotations

import re

import pytest

from midalign.errors import InputError
from midalign.languages import (
    FLORES_NAMES,
    PRESETS,
    iso639_1,
    iso639_3,
    language_name,
    parse_langs,
    to_flores,
)


@pytest.mark.parametrize(
    ("code", "flores"),
    [
        ("de", "deu_Latn"),
        ("deu", "deu_Latn"),
        ("deu_Latn", "deu_Latn"),
        ("DEU_latn", "deu_Latn"),
        (" en ", "eng_Latn"),
        ("ja", "jpn_Jpan"),
        ("ru", "rus_Cyrl"),
        ("sr", "srp_Cyrl"),
        # macrolanguages go to the individual language FLoRes chose
        ("zh", "zho_Hans"),
        ("zho", "zho_Hans"),
        ("ar", "arb_Arab"),
        ("ara", "arb_Arab"),
        ("ara_Arab", "arb_Arab"),
        ("sw", "swh_Latn"),
        ("swa", "swh_Latn"),
        ("fa", "pes_Arab"),
        ("lv", "lvs_Latn"),
        ("lav", "lvs_Latn"),
        ("mn", "khk_Cyrl"),
        ("ms", "zsm_Latn"),
        ("az", "azj_Latn"),
        ("uz", "uzn_Latn"),
        ("ps", "pbt_Arab"),
        ("om", "gaz_Latn"),
        ("no", "nob_Latn"),
        ("sq", "als_Latn"),
        ("ne", "npi_Deva"),
        ("yi", "ydd_Hebr"),
        ("qu", "quy_Latn"),
        ("et", "est_Latn"),
        ("est", "est_Latn"),
        # other spellings of FLoRes languages
        ("cmn_Hans", "zho_Hans"),
        ("cmn", "zho_Hans"),
        ("cmn_Hant", "zho_Hant"),
        ("zh-Hant", "zho_Hant"),
        ("fil", "tgl_Latn"),
        # two scripts in FLoRes: the bare code means the main one
        ("arb", "arb_Arab"),
        ("arb_Latn", "arb_Latn"),
        ("min", "min_Latn"),
        ("ks", "kas_Arab"),
        # valid language + valid script outside the list: kept as given
        ("jav_Java", "jav_Java"),
        ("srp_Latn", "srp_Latn"),
        ("lat_Latn", "lat_Latn"),
    ],
)
def test_to_flores(code: str, flores: str) -> None:
    assert to_flores(code) == flores


@pytest.mark.parametrize("bad", ["xx", "qqq", "deu_Xxxx", "english", "de_DE", "", "d", "deu_Lat"])
def test_unknown_codes_name_the_code_and_the_accepted_forms(bad: str) -> None:
    with pytest.raises(InputError) as e:
        to_flores(bad)
    assert str(e.value) == (
        f"unknown language code {bad!r} "
        "(use ISO 639-1, ISO 639-3 or FLoRes codes such as de, deu, deu_Latn)"
    )


def test_language_outside_flores_needs_a_script() -> None:
    with pytest.raises(InputError, match=r"'kw' \(Cornish\).*e\.g\. cor_Latn"):
        to_flores("kw")


def test_flores_list_has_204_well_formed_codes() -> None:
    assert len(FLORES_NAMES) == 204
    assert all(re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", c) for c in FLORES_NAMES)
    assert {"sat_Olck", "arb_Latn", "min_Arab", "zho_Hant", "taq_Tfng"} <= FLORES_NAMES.keys()


def test_names_and_iso_codes() -> None:
    assert language_name("de") == "German"
    assert language_name("zho_Hans") == "Chinese"
    assert language_name("ar") == "Arabic"
    assert language_name("sw") == "Swahili"
    assert language_name("jav_Java") == "Javanese"  # outside the list: pycountry's name
    assert iso639_1("deu_Latn") == "de"
    assert iso639_1("arb_Arab") == "ar"  # through the macrolanguage
    assert iso639_1("swh") == "sw"
    assert iso639_1("nob_Latn") == "nb"  # the individual language's own code comes first
    assert iso639_1("ace_Latn") is None
    assert iso639_3("de") == "deu"
    assert iso639_3("ar") == "arb"
    assert iso639_3("zh") == "zho"


def test_parse_langs_dedups_keeps_order_and_expands_presets() -> None:
    assert parse_langs("ja, de,deu,deu_Latn,sw") == ["jpn_Jpan", "deu_Latn", "swh_Latn"]
    assert parse_langs("demo") == [
        "eng_Latn",
        "deu_Latn",
        "fra_Latn",
        "spa_Latn",
        "rus_Cyrl",
        "zho_Hans",
        "jpn_Jpan",
        "swh_Latn",
    ]
    assert parse_langs("it,demo")[:3] == ["ita_Latn", "eng_Latn", "deu_Latn"]
    with pytest.raises(InputError, match="no language codes"):
        parse_langs(" , ")
    with pytest.raises(InputError, match="'xx'"):
        parse_langs("de,xx")


def test_paper35_is_appendix_c() -> None:
    paper35 = parse_langs("paper35")
    assert len(paper35) == 35
    # Table 10's slot-filling and MT languages ...
    table10 = "af az ar cs cy de el en es fr he hi is ja jv ru sw th tl tr uk ur zh"
    # ... plus the 12 Appendix C adds
    extra = "am bn it hu hy id kn ka mn km ko lv"
    assert paper35 == [to_flores(c) for c in f"{table10} {extra}".split()]
    # with UNER's languages they are the 41 of the shared data README
    assert len(set(paper35) | set(PRESETS["uner"])) == 41
    assert PRESETS["uner"] == parse_langs("en,pt,zh,da,hr,sk,sr,sv")


def test_every_flores_code_is_its_own_code() -> None:
    """ISO 639-3 retired ajp (South Levantine Arabic) in 2023, merging it into apc, and
    pycountry dropped it; FLoRes-200 still names it ajp_Arab (FLORES+ 2.0: apc_Arab_sout3123)."""
    assert {code: to_flores(code) for code in FLORES_NAMES} == {c: c for c in FLORES_NAMES}
    assert to_flores("ajp") == "ajp_Arab"
    assert language_name("ajp") == "South Levantine Arabic"
    assert iso639_1("ajp_Arab") is None
