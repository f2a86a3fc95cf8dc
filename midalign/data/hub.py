"""Hub data sets through ``datasets``, and FLORES+ (``openlanguagedata/flores_plus``).

Every hub read goes through :func:`load_split`: one ``datasets.load_dataset`` call for a hub id
and for a local copy of the same repository, so a copy laid out like the repo (its dataset card's
``configs:`` naming the files, or the Parquet conversion's folders) reads exactly as the hub does,
and the tests, which build such copies, test the hub's layout. ``datasets`` no longer runs
loading scripts; a repo that has one (``AmazonScience/massive``) is read from the Parquet
conversion the hub keeps of it (:data:`PARQUET_EXPORT`), which is also the fall-back of
``Davlan/sib200``, a loading script until its card declared its configs. A config the repo
lacks is named with the nearest it has (:func:`unknown_config`).

FLORES+ (layout from the repo's file names as public code downloads them, and from
openlanguagedata/flores' README and CHANGELOG; the dataset card itself is gated): one config per
language variety (``deu_Latn``; where FLORES+ 2.0 renamed FLoRes-200's code, :data:`_HUB_CONFIG`:
``zho_Hans`` is ``cmn_Hans``, ``tgl_Latn`` ``fil_Latn``, ``ajp_Arab`` ``apc_Arab_sout3123``),
splits ``dev`` and ``devtest``, stored as ``<split>/<config>.jsonl`` (``.parquet`` before v2);
rows carry ``id``, ``iso_639_3``, ``iso_15924``, ``glottocode``, ``text`` and metadata (``url``,
``domain``, ...). Sentences are joined on ``id``. A local copy with the repo's README reads
through :func:`load_split`; a folder of loose ``<split>/<code>.parquet`` or ``.jsonl`` files (at
any depth, no README) is read file by file.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midalign.data.corpus import ParallelCorpus
from midalign.data.reading import align_by_id, by_language, read_text, select
from midalign.errors import InputError

if TYPE_CHECKING:
    from datasets import Dataset

HUB_TIMEOUT = 5.0  # seconds the hub has to answer one request before it counts as unreachable
FLORES_PLUS = "openlanguagedata/flores_plus"
# FLoRes-200 code -> flores_plus config, where FLORES+ 2.0 relabelled it (its CHANGELOG).
_HUB_CONFIG = {
    "zho_Hans": "cmn_Hans",
    "zho_Hant": "cmn_Hant",
    "tgl_Latn": "fil_Latn",
    "est_Latn": "ekk_Latn",
    "grn_Latn": "gug_Latn",
    "kon_Latn": "ktu_Latn",
    "tzm_Tfng": "zgh_Tfng",
    # Levantine Arabic and Akan are split by glottocode: ISO 639-3 merged ajp into apc (2023),
    # and FLORES+ files FLoRes-200's Akan (Asante) and Twi (Akuapem) under twi.
    "apc_Arab": "apc_Arab_nort3139",
    "ajp_Arab": "apc_Arab_sout3123",
    "aka_Latn": "twi_Latn_asan1239",
    "twi_Latn": "twi_Latn_akua1239",
}
# The branch where the hub keeps its Parquet conversion of a data set: one folder per config,
# ``<config>/<split>/0000.parquet`` (more shards for big splits). For a loading-script repo it is
# the only form ``datasets`` can still read.
PARQUET_EXPORT = "refs/convert/parquet"


def read_hf(name: str, langs: list[str], split: str) -> ParallelCorpus:
    """``name``: a hub dataset id with the flores_plus schema (``flores_plus`` is short for
    ``openlanguagedata/flores_plus``), a local copy of such a repo (with its README), or a
    folder of loose ``<split>/<code>.parquet`` / ``.jsonl`` files."""
    if not langs:
        raise InputError(f"hf:{name}: give the languages to load (one config per language)")
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.is_dir():
        raise InputError(f"hf:{name}: directory not found")
    if local.is_dir() and not (local / "README.md").is_file():
        tables = _read_local(local, langs, split)
    else:
        repo = FLORES_PLUS if name == "flores_plus" else name
        tables = {lang: _load_flores_config(repo, lang, split) for lang in langs}
    rows = {lang: _rows(where, table) for lang, (where, table) in tables.items()}
    ids = align_by_id(rows, {lang: where for lang, (where, _) in tables.items()})
    return ParallelCorpus.multiway(
        {lang: [rows[lang][i] for i in ids] for lang in rows},
        source=f"hf:{name} ({split})",
        ids=ids,
    )


def _read_local(root: Path, langs: list[str], split: str) -> dict[str, tuple[str, Dataset]]:
    files = {
        p.stem: p
        for pattern in (f"**/{split}/*.parquet", f"**/{split}/*.jsonl")
        for p in sorted(root.glob(pattern))
    }
    if not files:
        raise InputError(f"hf:{root}: no {split}/<language>.parquet or .jsonl files")
    paths = select(langs, by_language(files), f"hf:{root} ({split})")
    return {lang: (str(path), _load_file(path, split)) for lang, path in paths.items()}


def _load_file(path: Path, split: str) -> Dataset:
    from datasets import load_dataset

    builder = "parquet" if path.suffix == ".parquet" else "json"
    if builder == "json":
        read_text(path)  # a clear file:line message for bad UTF-8 before datasets sees it
    try:
        return load_dataset(builder, data_files={split: [str(path)]}, split=split)
    except Exception as e:  # malformed files surface as many exception types
        raise InputError(f"{path}: cannot be read as {builder} ({type(e).__name__}: {e})") from e


class HubUnreachable(InputError):
    """The hub cannot be reached (offline mode, or no answer): the reader adds the forms of
    its data that read a local copy instead."""


def hub_offline() -> bool:
    """Offline mode: ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``)
    as the environment says now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = any(os.environ.get(n, "").upper() in ("1", "ON", "YES", "TRUE") for n in names)
    return env or constants.HF_HUB_OFFLINE


def hub_unreachable() -> str | None:
    """Why the hub does not answer, or None: one request with a :data:`HUB_TIMEOUT`, no retries
    (``datasets`` retries for half a minute and logs a warning for each try)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT)
    except Exception as e:  # the HTTP client's own error types
        return one_line(e, 200)
    return None


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (cut at ``limit``): a library error as one line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def load_from_hub(where: str, *args: Any, **kwargs: Any) -> Dataset:
    """``datasets.load_dataset(*args, **kwargs)`` of a hub data set, every failure one line
    naming ``where``. Offline, only the local cache is tried; when the hub does not answer, the
    error comes at once rather than after datasets' retries."""
    from datasets import config, load_dataset

    offline = hub_offline()
    if offline and not config.HF_HUB_OFFLINE:  # set after datasets read it: it would go online
        raise HubUnreachable(f"{where}: HF_HUB_OFFLINE is set; give a local copy instead")
    if not offline:
        reason = hub_unreachable()
        if reason is not None:
            raise HubUnreachable(
                f"{where}: the hub is unreachable ({reason}); give a local copy instead, or set "
                "HF_HUB_OFFLINE=1 to use one cached earlier"
            )
    try:
        return load_dataset(*args, **kwargs)
    except Exception as e:  # datasets raises many types for the same user mistakes
        if offline:
            raise HubUnreachable(
                f"{where}: not in the local cache and HF_HUB_OFFLINE is set; give a local copy "
                "instead"
            ) from e
        raise InputError(f"{where}: cannot load ({one_line(e)})") from e


def load_hf_table(where: str, *args: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset(*args, **kwargs)`` with failures as one-line InputErrors (offline,
    unknown config or split, unreadable file: all fixable by the user). Without ``data_files``
    it is a hub data set, and an unreachable hub fails at once (:func:`load_from_hub`)."""
    from datasets import load_dataset

    if "data_files" not in kwargs:
        return load_from_hub(where, *args, **kwargs)
    try:
        return load_dataset(*args, **kwargs)
    except Exception as e:  # datasets raises many types for the same user mistakes
        raise InputError(f"{where}: cannot load ({one_line(e)})") from e


def load_split(
    where: str, source: str, config: str, split: str, *, export: bool = False
) -> Dataset:
    """Split ``split`` of config ``config`` of the hub data set ``source``, or of a local copy
    of its repository when ``source`` is a directory: the same ``datasets.load_dataset`` call
    either way (configs resolved from the README's ``configs:``, as the hub does). ``export``:
    read the hub's Parquet conversion instead (branch :data:`PARQUET_EXPORT`, a folder per
    config, the only form of a loading-script repo ``datasets`` still reads); a local copy is a
    copy of that branch. Errors are one line naming ``where``."""
    kwargs = {"data_dir": config} if export else {"name": config}
    local = Path(source).expanduser()
    if local.is_dir():
        from datasets import load_dataset

        if export and not (local / config).is_dir():
            raise InputError(f"{where}: no {local / config} (the Parquet conversion's layout)")
        try:
            return load_dataset(str(local), split=split, **kwargs)
        except Exception as e:  # malformed or missing files surface as many exception types
            raise InputError(f"{where}: cannot load ({one_line(e)})") from e
    if source.startswith((".", "/", "~")):
        raise InputError(f"{where}: directory {source} not found")
    if export:
        kwargs["revision"] = PARQUET_EXPORT
    return load_from_hub(where, source, split=split, **kwargs)


def repo_configs(source: str) -> list[str] | None:
    """The configs of the hub data set ``source`` (or of a local copy of its repository), as
    ``datasets`` lists them from the card; None where they cannot be listed (a gated repo
    without a login, a loading script, no answer)."""
    from datasets import get_dataset_config_names

    local = Path(source).expanduser()
    try:
        return list(get_dataset_config_names(str(local) if local.is_dir() else source))
    except Exception:  # the hub's and datasets' own error types; the caller says what it knows
        return None


def unknown_config(where: str, config: str, configs: list[str]) -> InputError:
    """The error for a config the repo does not have, naming the nearest ones it has."""
    nearest = difflib.get_close_matches(config, configs, n=5, cutoff=0.5)
    has = (
        f"the nearest it has: {', '.join(nearest)}"
        if nearest
        else f"none of its {len(configs)} is close"
    )
    return InputError(f"{where}: unknown config {config}; {has}")


def _load_flores_config(repo: str, lang: str, split: str) -> tuple[str, Dataset]:
    config = _HUB_CONFIG.get(lang, lang)
    where = f"hf:{repo} config {config} split {split}"
    try:
        return where, load_split(where, repo, config, split)
    except HubUnreachable as e:
        raise InputError(f"{e}: hf:DIR, a folder laid out like the repo") from None
    except InputError as e:  # gated, unknown config or split: all fixable by the user
        configs = repo_configs(repo)
        if configs is not None and config not in configs:
            raise unknown_config(where, config, configs) from e
        if configs is not None or Path(repo).expanduser().is_dir():
            raise  # the repo's card was read: not a gated repo
        raise InputError(
            f"{e}. flores_plus is gated: accept its terms on the hub and log in, or download it "
            "and pass hf:DIR"
        ) from e


def _rows(where: str, table: Dataset) -> dict[str, str]:
    """{id: text} of one language; an empty sentence or a repeated id is an error."""
    columns = table.column_names
    if "id" not in columns or "text" not in columns:
        raise InputError(f"{where}: needs columns 'id' and 'text' (has {', '.join(columns)})")
    rows: dict[str, str] = {}
    for n, (id_, text) in enumerate(zip(table["id"], table["text"], strict=True), 1):
        key = str(id_)
        if text is None or not text.strip():
            raise InputError(f"{where}: row {n} (id {key}) has an empty text")
        if key in rows:
            raise InputError(f"{where}: row {n}: id {key} occurs twice")
        rows[key] = text.strip()
    return rows
