"""Slot filling (MASSIVE; xSID as the offline stand-in): "type: value" pairs from a command.

The model extracts the slots of a voice-assistant command.

Target: ``type: value; type: value`` in order of appearance, ``None`` when the command has no
slot (paper, Appendix D.2). Score: span micro-F1 the way MASSIVE's own scorer computes it
(``alexa/massive``, ``training_utils.eval_preds``): every utterance token gets a slot type or
``Other``, runs of one type become one BIO span (``convert_to_bio``), and seqeval's micro-F1 is
taken over all utterances. Japanese and Chinese are split into characters, other languages on
whitespace. A generated answer is mapped back onto the utterance: each predicted value tags the
first run of still untagged tokens that spells it (ignoring case and punctuation at the edges of
tokens). A value that appears
nowhere in the utterance has no token to tag, so, as in any BIO scorer, it costs nothing but
recall; such values are counted and reported as ``unmatched_values``.

Readers: :mod:`midalign.evaluation.tasks.slot_readers` (MASSIVE jsonl, the hub's
``AmazonScience/massive``, xSID CoNLL).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from midalign.evaluation.tasks.base import Example, Parsed, Task
from midalign.evaluation.tasks.slot_readers import MASSIVE_TYPES, READERS

# Appendix D.2, shortened from He and Garner (2023); its typos are kept on purpose.
SYSTEM = (
    "Given a command from the user, a voice assistant will extract entities essential for carry "
    "out the command. Your task is to extract the entities as words from the command if they "
    "fall under a predefined list of entity types."
)

# Appendix D.2, the zero-shot prompt (He and Garner 2023), typos and all. {types} is the slot
# inventory of the data set: MASSIVE's as the paper printed it, or the types found in xSID.
ZERO_SHOT_SYSTEM = (
    "Given a command from the user, a voice assistant like Siri or Olly will extract entities "
    "from the command that are essential for carry out the the command. For example, for a "
    "command about playing a specific song, the name of the song mentioned by the user would be "
    "an entity, falling under the type of \u201csong name\u201d.\n"
    "Your task is to extract the entities as words from the command if they fall under any of "
    "the types given below according to the following description:\n"
    "{types}\n"
    "Please give answers like:\n"
    "1. person: john; contact_field: phone number\n"
    "2. transport_app: uber; time_of_day: tonight; time: ten pm\n"
    "3. None\n"
    "4. music_genre: jazz\n"
    "etc., each taking a single line. The entity type must be one of the types given above, and "
    "the entity must be copied verbatim from the command. There could be zero, one, or multiple "
    "entities in a command."
)

CHAR_LANGS = ("jpn", "zho")  # scored by characters, as MASSIVE does for ja and zh
OUTSIDE = "Other"

Slot = tuple[str, str]  # (type, value)


# --------------------------------------------------------------------------- target and parser


def format_slots(slots: Sequence[Slot]) -> str:
    """``type: value; type: value``, or ``None`` when there is no slot."""
    return "; ".join(f"{t}: {v}" for t, v in slots) if slots else "None"


_LIST_MARKER = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s+")


def parse_slots(output: str) -> Parsed:
    """Slots from the first non-empty line of an answer.

    Tolerates spacing, a trailing ``;``, a list marker (``1. ``, as in the zero-shot prompt's
    examples) and ``None.``; parts without ``type: value`` make the answer not ``ok`` but the
    readable parts are kept.
    """
    line = next((x.strip() for x in output.splitlines() if x.strip()), "")
    line = _LIST_MARKER.sub("", line)
    if not line:
        return Parsed([], False)
    if line.rstrip(".").strip().lower() == "none":
        return Parsed([], True)
    slots: list[Slot] = []
    ok = True
    for part in line.split(";"):
        if not part.strip():
            continue
        type_, sep, value = part.partition(":")
        if not sep or not type_.strip() or not value.strip():
            ok = False
            continue
        slots.append((type_.strip(), value.strip()))
    return Parsed(slots, ok and bool(slots))


# --------------------------------------------------------------------------- scoring


def scoring_tokens(text: str, lang: str) -> list[tuple[int, int]]:
    """Character spans of the tokens MASSIVE scores on: characters for ja/zh, else words."""
    if lang[:3] in CHAR_LANGS:
        return [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]
    return [m.span() for m in re.finditer(r"\S+", text)]


def convert_to_bio(tags: Sequence[str]) -> list[str]:
    """Per-token slot types → BIO, as MASSIVE's ``convert_to_bio``: a run of one type is one
    span (so two adjacent spans of the same type merge, exactly as in MASSIVE's scorer)."""
    bio, prev = [], None
    for tag in tags:
        if tag == OUTSIDE:
            bio.append("O")
        elif tag != prev:
            bio.append(f"B-{tag}")
        else:
            bio.append(f"I-{tag}")
        prev = tag
    return bio


def gold_tags(example: Example) -> list[str]:
    """The type of every scoring token from the reference spans (``Other`` outside them)."""
    tokens = scoring_tokens(example.text, example.lang)
    tags = [OUTSIDE] * len(tokens)
    for type_, start, end in example.meta["spans"]:
        for i, (a, b) in enumerate(tokens):
            if a < end and b > start:
                tags[i] = type_
    return tags


def _match_key(token: str) -> str:
    """A token as values are matched against it: case and surrounding punctuation ignored
    (``Pullover?`` is one whitespace token of an utterance whose slot value is ``Pullover``)."""
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(token[end - 1]).startswith("P"):
        end -= 1
    return token[start:end].casefold() or token


def predicted_tags(example: Example, slots: Sequence[Slot]) -> tuple[list[str], int]:
    """Map predicted values onto the utterance's tokens; returns the tags and how many values
    matched no run of untagged tokens."""
    spans = scoring_tokens(example.text, example.lang)
    tokens = [_match_key(example.text[a:b]) for a, b in spans]
    tags = [OUTSIDE] * len(tokens)
    unmatched = 0
    for type_, value in slots:
        needle = [_match_key(value[a:b]) for a, b in scoring_tokens(value, example.lang)]
        at = _find_free_run(tokens, tags, needle)
        if at is None:
            unmatched += 1
        else:
            tags[at : at + len(needle)] = [type_] * len(needle)
    return tags, unmatched


def _find_free_run(tokens: list[str], tags: list[str], needle: list[str]) -> int | None:
    if not needle:
        return None
    for i in range(len(tokens) - len(needle) + 1):
        if tokens[i : i + len(needle)] == needle and all(
            t == OUTSIDE for t in tags[i : i + len(needle)]
        ):
            return i
    return None


def span_f1(examples: Sequence[Example], predictions: Sequence[Sequence[Slot]]) -> dict[str, Any]:
    """MASSIVE's slot micro-F1 (seqeval, default mode) with precision and recall."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, pred, unmatched = [], [], 0
    for ex, slots in zip(examples, predictions, strict=True):
        tags, missed = predicted_tags(ex, slots)
        gold.append(convert_to_bio(gold_tags(ex)))
        pred.append(convert_to_bio(tags))
        unmatched += missed
    return {
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "unmatched_values": unmatched,
    }


class SlotFilling(Task):
    name = "slots"
    metric = "f1"
    max_new_tokens = 64
    readers = READERS
    data_name = "slot-filling"

    def instruction(self, example: Example, zero_shot: bool = False) -> tuple[str | None, str]:
        if zero_shot:
            types = example.meta.get("types") or MASSIVE_TYPES
            return ZERO_SHOT_SYSTEM.format(types=" ".join(types)), example.text
        return SYSTEM, example.text

    def target(self, example: Example) -> str:
        return format_slots(example.reference)

    def parse(self, output: str, example: Example) -> Parsed:
        return parse_slots(output)

    def score(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, Any]:
        return span_f1(examples, predictions)
