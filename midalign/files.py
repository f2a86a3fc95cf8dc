"""Writing results so that nothing is ever half-written: temp file or temp dir, then rename."""

from __future__ import annotations

import contextlib
import errno
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
    output unless asked to overwrite, and a parent that cannot be made (a file in the way)
    or written into."""
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
    _check_parent(out, option)


def _nearest_existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists: what decides whether it can be
    made. A file there stands where ``path`` or a folder above it should be."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written into ``folder`` (made first where missing), or None: a file
    in the way, or the nearest existing folder refusing writes (as root, only a read-only file
    system or a place such as /proc refuses; that shows when the write fails)."""
    nearest = _nearest_existing(folder)
    if not nearest.is_dir():
        return f"{nearest} is a file, not a folder"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"no permission to write into {nearest}"
    return None


def _check_parent(out: Path, option: str) -> None:
    problem = unwritable(Path(out).resolve().parent)
    if problem is not None:
        raise InputError(f"{option}: cannot create {out}: {problem}")


def check_run_dir(out: Path, write: bool, option: str = "--out") -> None:
    """A folder a command keeps adding to (`midalign run`'s steps): it may exist, but as a
    folder. With ``write`` it must also take writes, and is made now, before any work; without
    (a dry run, which only looks) a read-only one is fine."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{option}: {out} is a file; give a folder (a new one, or an earlier run's to reuse "
            "its finished steps)"
        )
    nearest = _nearest_existing(out)
    if not nearest.is_dir():
        raise InputError(f"{option}: cannot create {out}: {nearest} is a file, not a folder")
    if not write:
        return
    problem = unwritable(out)
    if problem is not None:
        raise InputError(f"{option}: cannot write into {out}: {problem}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option}: cannot create {out} ({e.strerror})") from None


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
    _check_parent(out, option)


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
        if overwrite and out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            try:
                os.replace(out, old / out.name)
            except OSError as e:  # a mount point, say: the old output stays as it was
                old.rmdir()
                raise InputError(f"{option}: cannot replace {out} ({e.strerror})") from None
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # a folder renamed onto a file, or onto a folder that is not empty, fails
                os.replace(tmp, out)
            except OSError:
                if not out.exists():
                    raise
                kept = "it is left as it is, this run's output is not written (pass --overwrite)"
                raise InputError(appeared(out, kept, option)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def appeared(out: Path, detail: str, option: str = "--out") -> str:
    """The message for an output that did not exist when the command checked but did when it
    came to write (another run into the same ``option``), ``detail`` saying what is kept."""
    return (
        f"{option}: {out} appeared while this command ran (another run into the same "
        f"{option}?); {detail}"
    )


@contextlib.contextmanager
def atomic_file(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; on success it becomes ``path``, with the
    modes a plain ``open`` gives (mkstemp and safetensors make files private), on error it
    vanishes. ``replace=False`` keeps a file that appeared at ``path`` meanwhile (another
    run's) and raises FileExistsError: a hard link, unlike a rename, fails on an existing name."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_new(tmp: Path, path: Path) -> None:
    """``tmp`` renamed to ``path`` unless ``path`` exists (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links (FAT, some network mounts)
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_text_atomic(path: Path, text: str, replace: bool = True) -> None:
    """Write a file via a temp file in the same directory and an atomic rename (``replace``:
    see :func:`atomic_file`)."""
    with atomic_file(path, replace) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
