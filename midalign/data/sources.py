"""A data set named in one string (``format:ARG``, a bare path or a hub id), sent to its reader.

A bare path or hub id goes to the format that recognises its layout.

Every task (:meth:`midalign.evaluation.tasks.Task.load`) and :func:`midalign.data.load_parallel`
declare their formats as a registry, ``{name: Reader}``, and read a source through
:func:`pick_reader`, so a CLI option and a recipe field name data the same way everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from midalign.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Reader(Generic[T]):
    """How one data format is named, recognised and read.

    ``form`` is how a source names it, for help texts and errors (``uner:DIR (UNER ...)``). A
    source names the format as ``NAME`` followed by what ``after`` matches (a regex whose group
    1 is the argument ``read`` gets, ``""`` where the group is optional and absent): ``NAME:ARG``
    by default. ``sniff(source, path)`` recognises a source that does not name its format (a
    folder by the files in it, a file by its suffix, a hub id; ``path`` is the source as a local
    path, ``~`` expanded); ``read`` then gets the whole source. ``folder``: the argument is a
    directory, which ``read`` gets as a Path; a source that names the format and a directory
    that does not exist is an error naming it.
    """

    read: Callable[[Any, Sequence[str], str], T]  # (argument, languages, split)
    form: str
    sniff: Callable[[str, Path], bool] | None = None
    after: str = ":(.*)"
    folder: bool = False


def pick_reader(source: str, readers: Mapping[str, Reader[T]]) -> tuple[Reader[T], Any] | None:
    """The reader of ``source`` and the argument it reads: a format the source names, else the
    first (in the registry's order) whose ``sniff`` recognises it; None when no format fits."""
    for name, reader in readers.items():
        match = re.fullmatch(re.escape(name) + reader.after, source, re.DOTALL)
        if match:
            arg = match.group(1) or ""
            if not reader.folder:
                return reader, arg
            return reader, folder(name, arg)
    path = Path(source).expanduser()
    for reader in readers.values():
        if reader.sniff is not None and reader.sniff(source, path):
            return reader, path if reader.folder else source
    return None


def forms(readers: Mapping[str, Reader[Any]], sep: str = " | ") -> str:
    """The forms of a source that the registry ``readers`` reads, for help texts and errors."""
    return sep.join(reader.form for reader in readers.values())


def folder(name: str, arg: str | Path) -> Path:
    """The directory ``arg`` of a ``name:DIR`` source; a missing one is an error."""
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise InputError(f"{name}:{path}: directory not found")
    return path


def folder_with(pattern: str) -> Callable[[str, Path], bool]:
    """A sniffer: the source is a directory holding a file that matches ``pattern``."""

    def sniff(source: str, path: Path) -> bool:
        return path.is_dir() and any(path.glob(pattern))

    return sniff


def is_hub_id(source: str) -> bool:
    """A hub dataset id (``owner/name``) that is not a path on this machine."""
    return (
        not Path(source).expanduser().exists()
        and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None
    )
