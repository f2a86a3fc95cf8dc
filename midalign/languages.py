"""Language codes: everything user-facing is normalised to FLoRes-200 codes (``deu_Latn``).

Every data set names its languages differently (UDHR by ISO 639-3, Tatoeba by LASER's 639-3,
FLoRes by ``xxx_Yyyy``, users by ``de``), and a probe compares languages across all of them, so
one code per language is needed. FLoRes-200's is the natural choice: it is what the paper
reports, and it pins the script. ISO 639-1 codes go through ``pycountry`` to ISO 639-3;
macrolanguages map to the individual language FLoRes chose (``ar`` → ``arb_Arab``, ``sw`` →
``swh_Latn``), so ``ar``, ``ara`` and ``arb`` all meet in one code.
"""

from __future__ import annotations

import re

import pycountry

from midalign.errors import InputError

# The 204 FLoRes-200 codes. Names are FLoRes's own, except that the variant FLoRes picked for
# a macrolanguage carries the macrolanguage's everyday name ("Arabic", not "Modern Standard
# Arabic"): the names end up in MT prompts, where the everyday name is what a model knows.
_FLORES_200 = """\
ace_Arab Acehnese (Arabic script)
ace_Latn Acehnese (Latin script)
acm_Arab Mesopotamian Arabic
acq_Arab Ta'izzi-Adeni Arabic
aeb_Arab Tunisian Arabic
afr_Latn Afrikaans
ajp_Arab South Levantine Arabic
aka_Latn Akan
als_Latn Albanian
amh_Ethi Amharic
apc_Arab North Levantine Arabic
arb_Arab Arabic
arb_Latn Arabic (Romanized)
ars_Arab Najdi Arabic
ary_Arab Moroccan Arabic
arz_Arab Egyptian Arabic
asm_Beng Assamese
ast_Latn Asturian
awa_Deva Awadhi
ayr_Latn Aymara
azb_Arab South Azerbaijani
azj_Latn Azerbaijani
bak_Cyrl Bashkir
bam_Latn Bambara
ban_Latn Balinese
bel_Cyrl Belarusian
bem_Latn Bemba
ben_Beng Bengali
bho_Deva Bhojpuri
bjn_Arab Banjar (Arabic script)
bjn_Latn Banjar (Latin script)
bod_Tibt Standard Tibetan
bos_Latn Bosnian
bug_Latn Buginese
bul_Cyrl Bulgarian
cat_Latn Catalan
ceb_Latn Cebuano
ces_Latn Czech
cjk_Latn Chokwe
ckb_Arab Central Kurdish
crh_Latn Crimean Tatar
cym_Latn Welsh
dan_Latn Danish
deu_Latn German
dik_Latn Southwestern Dinka
dyu_Latn Dyula
dzo_Tibt Dzongkha
ell_Grek Greek
eng_Latn English
epo_Latn Esperanto
est_Latn Estonian
eus_Latn Basque
ewe_Latn Ewe
fao_Latn Faroese
fij_Latn Fijian
fin_Latn Finnish
fon_Latn Fon
fra_Latn French
fur_Latn Friulian
fuv_Latn Nigerian Fulfulde
gaz_Latn Oromo
gla_Latn Scottish Gaelic
gle_Latn Irish
glg_Latn Galician
grn_Latn Guarani
guj_Gujr Gujarati
hat_Latn Haitian Creole
hau_Latn Hausa
heb_Hebr Hebrew
hin_Deva Hindi
hne_Deva Chhattisgarhi
hrv_Latn Croatian
hun_Latn Hungarian
hye_Armn Armenian
ibo_Latn Igbo
ilo_Latn Ilocano
ind_Latn Indonesian
isl_Latn Icelandic
ita_Latn Italian
jav_Latn Javanese
jpn_Jpan Japanese
kab_Latn Kabyle
kac_Latn Jingpho
kam_Latn Kamba
kan_Knda Kannada
kas_Arab Kashmiri (Arabic script)
kas_Deva Kashmiri (Devanagari script)
kat_Geor Georgian
kaz_Cyrl Kazakh
kbp_Latn Kabiyè
kea_Latn Kabuverdianu
khk_Cyrl Mongolian
khm_Khmr Khmer
kik_Latn Kikuyu
kin_Latn Kinyarwanda
kir_Cyrl Kyrgyz
kmb_Latn Kimbundu
kmr_Latn Kurdish
knc_Arab Central Kanuri (Arabic script)
knc_Latn Central Kanuri (Latin script)
kon_Latn Kikongo
kor_Hang Korean
lao_Laoo Lao
lij_Latn Ligurian
lim_Latn Limburgish
lin_Latn Lingala
lit_Latn Lithuanian
lmo_Latn Lombard
ltg_Latn Latgalian
ltz_Latn Luxembourgish
lua_Latn Luba-Kasai
lug_Latn Ganda
luo_Latn Luo
lus_Latn Mizo
lvs_Latn Latvian
mag_Deva Magahi
mai_Deva Maithili
mal_Mlym Malayalam
mar_Deva Marathi
min_Arab Minangkabau (Arabic script)
min_Latn Minangkabau (Latin script)
mkd_Cyrl Macedonian
mlt_Latn Maltese
mni_Beng Meitei (Bengali script)
mos_Latn Mossi
mri_Latn Maori
mya_Mymr Burmese
nld_Latn Dutch
nno_Latn Norwegian Nynorsk
nob_Latn Norwegian Bokmål
npi_Deva Nepali
nso_Latn Northern Sotho
nus_Latn Nuer
nya_Latn Nyanja
oci_Latn Occitan
ory_Orya Odia
pag_Latn Pangasinan
pan_Guru Punjabi
pap_Latn Papiamento
pbt_Arab Pashto
pes_Arab Persian
plt_Latn Malagasy
pol_Latn Polish
por_Latn Portuguese
prs_Arab Dari
quy_Latn Quechua
ron_Latn Romanian
run_Latn Rundi
rus_Cyrl Russian
sag_Latn Sango
san_Deva Sanskrit
sat_Olck Santali
scn_Latn Sicilian
shn_Mymr Shan
sin_Sinh Sinhala
slk_Latn Slovak
slv_Latn Slovenian
smo_Latn Samoan
sna_Latn Shona
snd_Arab Sindhi
som_Latn Somali
sot_Latn Southern Sotho
spa_Latn Spanish
srd_Latn Sardinian
srp_Cyrl Serbian
ssw_Latn Swati
sun_Latn Sundanese
swe_Latn Swedish
swh_Latn Swahili
szl_Latn Silesian
tam_Taml Tamil
taq_Latn Tamasheq (Latin script)
taq_Tfng Tamasheq (Tifinagh script)
tat_Cyrl Tatar
tel_Telu Telugu
tgk_Cyrl Tajik
tgl_Latn Tagalog
tha_Thai Thai
tir_Ethi Tigrinya
tpi_Latn Tok Pisin
tsn_Latn Tswana
tso_Latn Tsonga
tuk_Latn Turkmen
tum_Latn Tumbuka
tur_Latn Turkish
twi_Latn Twi
tzm_Tfng Central Atlas Tamazight
uig_Arab Uyghur
ukr_Cyrl Ukrainian
umb_Latn Umbundu
urd_Arab Urdu
uzn_Latn Uzbek
vec_Latn Venetian
vie_Latn Vietnamese
war_Latn Waray
wol_Latn Wolof
xho_Latn Xhosa
ydd_Hebr Yiddish
yor_Latn Yoruba
yue_Hant Yue Chinese
zho_Hans Chinese
zho_Hant Chinese (Traditional)
zsm_Latn Malay
zul_Latn Zulu
"""

FLORES_NAMES: dict[str, str] = dict(
    line.split(" ", 1) for line in _FLORES_200.splitlines() if line.strip()
)

# Macrolanguage (ISO 639-3) -> the individual language FLoRes-200 covers.
_MACRO_TO_FLORES = {
    "ara": "arb",
    "aym": "ayr",
    "aze": "azj",
    "din": "dik",
    "fas": "pes",
    "ful": "fuv",
    "kau": "knc",
    "kur": "kmr",
    "lav": "lvs",
    "mlg": "plt",
    "mon": "khk",
    "msa": "zsm",
    "nep": "npi",
    "nor": "nob",
    "ori": "ory",
    "orm": "gaz",
    "pus": "pbt",
    "que": "quy",
    "sqi": "als",
    "swa": "swh",
    "tmh": "taq",
    "uzb": "uzn",
    "yid": "ydd",
}
# Other names in use for a FLoRes language: flores_plus and Tatoeba say cmn for Mandarin
# (FLoRes-200: zho), FLEURS says fil, some corpora ekk for Standard Estonian.
_ALIASES = {"cmn": "zho", "fil": "tgl", "ekk": "est"}
# Languages FLoRes has in two scripts: the one a bare language code means.
_DEFAULT_SCRIPT = {
    "ace": "Latn",
    "arb": "Arab",
    "bjn": "Latn",
    "kas": "Arab",
    "knc": "Latn",
    "min": "Latn",
    "taq": "Latn",
    "zho": "Hans",
}
_FLORES_TO_MACRO = {v: k for k, v in _MACRO_TO_FLORES.items()}
_SCRIPTS: dict[str, list[str]] = {}
for _code in FLORES_NAMES:
    _SCRIPTS.setdefault(_code[:3], []).append(_code[4:])

_CODE_RE = re.compile(r"([A-Za-z]{2,3})(?:[_-]([A-Za-z]{4}))?")

PRESETS: dict[str, list[str]] = {
    # The paper's §2 retrieval analysis (Appendix C): the 23 languages of slot filling and
    # machine translation (Table 10) plus am, bn, it, hu, hy, id, kn, ka, mn, km, ko, lv.
    "paper35": (
        "afr_Latn azj_Latn arb_Arab ces_Latn cym_Latn deu_Latn ell_Grek eng_Latn spa_Latn "
        "fra_Latn heb_Hebr hin_Deva isl_Latn jpn_Jpan jav_Latn rus_Cyrl swh_Latn tha_Thai "
        "tgl_Latn tur_Latn ukr_Cyrl urd_Arab zho_Hans amh_Ethi ben_Beng ita_Latn hun_Latn "
        "hye_Armn ind_Latn kan_Knda kat_Geor khk_Cyrl khm_Khmr kor_Hang lvs_Latn"
    ).split(),
    # JSON NER (UNER): trained on en, pt, zh; tested on da, hr, sk, sr, sv.
    "uner": "eng_Latn por_Latn zho_Hans dan_Latn hrv_Latn slk_Latn srp_Cyrl swe_Latn".split(),
    # Small, typologically spread, all in UDHR: the default for a quick probe.
    "demo": "eng_Latn deu_Latn fra_Latn spa_Latn rus_Cyrl zho_Hans jpn_Jpan swh_Latn".split(),
}


def _unknown(code: str) -> InputError:
    return InputError(
        f"unknown language code {code!r} "
        "(use ISO 639-1, ISO 639-3 or FLoRes codes such as de, deu, deu_Latn)"
    )


def _iso639_3(lang: str) -> str | None:
    """A 2- or 3-letter code as a valid ISO 639-3 code, or None."""
    record = pycountry.languages.get(**{"alpha_2" if len(lang) == 2 else "alpha_3": lang})
    return record.alpha_3 if record is not None else None


def to_flores(code: str) -> str:
    """The FLoRes-200 code for ``de``, ``deu``, ``deu_Latn`` (or ``cmn_Hans``, ``ara_Arab``).

    A valid ISO 639-3 code with a valid ISO 15924 script that FLoRes lacks (``jav_Java``) is
    kept as given, so that data in other scripts (UDHR has many) can still be named.
    """
    match = _CODE_RE.fullmatch(code.strip())
    if match is None:
        raise _unknown(code)
    given = match.group(1).lower()
    # a FLoRes language stands even where ISO 639-3 has retired its code (ajp, merged into apc)
    lang = given if given in _SCRIPTS else _iso639_3(given)
    if lang is None:
        raise _unknown(code)
    lang = _ALIASES.get(lang, _MACRO_TO_FLORES.get(lang, lang))
    if match.group(2):
        flores = f"{lang}_{match.group(2).title()}"
        if flores in FLORES_NAMES or pycountry.scripts.get(alpha_4=flores[4:]) is not None:
            return flores
        raise _unknown(code)
    scripts = _SCRIPTS.get(lang)
    if scripts is None:
        name = pycountry.languages.get(alpha_3=lang).name
        raise InputError(
            f"language {code!r} ({name}) is not in FLoRes-200, so its script is unknown: "
            f"give it with the script, e.g. {lang}_Latn"
        )
    return f"{lang}_{_DEFAULT_SCRIPT.get(lang, scripts[0])}"


def language_name(code: str) -> str:
    """English name of a language, as MT prompts and plots say it ("German", "Chinese")."""
    flores = to_flores(code)
    if flores in FLORES_NAMES:
        return FLORES_NAMES[flores]
    return pycountry.languages.get(alpha_3=flores[:3]).name


def iso639_3(code: str) -> str:
    """ISO 639-3 code of a language as FLoRes names it (``zh`` → ``zho``, ``ar`` → ``arb``)."""
    return to_flores(code)[:3]


def iso639_1(code: str) -> str | None:
    """ISO 639-1 code (``arb_Arab`` → ``ar``), or None for languages that have none."""
    lang = iso639_3(code)
    for alpha_3 in (lang, _FLORES_TO_MACRO.get(lang)):
        record = pycountry.languages.get(alpha_3=alpha_3) if alpha_3 else None
        if record is not None and hasattr(record, "alpha_2"):
            return record.alpha_2
    return None


def parse_langs(spec: str, option: str = "--langs") -> list[str]:
    """``"de,ja,sw"`` or a preset (``paper35``, ``uner``, ``demo``) → FLoRes codes; an unknown
    code is an error naming ``option``.

    Duplicates are dropped and order is kept, since the order fixes rows and columns of the
    pair matrix and the heatmaps.
    """
    codes: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        preset = PRESETS.get(item.lower())
        if preset is not None:
            codes.extend(preset)
            continue
        try:
            codes.append(to_flores(item))
        except InputError as e:
            raise InputError(f"{option}: {e}") from None
    if not codes:
        raise InputError(
            f"{option}: no language codes in {spec!r} (give codes such as de,ja,sw or a preset: "
            f"{', '.join(PRESETS)})"
        )
    return list(dict.fromkeys(codes))
