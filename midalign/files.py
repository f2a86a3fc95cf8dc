"""Writing results so that nothing is ever half-written: temp file or temp dir, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from midalign import __version__
from midalign.errors import InputError

MARKER = ".midalign"
"""The file every output folder of midalign holds: ``--overwrite`` replaces only such folders,
so a mistyped ``--out`` never deletes a user's own files."""


def mark_output_dir(folder: Path) -> None:
    """Mark ``folder`` as a midalign output, which a later ``--overwrite`` may replace."""
    write_text_atomic(
        Path(folder) / MARKER,
        f"written by midalign {__version__}; `--overwrite` may delete this folder\n",
    )


def check_output_dir(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse, before any expensive work starts: the current folder or one holding it, a file,
    a folder midalign did not write (no :data:`MARKER`; an empty one is fine), an existing
    output unless asked to overwrite, and an unwritable parent."""
    out = Path(out)
    if out.exists():
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents:
            raise InputError(
                f"{option}: {out} is the current folder or holds it, which cannot be replaced; "
                "give a new folder"
            )
        if not out.is_dir():
            raise InputError(f"{option}: {out} is a file; give a folder that does not exist yet")
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise InputError(
                f"{option}: {out} exists and holds files midalign did not write (no {MARKER} "
                "in it); give a new folder (--overwrite replaces only midalign's own outputs)"
            )
        if not overwrite:
            raise InputError(f"{option}: {out} already exists (pass --overwrite to replace it)")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write into {parent} (permission denied)")


def check_output_file(
    out: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str, option: str = "--out"
) -> None:
    """:func:`check_output_dir`'s rules for an output that is one file: ``is_ours`` tells a file
    midalign wrote (``what``, e.g. "an instruction file") from a user's own (an empty file is
    nothing to lose)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{option}: {out} exists and is a folder; give the path of {what}")
    if out.exists():
        if out.stat().st_size and not is_ours(out):
            raise InputError(
                f"{option}: {out} exists and is not {what} midalign wrote; give a new file "
                "(--overwrite replaces only midalign's own outputs)"
            )
        if not overwrite:
            raise InputError(f"{option}: {out} already exists (pass --overwrite to replace it)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open`` or
    ``mkdir`` would: safetensors writes its files 0600 and ``mkdtemp`` makes 0700 folders, but
    an adapter or an embedding file is a result to share like any other."""
    path = Path(path)
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():  # chmod would change what it points to
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temp dir beside ``out``, marked as ours; on success it becomes ``out``, on error
    it vanishes."""
    out = Path(out)
    check_output_dir(out, overwrite, option)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise InputError(f"{option}: cannot create {out} ({e.strerror})") from None
    try:
        mark_output_dir(tmp)
        yield tmp
        follow_umask(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            try:
                os.replace(out, old / out.name)
            except OSError as e:  # a mount point, say: the old output stays as it was
                old.rmdir()
                raise InputError(f"{option}: cannot replace {out} ({e.strerror})") from None
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; on success it becomes ``path``, with the
    modes a plain ``open`` gives (mkstemp and safetensors make files private), on error it
    vanishes."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file via a temp file in the same directory and an atomic rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
