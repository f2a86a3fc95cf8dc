"""Named entities as JSON (Universal NER, the aya ``templated_uner_llm`` format).

Prompt (paper, Appendix D.2): one user turn with the instruction, the Iguazu example and the
sentence. Target: ``{"Results": [{"TypeName": "LOC", "Text": "Iguazu Falls", "Start": 81,
"End": 93}, ...]}`` with character offsets into the sentence (End exclusive). Score: micro-F1
over (type, text) tuples, counted as multisets per sentence; an answer that is not valid JSON of
this shape counts as no entities and is reported. Only PER, ORG and LOC are asked for (the
prompt's categories): UNER's OTH spans are left out of the references.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.data.hub import load_hf_table, load_split
from midalign.data.reading import by_language, conll_sentences, select
from midalign.data.sources import Reader, folder, folder_with, is_hub_id
from midalign.errors import InputError
from midalign.evaluation.tasks.base import Example, Parsed, Task
from midalign.languages import to_flores

log = logging.getLogger(__name__)

TYPES = ("PER", "ORG", "LOC")
AYA_CONFIG = "templated_uner_llm"  # aya_collection's UNER, templated as the paper's JSON task
UNER_TYPES = (*TYPES, "OTH")  # every type UNER v1 tags; a tag of any other type is an error
Entity = tuple[str, str, int, int]  # (type, text, start, end)


def format_entities(entities: Sequence[Entity]) -> str:
    """The JSON target (one line, non-ASCII kept)."""
    results = [{"TypeName": t, "Text": x, "Start": a, "End": b} for t, x, a, b in entities]
    return json.dumps({"Results": results}, ensure_ascii=False)


EXAMPLE_SENTENCE = "Where in the world is Iguazu?"
EXAMPLE_RESULT = format_entities([("LOC", "Iguazu", 22, 28)])
PROMPT = (
    "Please identify all the named entities mentioned in the input sentence provided below. Use "
    "only the categories: PER - person, ORG - organization, and LOC - location. Remember, "
    "nationalities are neither locations nor organizations, and organizations can represent "
    "other groups of people. Pay attention to the provided example. You should only output the "
    "results in JSON format, following a similar structure to the example result provided. "
    f"Example sentence and results: {EXAMPLE_SENTENCE} {EXAMPLE_RESULT} Considering the input "
    "sentence below, what is the output result? "
)


def json_complete(text: str) -> bool:
    """True once ``text`` holds a whole bracketed JSON value (the answer is finished): the
    first ``{`` or ``[`` has been closed, brackets inside strings not counted."""
    depth, in_string, escaped, opened = 0, False, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
            opened = True
        elif c in "}]":
            depth -= 1
            if opened and depth <= 0:
                return True
    return False


def parse_entities(output: str) -> Parsed:
    """Entities from an answer: the first JSON object in it (``"Results": [...]`` without the
    outer braces, as the paper prints it, is accepted too). Anything else: no entities, not ok."""
    text = output.strip()
    start = text.find("{")
    if text.startswith('"Results"'):
        text, start = "{" + text + "}", 0
    if start < 0:
        return Parsed([], False)
    try:
        obj, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):  # also an int over 4300 digits, or nesting too deep
        return Parsed([], False)
    results = obj.get("Results") if isinstance(obj, dict) else None
    if not isinstance(results, list):
        return Parsed([], False)
    entities: list[Entity] = []
    ok = True
    for item in results:
        if not isinstance(item, dict):
            ok = False
            continue
        type_, span = item.get("TypeName"), item.get("Text")
        if not isinstance(type_, str) or not isinstance(span, str):
            ok = False
            continue
        a, b = item.get("Start"), item.get("End")
        entities.append(
            (type_, span, a if isinstance(a, int) else -1, b if isinstance(b, int) else -1)
        )
    return Parsed(entities, ok)


def entity_f1(gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity]]) -> dict:
    """Micro precision/recall/F1 over (type, text) tuples, multisets per sentence."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        g_count = Counter((t, x) for t, x, *_ in g)
        p_count = Counter((t, x) for t, x, *_ in p)
        tp += sum((g_count & p_count).values())
        n_gold += sum(g_count.values())
        n_pred += sum(p_count.values())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "gold": n_gold, "predicted": n_pred}


# --------------------------------------------------------------------------- readers


def _entities_from_iob2(
    path: Path, text: str, rows: list[tuple[int, str, str]]
) -> tuple[str, list[Entity]]:
    """Spans from IOB2 tags, conlleval style: ``I-X`` after ``O`` or after another type opens
    a new entity (conlleval's reading; strict IOB2 would call it an error)."""
    offsets, at = [], 0
    for lineno, token, _ in rows:
        start = text.find(token, at)
        if start < 0:
            raise InputError(f"{path}:{lineno}: token {token!r} not found in '# text' {text!r}")
        offsets.append((start, start + len(token)))
        at = start + len(token)
    spans: list[list[Any]] = []
    prev = "O"
    for (_, _, tag), (a, b) in zip(rows, offsets, strict=True):
        if tag == "O":
            prev = tag
            continue
        type_ = tag[2:]
        if tag[0] == "I" and prev != "O" and prev[2:] == type_:
            spans[-1][2] = b
        else:
            spans.append([type_, a, b])
        prev = tag
    return text, [(t, text[a:b], a, b) for t, a, b in spans if t in TYPES]


def read_iob2(path: Path, lang: str) -> list[Example]:
    """UNER v1 IOB2: ``# text = ...`` header, then ``idx token tag ...`` lines (tab-separated,
    tag in the third column: O, B-X or I-X with X one of :data:`UNER_TYPES`; any other tag is an
    error rather than a gold entity silently dropped). Without ``# text`` the tokens are joined
    by spaces."""
    examples: list[Example] = []
    for header, lines in conll_sentences(path):
        rows: list[tuple[int, str, str]] = []
        for lineno, fields in lines:
            if len(fields) < 3 or not fields[1]:
                line = "\t".join(fields)
                raise InputError(
                    f"{path}:{lineno}: expected tab-separated index, token, IOB2 tag; got {line!r}"
                )
            tag = fields[2]
            if tag != "O" and not (tag[:2] in ("B-", "I-") and tag[2:] in UNER_TYPES):
                raise InputError(
                    f"{path}:{lineno}: unknown tag {tag} (expected O, or B-/I- with "
                    f"{', '.join(UNER_TYPES[:-1])} or {UNER_TYPES[-1]})"
                )
            rows.append((lineno, fields[1], tag))
        text = header.get("text") or " ".join(token for _, token, _ in rows)
        text, entities = _entities_from_iob2(path, text, rows)
        examples.append(
            Example(
                id=header.get("sent_id", f"{path.name}:{rows[0][0]}"),
                lang=lang,
                key=lang,
                text=text,
                reference=entities,
            )
        )
    return examples


def read_uner(root: str | Path, langs: Sequence[str], split: str) -> list[Example]:
    """UNER v1: ``DIR/<lang>_<treebank>-ud-<split>.iob2`` (or ``<lang>-ud-<split>.iob2``)."""
    root = folder("uner", root)
    split = {"valid": "dev", "validation": "dev"}.get(split, split)
    files: dict[str, Path] = {}
    for path in sorted(root.glob(f"*-ud-{split}.iob2")):
        files.setdefault(path.name.split("-")[0].split("_")[0], path)
    if not files:
        raise InputError(f"uner:{root}: no *-ud-{split}.iob2 files")
    chosen = select(list(langs), by_language(files), f"uner:{root} ({split})")
    return [ex for lang, path in chosen.items() for ex in read_iob2(path, lang)]


def read_aya(source: str, langs: Sequence[str], split: str) -> list[Example]:
    """aya_collection ``templated_uner_llm`` (hub ``CohereLabs/aya_collection``, formerly
    ``CohereForAI/``, or a local copy of that repo with its README, or a local parquet/jsonl of
    its schema): rows with ``inputs`` (the instruction ending in the sentence), ``targets`` (the
    JSON answer), ``language`` (ISO 639-3) and ``script`` (ISO 15924); the language is the two
    together (``zho`` + ``Hant`` → ``zho_Hant``, ``srp`` + ``Latn`` → ``srp_Latn``), or the
    language alone where a row has no script. The sentence is :func:`_aya_sentence`; the
    entities come from the target. Rows whose language is no code, or with no sentence, are
    left out and counted in a warning; a language asked for that the rows have only in another
    script is an error naming that script.

    The repo is parquet with one config per folder, declared in its README's ``configs:``
    (``templated_uner_llm/{train,validation,test}-00000-of-00001.parquet``; columns ``id``,
    ``inputs``, ``targets``, ``dataset_name``, ``sub_dataset_name``, ``task_type``,
    ``template_id``, ``language``, ``script``, ``split``; from the repo's file tree and card)."""
    local = Path(source).expanduser()
    hub_split = {"dev": "validation", "valid": "validation"}.get(split, split)
    if local.exists() and not (local / "README.md").is_file():
        files = sorted(local.rglob(f"*{hub_split}*.parquet")) if local.is_dir() else [local]
        if not files:
            raise InputError(f"aya:{local}: no {hub_split}*.parquet files")
        builder = "json" if files[0].suffix in (".jsonl", ".json") else "parquet"
        table = load_hf_table(
            str(local), builder, data_files=[str(f) for f in files], split="train"
        )
    else:
        where = f"hf:{source} config {AYA_CONFIG} split {hub_split}"
        table = load_split(where, source, AYA_CONFIG, hub_split)
    examples = []
    no_code: Counter[str] = Counter()  # language[_script] that is no language code -> rows
    no_sentence: list[int] = []  # rows whose inputs end in no sentence
    not_in_sentence: list[int] = []  # rows with an entity the cut sentence does not hold
    seen: set[str] = set()  # every language the rows have, asked for or not
    for n, row in enumerate(table, 1):
        where = f"{source} row {n}"
        language, script = str(row.get("language") or ""), str(row.get("script") or "")
        code = f"{language}_{script}" if script else language
        try:
            lang = to_flores(code)
        except InputError:
            no_code[code] += 1
            continue
        seen.add(lang)
        if langs and lang not in langs:
            continue
        inputs, targets = row.get("inputs"), row.get("targets")
        if not isinstance(inputs, str) or not isinstance(targets, str):
            raise InputError(f"{where}: needs string columns 'inputs' and 'targets'")
        parsed = parse_entities(targets)
        if not parsed.ok:
            raise InputError(f"{where}: 'targets' is not the Results JSON: {targets[:120]!r}")
        sentence = _aya_sentence(inputs)
        if not sentence:
            no_sentence.append(n)
            continue
        entities = [e for e in parsed.value if e[0] in TYPES]
        if any(text not in sentence for _, text, *_ in entities):
            not_in_sentence.append(n)
        examples.append(Example(str(row.get("id", n)), lang, lang, sentence, entities))
    if no_code:
        listed = ", ".join(f"{code!r} ({k})" for code, k in no_code.most_common(5))
        log.warning(
            "aya:%s: rows whose language/script is no language code left out: %s", source, listed
        )
    if no_sentence:
        log.warning(
            "aya:%s: %d row(s) without a sentence after the template left out (first: row %d)",
            source,
            len(no_sentence),
            no_sentence[0],
        )
    if not_in_sentence:
        log.warning(
            "aya:%s: %d row(s) with entities not in the sentence cut from 'inputs', a template "
            "cut wrong? (first: row %d)",
            source,
            len(not_in_sentence),
            not_in_sentence[0],
        )
    for lang in [lang for lang in langs if lang not in seen]:  # in another script, maybe
        others = sorted(code for code in seen if code[:3] == lang[:3])
        if others:
            raise InputError(
                f"aya:{source}: no {lang} rows, but {', '.join(others)}: ask for that script "
                f"(--langs {others[0]})"
            )
    return examples


# How aya's UNER templates end, just before the sentence: the paper authors' list, one per
# language of the task (dannigt/mid-align, scripts/utils.py, ``uner_input_delimiter``; hr and
# sr share one). A template not among them is cut at its last non-empty line.
AYA_QUESTIONS = (
    "what is the output result?",  # en
    "I betragtning af sætningen nedenfor, hvad er resultatet?",  # da
    "S obzirom na niže navedenu ulaznu rečenicu, koji je konačni izlaz?",  # hr, sr
    "Considerando a frase de entrada abaixo, qual é o resultado produzido?",  # pt
    "Aký bude výstup vzhľadom na vstup uvedený nižšie?",  # sk
    "Med tanke på meningen nedan, vad är resultatet?",  # sv
    "考慮到下麵的輸入句子，輸出結果是什麼？",  # zh
)


def _aya_sentence(inputs: str) -> str:
    """The sentence a templated prompt ends in: the last non-empty line after the template's
    closing question (on the question's line or below it; translated templates span several
    lines and may end in a blank one), or of the whole prompt when no known question is in
    it; "" when there is none."""
    at, question = max((inputs.rfind(q), q) for q in AYA_QUESTIONS)
    tail = inputs[at + len(question) :] if at >= 0 else inputs
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


READERS: dict[str, Reader[list[Example]]] = {  # format name -> reader, sniffed in this order
    "uner": Reader(
        read_uner, "uner:DIR (UNER <lang>_<treebank>-ud-<split>.iob2)", folder_with("*.iob2")
    ),
    "aya": Reader(
        read_aya,
        "aya:FILE/DIR (templated_uner_llm parquet, or a copy of the repo) | "
        "aya:CohereLabs/aya_collection or hub id",
        lambda s, path: path.exists() or is_hub_id(s),
    ),
}


class JsonNER(Task):
    name = "ner"
    metric = "f1"
    max_new_tokens = 200
    readers = READERS
    data_name = "NER"

    def stop(self, answer: str) -> bool:
        """A JSON answer may span lines: it ends where its outer bracket closes."""
        return json_complete(answer)

    def instruction(self, example: Example, zero_shot: bool = False) -> tuple[str | None, str]:
        return None, PROMPT + example.text

    def target(self, example: Example) -> str:
        return format_entities(example.reference)

    def parse(self, output: str, example: Example) -> Parsed:
        return parse_entities(output)

    def score(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, Any]:
        return entity_f1([ex.reference for ex in examples], predictions)
