"""The tasks by the name ``--task`` takes: the paper's three, and topic classification.

The paper's transfer tasks are slot filling, translation and JSON NER; topic classification on
SIB-200 is beyond the paper.
"""

from __future__ import annotations

import textwrap

from midalign.errors import InputError
from midalign.evaluation.tasks.base import Example, Parsed, Task
from midalign.evaluation.tasks.json_ner import JsonNER
from midalign.evaluation.tasks.slot_filling import SlotFilling
from midalign.evaluation.tasks.topic import Topic
from midalign.evaluation.tasks.translation import Translation

__all__ = ["Example", "Parsed", "Task", "TASKS", "get_task", "source_forms"]

TASKS: dict[str, type[Task]] = {
    "slots": SlotFilling,
    "mt": Translation,
    "ner": JsonNER,
    "topic": Topic,
}


def get_task(name: str, option: str = "--task") -> Task:
    """The task called ``name`` (slots, mt, ner, topic); an error names ``option``."""
    if name not in TASKS:
        raise InputError(f"{option}: unknown task {name!r} (one of {', '.join(TASKS)})")
    return TASKS[name]()


def source_forms() -> str:
    """The data forms every task reads, for --help."""
    return "\n".join(
        textwrap.fill(cls.source_help(), initial_indent=f"  {name:<7}", subsequent_indent=" " * 9)
        for name, cls in TASKS.items()
    )
