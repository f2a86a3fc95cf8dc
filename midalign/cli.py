"""`midalign <command>`: a thin dispatcher. Each command lives in its own module that exposes
``add_parser(subparsers)`` (registering its options, with help) and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import NoReturn

from midalign import __version__
from midalign.errors import InputError

# command name -> module implementing it
COMMANDS = {
    "probe": "midalign.probe_cli",
    "merge": "midalign.merge_cli",
    "eval": "midalign.eval_cli",
    "data": "midalign.data_cli",
    "train": "midalign.train_cli",
    "run": "midalign.run_cli",
}
# --limit of eval, data prepare and merge --search (midalign.tasks.base.limit_per_key)
LIMIT_HELP = (
    "N examples per language, a seeded sample spread over the file, in file order (the same "
    "rows on every run; the same sentences in every language of a parallel data set)"
)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (and exit 2), like every other midalign error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    device (accelerate's big-model loading; ``midalign.placement.parse_placement`` reads them)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="midalign",
        description="Cross-lingual alignment of LLM representations: probe it layer by layer, "
        "train it into a LoRA adapter, and measure what transfers.",
    )
    parser.add_argument("--version", action="version", version=f"midalign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return importlib.import_module(COMMANDS[args.command]).run(args)
    except InputError as e:
        print(f"midalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"midalign {args.command}: interrupted", file=sys.stderr)
        return 130
