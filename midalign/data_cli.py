"""`midalign data prepare`: a task's data as instruction jsonl, the format training reads.

One object per line::

    {"system": str | null, "prompt": str, "response": str, "lang": "deu_Latn", "id": str,
     "task": "slots"}

``system``/``prompt`` are exactly what ``midalign eval`` gives the model and ``response`` is
the task's target, so a model is trained on the questions it is tested with. Token ids are made
later, by ``midalign.prompting.encode_example``, never here.
"""

from __future__ import annotations

import argparse
import json
import logging
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from midalign.cli import LIMIT_HELP, positive_int
from midalign.files import check_output_file, write_text_atomic
from midalign.tasks import TASKS, Example, Task, get_task, source_forms

log = logging.getLogger(__name__)


def instruction_record(task: Task, example: Example, zero_shot: bool = False) -> dict:
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
    path: Path, task: Task, examples: Sequence[Example], zero_shot: bool = False
) -> None:
    """The examples as instruction jsonl, one :func:`instruction_record` a line, atomically."""
    lines = [
        json.dumps(instruction_record(task, ex, zero_shot), ensure_ascii=False) for ex in examples
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare task data for training (instruction jsonl)")
    commands = p.add_subparsers(dest="data_command", required=True, metavar="<data command>")
    q = commands.add_parser(
        "prepare",
        help="write a task's examples as instruction jsonl",
        description=textwrap.fill(
            "Read a task's data set and write one instruction per line: "
            '{"system", "prompt", "response", "lang", "id", "task"} with the prompts and '
            "targets `midalign eval` uses."
        )
        + "\n\n--source forms per task:\n"
        + source_forms(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--task", required=True, choices=list(TASKS), help="the task")
    q.add_argument("--source", required=True, help="the task's data: a path or hub id (see above)")
    q.add_argument(
        "--langs",
        required=True,
        help="languages (ISO 639-1/639-3/FLoRes codes, presets); for mt, directions such as "
        "de-en,en-de (a bare code means both directions with English)",
    )
    q.add_argument("--split", default="train", help="data split (default: %(default)s)")
    q.add_argument("--limit", type=positive_int, metavar="N", help=LIMIT_HELP)
    q.add_argument(
        "--zero-shot",
        action="store_true",
        help="use the zero-shot prompt (slot filling) instead of the paper's training prompt",
    )
    q.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    check_output_file(out, args.overwrite, is_instruction_file, "an instruction .jsonl file")
    task = get_task(args.task)
    keys = task.languages(args.langs)
    examples = task.read(args.source, keys, args.split, args.limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_instructions(out, task, examples, args.zero_shot)
    counts = Counter(ex.key for ex in examples)
    for key in keys:
        print(f"{key:<20} {counts[key]:7d}")
    print(f"{len(examples)} instructions in {out}")
    return 0
