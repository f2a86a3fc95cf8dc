"""Topic classification on SIB-200 (beyond the paper): a FLoRes sentence, one of 7 topics.

The same sentences exist in 200+ languages, so transfer is measured on identical content; an
answer is a word or two, so generation is cheap on a CPU. Scores: exact-match accuracy and
macro-F1 over the topic labels that occur among references or predictions (sklearn's default
label set); an answer that is not one of the 7 topics is wrong and counted as unparseable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.data.hub import HubUnreachable, load_split, repo_configs, unknown_config
from midalign.data.reading import by_language, invisible_note, is_blank, read_tsv, select
from midalign.data.sources import Reader, folder, folder_with, is_hub_id
from midalign.errors import InputError
from midalign.evaluation.tasks.base import Example, Parsed, Task

LABELS = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)
SYSTEM = (
    "Classify the topic of the following sentence. Answer with exactly one of these topics: "
    + ", ".join(LABELS)
    + "."
)
SIB200 = "Davlan/sib200"


def parse_label(output: str) -> Parsed:
    """The topic an answer names: its first line, case and surrounding quotes/punctuation
    ignored; an answer that starts with a topic (``sports. The sentence ...``) counts."""
    line = next((x.strip() for x in output.splitlines() if x.strip()), "")
    text = re.sub(r"^[\s\"'*`]+|[\s\"'*`.!,;:]+$", "", line).lower()
    if text in LABELS:
        return Parsed(text, True)
    for label in LABELS:
        if re.match(re.escape(label) + r"\b", text):
            return Parsed(label, True)
    return Parsed(None, False)


def accuracy_macro_f1(references: Sequence[str], predictions: Sequence[str | None]) -> dict:
    """Accuracy and macro-F1 over the labels present in references or predictions."""
    pairs = list(zip(references, predictions, strict=True))
    accuracy = sum(r == p for r, p in pairs) / len(pairs) if pairs else 0.0
    present = [lab for lab in LABELS if lab in references or lab in predictions]
    f1s = []
    for label in present:
        tp = sum(r == label and p == label for r, p in pairs)
        n_pred = sum(p == label for _, p in pairs)
        n_gold = sum(r == label for r, _ in pairs)
        f1s.append(2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def _example(lang: str, id_: str, label: str, text: str, where: str) -> Example:
    if label not in LABELS:
        raise InputError(f"{where}: category {label!r} is not one of {', '.join(LABELS)}")
    if is_blank(text):
        raise InputError(f"{where}: empty text{invisible_note(text)}")
    return Example(id=id_, lang=lang, key=lang, text=text.strip(), reference=label)


def read_sib200_dir(root: str | Path, langs: Sequence[str], split: str) -> list[Example]:
    """SIB-200 TSVs: ``DIR/<flores_code>/<split>.tsv`` with ``index_id, category, text``."""
    root = folder("sib200", root)
    split = {"valid": "dev", "validation": "dev"}.get(split, split)
    files = {p.parent.name: p for p in sorted(root.glob(f"*/{split}.tsv"))}
    if not files:
        raise InputError(f"sib200:{root}: no <language>/{split}.tsv files")
    chosen = select(list(langs), by_language(files), f"sib200:{root} ({split})")
    examples = []
    for lang, path in chosen.items():
        for lineno, row in read_tsv(path, ("index_id", "category", "text")):
            examples.append(
                _example(lang, row["index_id"], row["category"], row["text"], f"{path}:{lineno}")
            )
    return examples


def read_sib200_hub(source: str, langs: Sequence[str], split: str) -> list[Example]:
    """Hub ``Davlan/sib200``, or a local copy of its repository or of its Parquet conversion.

    The repo's card declares one config per FLoRes code (``load_dataset("Davlan/sib200",
    "deu_Latn")`` from main): splits ``train``, ``validation``, ``test``, the files
    ``data/<code>/{train,dev,test}.tsv`` with columns ``index_id``, ``category``, ``text``.
    While the repo was a loading script (``sib200.py``), the hub's Parquet conversion of it was
    what ``datasets`` could read (branch ``refs/convert/parquet``: ``<code>/<split>/0000.parquet``,
    the same splits and columns); it is read when main does not load, and a local folder without
    the repo's README is taken for a copy of it."""
    if not langs:
        raise InputError(f"{source}: give --langs (one config per language)")
    hub_split = {"dev": "validation", "valid": "validation"}.get(split, split)
    local = Path(source).expanduser()
    export_copy = local.is_dir() and not (local / "README.md").is_file()
    examples = []
    for lang in langs:
        where = f"hf:{source} config {lang} split {hub_split}"
        if export_copy:
            table = load_split(where, source, lang, hub_split, export=True)
        else:
            table = _main_or_export(where, source, lang, hub_split)
        for n, row in enumerate(table, 1):
            examples.append(
                _example(
                    lang,
                    str(row.get("index_id", n)),
                    str(row.get("category")),
                    str(row.get("text") or ""),
                    f"{where} row {n}",
                )
            )
    return examples


def _main_or_export(where: str, source: str, config: str, split: str) -> Any:
    """``config`` from main, else from the Parquet conversion; when neither loads, a config the
    repo lacks is named with the nearest it has, and any other failure is main's."""
    try:
        return load_split(where, source, config, split)
    except HubUnreachable:
        raise
    except InputError as main_error:
        try:
            return load_split(where, source, config, split, export=True)
        except HubUnreachable:
            raise
        except InputError:
            configs = repo_configs(source)
            if configs is not None and config not in configs:
                raise unknown_config(where, config, configs) from None
            raise main_error from None


READERS: dict[str, Reader[list[Example]]] = {  # format name -> reader, sniffed in this order
    "sib200": Reader(
        read_sib200_dir, "sib200:DIR (SIB-200 <code>/<split>.tsv)", folder_with("*/*.tsv")
    ),
    "hf": Reader(
        read_sib200_hub,
        "hf:Davlan/sib200 or hf:DIR (a copy of the repo, or of its parquet conversion, "
        "<code>/<split>/*.parquet)",
        lambda s, path: path.is_dir() or is_hub_id(s),
    ),
}


class Topic(Task):
    name = "topic"
    metric = "accuracy"
    max_new_tokens = 8
    readers = READERS
    data_name = "topic"

    def instruction(self, example: Example, zero_shot: bool = False) -> tuple[str | None, str]:
        return SYSTEM, example.text

    def target(self, example: Example) -> str:
        return example.reference

    def choices(self, example: Example) -> Sequence[str]:
        return LABELS

    def parse(self, output: str, example: Example) -> Parsed:
        return parse_label(output)

    def score(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, Any]:
        return accuracy_macro_f1([ex.reference for ex in examples], predictions)
