"""Instruction jsonl for the task loss: written by `midalign data prepare`, read by training.

Rows are tokenised the one way :mod:`midalign.modeling.prompting` defines.

A row is either ``{"system"?, "prompt", "response", "lang"?, "id"?}`` or a single-turn chat
``{"messages": [{"role": "system"?}, {"role": "user"}, {"role": "assistant"}], "lang"?,
"id"?}``. Tokens of the prompt carry label -100, so the loss is on the response only.

What :func:`write_instructions` writes from a task's examples is one object per line::

    {"system": str | null, "prompt": str, "response": str, "lang": "deu_Latn", "id": str,
     "task": "slots"}

``system``/``prompt`` are exactly what ``midalign eval`` gives the model and ``response`` is
the task's target, so a model is trained on the questions it is tested with. Token ids are made
later, by ``midalign.modeling.prompting.encode_example``, never here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from midalign.data.reading import jsonl_rows
from midalign.errors import InputError
from midalign.files import write_text_atomic
from midalign.modeling.prompting import IGNORE_INDEX, encode_example

if TYPE_CHECKING:  # tasks read data sets through midalign.data; data needs them for types only
    from midalign.evaluation import tasks

log = logging.getLogger(__name__)


@dataclass
class Instruction:
    """One row of instruction data: a prompt (with its system turn) and the response taught."""

    prompt: str
    response: str
    system: str | None = None
    lang: str | None = None
    id: str | None = None


def _from_messages(messages: object, where: str) -> tuple[str | None, str, str]:
    """(system, prompt, response) of a single-turn chat."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    roles = [m.get("role") for m in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise InputError(
            f"{where}: messages must be [system?, user, assistant] (single turn), got {roles}"
        )
    contents = [m.get("content") for m in messages]
    if not all(isinstance(c, str) for c in contents):
        raise InputError(f"{where}: every message needs a string 'content'")
    system = contents[0] if roles[0] == "system" else None
    return system, contents[-2], contents[-1]


def read_instructions(path: Path) -> list[Instruction]:
    """Every row of a jsonl file; a bad row is an error naming ``file:line``."""
    path = Path(path)
    examples = []
    for where, lineno, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        if "messages" in row:
            system, prompt, response = _from_messages(row["messages"], where)
        else:
            for key in ("prompt", "response"):
                if key not in row:
                    raise InputError(f"{where}: missing field {key!r} (or give 'messages')")
                if not isinstance(row[key], str):
                    raise InputError(f"{where}: field {key!r} must be a string")
            system, prompt, response = row.get("system"), row["prompt"], row["response"]
            if system is not None and not isinstance(system, str):
                raise InputError(f"{where}: field 'system' must be a string")
        if not response.strip():
            raise InputError(f"{where}: empty response (nothing to learn)")
        examples.append(
            Instruction(
                prompt=prompt,
                response=response,
                system=system or None,
                lang=row.get("lang"),
                id=str(row["id"]) if "id" in row else f"{path.name}:{lineno}",
            )
        )
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples


# --------------------------------------------------------------------------- writing


def instruction_record(task: tasks.Task, example: tasks.Example, zero_shot: bool = False) -> dict:
    """The training contract's one object for ``example``."""
    system, prompt = task.instruction(example, zero_shot)
    return {
        "system": system,
        "prompt": prompt,
        "response": task.target(example),
        "lang": example.lang,
        "id": example.id,
        "task": task.name,
    }


def is_instruction_file(path: Path) -> bool:
    """Whether ``path`` starts like a file :func:`write_instructions` wrote: its first line is
    an :func:`instruction_record` (only that line is read)."""
    try:
        with open(path, encoding="utf-8") as f:
            row = json.loads(f.readline(1 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(row, dict) and {"prompt", "response", "task"} <= row.keys()


def write_instructions(
    path: Path,
    task: tasks.Task,
    examples: Sequence[tasks.Example],
    zero_shot: bool = False,
    replace: bool = True,
) -> None:
    """The examples as instruction jsonl, one :func:`instruction_record` a line, atomically;
    ``replace=False``: FileExistsError where a file appeared at ``path`` meanwhile."""
    lines = [
        json.dumps(instruction_record(task, ex, zero_shot), ensure_ascii=False) for ex in examples
    ]
    write_text_atomic(path, "\n".join(lines) + "\n", replace)


# --------------------------------------------------------------------------- tokenising


class TaskDataset(torch.utils.data.Dataset):
    """Tokenised examples ``{"input_ids", "labels"}``, cut to ``max_length`` tokens.

    An example cut so short that no response token is left cannot teach anything and is
    dropped; both counts are logged, and a file where every example is dropped is an error.
    """

    def __init__(
        self,
        examples: list[Instruction],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        source: str = "task data",
    ) -> None:
        self.items: list[dict[str, list[int]]] = []
        truncated = dropped = 0
        for ex in examples:
            ids, labels = encode_example(tokenizer, ex.prompt, ex.response, ex.system)
            if len(ids) > max_length:
                truncated += 1
                ids, labels = ids[:max_length], labels[:max_length]
                if all(label == IGNORE_INDEX for label in labels[1:]):
                    dropped += 1
                    continue
            self.items.append({"input_ids": ids, "labels": labels})
        self.truncated, self.dropped = truncated, dropped
        if truncated:
            log.warning(
                "%s: %d of %d examples longer than max_length %d were cut at the end; "
                "%d of them had no response token left and were dropped",
                source,
                truncated,
                len(examples),
                max_length,
                dropped,
            )
        if not self.items:
            raise InputError(
                f"{source}: every example's prompt is longer than max_length {max_length} "
                "tokens; raise --max-length"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def load_task_dataset(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> TaskDataset:
    return TaskDataset(read_instructions(Path(path)), tokenizer, max_length, source=str(path))
