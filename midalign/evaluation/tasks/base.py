"""What every transfer task is made of: the :class:`Task` base class and its examples.

A task reads examples from a data set and gives the instruction a model is given (the paper's
Appendix D.2 prompts), the target it is trained to answer, a parser of what it answers, and a
scorer.

A task knows nothing of models: :mod:`midalign.modeling.generate` turns instructions into outputs
and :func:`midalign.evaluation.run.evaluate` wires the two together. Keeping the parts apart lets
training data (``midalign data prepare``) and evaluation share one prompt and one target format."""

from __future__ import annotations

import hashlib
import logging
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from midalign.data.hub import HubUnreachable
from midalign.data.sources import Reader, forms, pick_reader
from midalign.errors import InputError
from midalign.languages import parse_langs

log = logging.getLogger(__name__)

LIMIT_SEED = 0  # the seed of every ``limit`` sample; a constant, so all runs read the same rows


@dataclass(frozen=True)
class Example:
    """One item of a task's data.

    ``lang`` is the FLoRes code of the language the item is in (for translation, the side that is
    not English); ``key`` is what scores are grouped by: the language, or for translation the
    direction ``src-tgt``. ``text`` is the input the prompt is built from; ``reference`` is the
    task's gold answer in its own structure (slots, a sentence, entities, a label).
    """

    id: str
    lang: str
    key: str
    text: str
    reference: Any
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Parsed:
    """A model output as the task reads it: ``value`` in the reference's structure, ``ok`` False
    when the output could not be read (empty, not the expected format); such outputs score as
    an empty answer and are counted."""

    value: Any
    ok: bool


class Task(ABC):
    """A transfer task: readers, prompt, target, parser, scorer."""

    name: str
    metric: str  # the headline score, a key of score()'s result
    max_new_tokens: int  # enough for every reference answer of the paper's data sets
    # format name -> reader of its examples; bare sources are sniffed in this order
    readers: Mapping[str, Reader[list[Example]]]
    data_name: str  # what its data is called in errors: "not a NER data set"

    @classmethod
    def source_help(cls) -> str:
        """The --data / --source forms this task reads."""
        return forms(cls.readers)

    def languages(self, spec: str, option: str = "--langs") -> list[str]:
        """The ``--langs`` value as the keys examples are grouped by (FLoRes codes here); an
        error names ``option`` (a recipe names its field)."""
        return parse_langs(spec, option)

    def read(
        self, source: str, langs: Sequence[str], split: str, limit: int | None = None
    ) -> list[Example]:
        """Examples of ``langs`` (any code form, or keys as :meth:`languages` gives them; none
        means all a local data set has) from ``source``, ``limit`` of each key sampled by
        :func:`limit_per_key`; a language without examples is an error, since it would silently
        vanish from the averages."""
        keys = self.languages(",".join(langs)) if langs else []
        try:
            examples = self.load(source, keys, split)
        except HubUnreachable as e:
            raise InputError(f"{e}: {self.source_help()}") from None
        check_found(examples, keys, source)
        examples = limit_per_key(examples, limit)
        warn_one_reference(examples, f"{source} ({split})")
        return examples

    def load(self, source: str, keys: Sequence[str], split: str) -> list[Example]:
        """The examples of ``keys`` in ``source``, read by the reader of the format it names or
        whose layout it has (:func:`midalign.data.sources.pick_reader`)."""
        found = pick_reader(source, self.readers)
        if found is None:
            raise InputError(f"{source!r}: not a {self.data_name} data set ({self.source_help()})")
        reader, arg = found
        return reader.read(arg, keys, split)

    def stop(self, answer: str) -> bool:
        """Whether ``answer``, the text generated so far, is a whole answer, so generation may
        stop early: here at a line break after its first text (leading blank lines are not an
        end), since every answer but a JSON one is one line."""
        return "\n" in answer.lstrip("\n")

    def choices(self, example: Example) -> Sequence[str] | None:
        """The closed set of answers ``example`` can have, for likelihood scoring
        (:mod:`midalign.evaluation.loglik`); None for a task whose answers are open (slots, mt,
        ner)."""
        return None

    @abstractmethod
    def instruction(self, example: Example, zero_shot: bool = False) -> tuple[str | None, str]:
        """``(system, prompt)`` for the model; ``zero_shot`` picks the longer prompt where the
        paper has one (slot filling), for a model that was never taught the format."""

    @abstractmethod
    def target(self, example: Example) -> str:
        """The answer the model is trained to give."""

    @abstractmethod
    def parse(self, output: str, example: Example) -> Parsed:
        """Read a model's output; never raises on garbage."""

    @abstractmethod
    def score(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, Any]:
        """Scores of parsed predictions against the examples' references (one language)."""


def limit_per_key(examples: list[Example], limit: int | None) -> list[Example]:
    """``limit`` examples of every key (all when it has no more), in file order: a seeded
    sample spread over the file, not its first rows, since data sets sort by label (SIB-200's
    test split lists its 51 science/technology sentences first).

    An example ranks by the SHA-256 of ``LIMIT_SEED`` and its id, and a key keeps its ``limit``
    lowest. So every run, system and seed reads the same rows; a smaller limit keeps a subset
    of a larger one; and a parallel data set, which gives a sentence the same id in every
    language (SIB-200's index_id, xSID and MASSIVE ids), keeps the same sentences in every
    language, so per-language scores compare like with like. (Translation ids name their
    direction, so each direction draws its own sample.)
    """
    if limit is None:
        return examples
    positions: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        positions.setdefault(ex.key, []).append(i)
    kept: set[int] = set()
    for found in positions.values():
        kept.update(sorted(found, key=lambda i: (_rank(examples[i].id), i))[:limit])
    return [ex for i, ex in enumerate(examples) if i in kept]


def _rank(id_: str) -> bytes:
    return hashlib.sha256(f"{LIMIT_SEED}:{id_}".encode()).digest()


def warn_one_reference(examples: Sequence[Example], where: str) -> None:
    """Warn (one line per key) when two or more examples of a key all have the same reference:
    a score on them measures only how often a model gives that one answer (the first 24 rows
    of SIB-200's test split are all science/technology)."""
    references: dict[str, list[Any]] = {}
    for ex in examples:
        references.setdefault(ex.key, []).append(ex.reference)
    for key, refs in references.items():
        if len(refs) > 1 and all(r == refs[0] for r in refs):
            log.warning(
                "%s: all %d %s examples have the reference %s; their score measures only how "
                "often a model answers that",
                where,
                len(refs),
                key,
                reprlib.repr(refs[0]),
            )


def check_found(examples: list[Example], keys: Sequence[str], where: str) -> None:
    """Every requested key must have examples."""
    found = {ex.key for ex in examples}
    missing = [k for k in keys if k not in found]
    if missing:
        raise InputError(f"{where}: no examples for {', '.join(missing)}")
