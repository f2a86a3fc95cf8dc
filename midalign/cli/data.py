"""`midalign data prepare`: a task's data as instruction jsonl, the format training reads.

The format is :mod:`midalign.data.instructions`'s.
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from pathlib import Path

from midalign.cli.options import add_output_options, add_task_data_options
from midalign.data.instructions import is_instruction_file, read_instructions, write_instructions
from midalign.errors import InputError
from midalign.evaluation.tasks import get_task, source_forms
from midalign.files import appeared, check_output_file


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
    add_task_data_options(q, "the task", "--source", "de-en,en-de", split="train")
    q.add_argument(
        "--zero-shot",
        action="store_true",
        help="use the zero-shot prompt (slot filling) instead of the paper's training prompt",
    )
    add_output_options(q, "the .jsonl file to write")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    check_output_file(out, args.overwrite, is_instruction_file, "an instruction .jsonl file")
    task = get_task(args.task)
    keys = task.languages(args.langs)
    examples = task.read(args.source, keys, args.split, args.limit)
    counts = Counter(ex.key for ex in examples)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_instructions(out, task, examples, args.zero_shot, replace=args.overwrite)
    except FileExistsError:
        ours = ", ".join(f"{n} {key}" for key, n in counts.items())
        kept = (
            f"{_contents(out)}, left as it is; this run's {ours} are not written "
            "(pass --overwrite to replace it, or give one run every language in --langs)"
        )
        raise InputError(appeared(out, kept)) from None
    except OSError as e:
        raise InputError(f"--out: cannot create {out} ({e.strerror})") from None
    for key in keys:
        print(f"{key:<20} {counts[key]:7d}")
    print(f"{len(examples)} instructions in {out}")
    return 0


def _contents(path: Path) -> str:
    """What the file at ``path`` holds, by language, for a message."""
    try:
        rows = read_instructions(path) if is_instruction_file(path) else []
    except InputError:
        rows = []
    if not rows:
        return "it is not instruction jsonl"
    counts = Counter(row.lang for row in rows)
    return "it holds " + ", ".join(f"{n} {lang}" for lang, n in counts.items()) + " instructions"
