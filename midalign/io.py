"""Writing results so that nothing is ever half-written: temp file or temp dir, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midalign.errors import InputError


def check_output_dir(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse an existing output unless asked to overwrite, and an unwritable parent — before
    any expensive work starts."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{option}: {out} already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option}: {out} exists and is not a directory")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write into {parent} (permission denied)")


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
    """Yield a temp dir beside ``out``; on success it becomes ``out``, on error it vanishes."""
    out = Path(out)
    check_output_dir(out, overwrite, option)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise InputError(f"{option}: cannot create {out} ({e.strerror})") from None
    try:
        yield tmp
        follow_umask(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
