"""`midalign <command>`: a thin dispatcher to one module per command.

Each command lives in its own module of this package that exposes ``add_parser(subparsers)``
(registering its options, with help) and ``run(args) -> int``; options several commands share
are in :mod:`midalign.cli.options`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from midalign import __version__
from midalign.errors import InputError

# command name -> module implementing it
COMMANDS = {
    "probe": "midalign.cli.probe",
    "merge": "midalign.cli.merge",
    "eval": "midalign.cli.eval",
    "data": "midalign.cli.data",
    "train": "midalign.cli.train",
    "run": "midalign.cli.run",
}


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (and exit 2), like every other midalign error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
