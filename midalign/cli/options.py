"""The options several `midalign` commands take, declared once.

Their names, help texts and checks are then the same everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from midalign.errors import InputError
from midalign.evaluation.tasks import TASKS
from midalign.modeling.compiled import COMPILE_MODES
from midalign.modeling.dtypes import DTYPE_CHOICES

# --limit of eval, data prepare and merge --search (midalign.evaluation.tasks.base.limit_per_key)
LIMIT_HELP = (
    "N examples per language, a seeded sample spread over the file, in file order (the same "
    "rows on every run; the same sentences in every language of a parallel data set)"
)


def positive_int(text: str) -> int:
    """argparse type for counts and budgets that must be ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--adapter``, as every command that loads a model takes them."""
    p.add_argument(
        "--model",
        default="default",
        help="default (Gemma 3 270M, offline), an HF "
        "folder, a .gguf file or a hub id (default: %(default)s)",
    )
    p.add_argument("--adapter", help="a PEFT adapter folder to apply on top of --model")


def add_placement_options(p: argparse.ArgumentParser) -> None:
    """``--device-map``, ``--max-memory`` and ``--offload-folder``, for a model bigger than one
    device (accelerate's big-model loading; ``midalign.modeling.loading.parse_placement`` reads
    them)."""
    p.add_argument(
        "--device-map",
        metavar="STRATEGY|FILE",
        help="spread the model over accelerators, CPU RAM and disk with accelerate: auto, "
        "balanced, balanced_low_0, sequential, or a JSON file {module name: device} with devices "
        "0, 1, … (accelerators), cpu or disk (default: the whole model on one device)",
    )
    p.add_argument(
        "--max-memory",
        metavar="DEVICE=SIZE,…",
        help="with a --device-map strategy: the memory each device may hold, e.g. "
        "0=20GiB,1=20GiB,cpu=60GiB; what does not fit goes to disk",
    )
    p.add_argument(
        "--offload-folder",
        type=Path,
        help="with --device-map: where weights offloaded to disk are re-saved when they cannot "
        "be read in place from the model's safetensors files (default: a temp dir, removed at "
        "exit)",
    )


def add_task_data_options(
    p: argparse.ArgumentParser, task_help: str, data_option: str, directions: str, split: str
) -> None:
    """``--task``, the task's data (``data_option``), ``--langs``, ``--split`` and ``--limit``,
    as `midalign eval` and `midalign data prepare` read a task's data set; ``directions`` is the
    mt example of ``--langs``."""
    p.add_argument("--task", required=True, choices=list(TASKS), help=task_help)
    p.add_argument(data_option, required=True, help="the task's data: a path or hub id (see above)")
    p.add_argument(
        "--langs",
        required=True,
        help="languages (ISO 639-1/639-3/FLoRes codes, presets); for mt, directions such as "
        f"{directions} (a bare code means both directions with English)",
    )
    p.add_argument("--split", default=split, help="data split (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, metavar="N", help=LIMIT_HELP)


def add_dtype_option(p: argparse.ArgumentParser, gain: str = "") -> None:
    """``--dtype``; ``gain`` says what bfloat16 buys where auto picks it."""
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help=f"model dtype; auto: bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16{gain}, "
        "float32 elsewhere (results.json records what it resolved to and why) "
        "(default: %(default)s)",
    )


def add_compile_option(p: argparse.ArgumentParser, work: str, default: str = "auto") -> None:
    """``--compile`` for ``work`` (the probe's forwards, evaluation)."""
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=default,
        help=f"torch.compile the decoder layers for {work}: on, off, or auto: on where a short "
        "measurement on this machine (made once, kept in the cache) shows a gain of at least "
        "1.1×; float32 on a CPU stays eager (compiling it gained 1.04-1.11× on an AMD EPYC) "
        "(results.json records what it did) (default: %(default)s)",
    )


def add_group_option(p: argparse.ArgumentParser, purpose: str) -> None:
    """``--group NAME=CODES`` (repeatable); ``purpose`` such as "to report, e.g. low=swh,jav"."""
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=CODES",
        help=f"a language group {purpose} (repeatable)",
    )


def parse_groups(
    specs: list[str],
    languages: Callable[[str], list[str]],
    example: str,
    keys: list[str] | None = None,
) -> dict[str, list[str]]:
    """``--group NAME=CODES`` options, each group's codes read by ``languages``; with ``keys``
    (the ``--langs``), a group none of whose members is among them is refused before any work
    starts."""
    groups = {}
    for spec in specs:
        name, sep, codes = spec.partition("=")
        if not sep or not name or not codes:
            raise InputError(f"--group: expected NAME=CODES such as {example}; got {spec!r}")
        if name in groups:
            raise InputError(
                f"--group {name}: given twice; give each group once, with all its codes"
            )
        groups[name] = languages(codes)
        if keys is not None and not set(groups[name]) & set(keys):
            raise InputError(f"--group {name}: none of {codes} is in --langs")
    return groups


def add_output_options(
    p: argparse.ArgumentParser, out_help: str, progress_help: str | None = None
) -> None:
    """``--out`` (required), ``--overwrite`` and, with ``progress_help``, ``--no-progress``."""
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    if progress_help is not None:
        p.add_argument("--no-progress", action="store_true", help=progress_help)
