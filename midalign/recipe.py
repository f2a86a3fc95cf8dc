"""The experiment recipe: its dataclasses, the YAML mapping parsed into them, and the checks
that fail at load what would otherwise fail hours into a run. A recipe names a model, a task's
data, seeds and the systems of one results table; :mod:`midalign.runner` executes it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midalign.config import TrainConfig
from midalign.data.reading import read_yaml
from midalign.errors import InputError

RECIPE_KEYS = ("name", "model", "seeds", "task", "probe", "train", "systems", "eval")
TASK_KEYS = ("name", "train", "dev", "test", "groups")
DATA_KEYS = ("source", "langs", "split", "limit")
PROBE_KEYS = (
    "data",
    "langs",
    "split",
    "max_sentences",
    "layers",
    "pool",
    "k",
    "normalize",
    "report_layer",
    "dtype",
)
SYSTEM_KEYS = ("name", "train", "merge", "zero_shot", "evaluate", "probe")
EVAL_KEYS = ("batch_size", "max_new_tokens", "dtype")


@dataclass
class DataSpec:
    """A task split to read: ``source`` as ``midalign eval --data`` takes it; ``limit``
    examples per language, the seeded sample of :func:`midalign.tasks.base.limit_per_key`."""

    source: str
    langs: list[str]
    split: str
    limit: int | None = None


@dataclass
class System:
    """One row of the results table.

    ``train``: config sections (model, lora, data, align, optim) laid over the recipe's shared
    ``train`` sections; ``merge``: {task: system, align: system, weight: w} merges two trained
    systems' adapters as w·task + (1−w)·align; neither: the base model itself (``zero_shot``
    picks the task's zero-shot prompt). ``evaluate: false`` trains an adapter only for merging.
    """

    name: str
    train: dict[str, Any] | None = None
    merge: dict[str, Any] | None = None
    zero_shot: bool = False
    evaluate: bool = True
    probe: bool = True

    @property
    def kind(self) -> str:
        return "train" if self.train is not None else "merge" if self.merge else "base"


@dataclass
class Recipe:
    name: str
    model: str
    seeds: list[int]
    task: str
    train_data: DataSpec
    dev_data: DataSpec | None
    test_data: list[DataSpec]  # one or more sources, e.g. ALMA's test sets + WMT23's
    groups: dict[str, list[str]]
    probe: dict[str, Any] | None
    train: dict[str, Any]
    systems: list[System]
    eval: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def _mapping(value: Any, where: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping with keys {', '.join(keys)}")
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")
    return value


def _langs(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return list(value)
    raise InputError(f"{where}: expected a list of language codes, got {value!r}")


def _data_spec(value: Any, where: str, default_split: str) -> DataSpec:
    d = _mapping(value, where, DATA_KEYS)
    if not isinstance(d.get("source"), str):
        raise InputError(f"{where}.source: a data source (path or hub id) is required")
    limit = d.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError(f"{where}.limit: expected a positive integer, got {limit!r}")
    return DataSpec(
        source=d["source"],
        langs=_langs(d.get("langs"), f"{where}.langs"),
        split=str(d.get("split", default_split)),
        limit=limit,
    )


def parse_recipe(values: Any, where: str) -> Recipe:
    """A recipe from its YAML mapping; every mistake is an InputError naming the key."""
    r = _mapping(values, where, RECIPE_KEYS)
    task = _mapping(r.get("task"), f"{where}: task", TASK_KEYS)
    if not isinstance(task.get("name"), str):
        raise InputError(f"{where}: task.name is required (slots, mt, ner or topic)")
    seeds = r.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise InputError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    tests = task.get("test") if isinstance(task.get("test"), list) else [task.get("test")]
    if not tests:
        raise InputError(f"{where}: task.test must be a data source or a list of them")
    groups = task.get("groups") or {}
    if not isinstance(groups, dict):
        raise InputError(f"{where}: task.groups must map a group name to languages")
    systems = []
    raw_systems = r.get("systems")
    if not isinstance(raw_systems, list) or not raw_systems:
        raise InputError(f"{where}: systems must be a non-empty list")
    for i, raw in enumerate(raw_systems):
        s = _mapping(raw, f"{where}: systems[{i}]", SYSTEM_KEYS)
        if not isinstance(s.get("name"), str) or not s["name"]:
            raise InputError(f"{where}: systems[{i}].name is required")
        if s.get("train") is not None and s.get("merge") is not None:
            raise InputError(f"{where}: system {s['name']} has both train and merge")
        if s.get("train") is not None and not isinstance(s["train"], dict):
            raise InputError(f"{where}: system {s['name']}: train must be a mapping of sections")
        systems.append(
            System(
                name=s["name"],
                train=s.get("train") if s.get("train") is not None else None,
                merge=s.get("merge"),
                zero_shot=bool(s.get("zero_shot", False)),
                evaluate=bool(s.get("evaluate", True)),
                probe=bool(s.get("probe", True)),
            )
        )
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: system names must be unique, got {names}")
    trained = {s.name for s in systems if s.kind == "train"}
    for s in systems:
        if s.merge is None:
            continue
        m = _mapping(s.merge, f"{where}: system {s.name}: merge", ("task", "align", "weight"))
        for key in ("task", "align"):
            if m.get(key) not in trained:
                raise InputError(
                    f"{where}: system {s.name}: merge.{key} must name a trained system "
                    f"({', '.join(sorted(trained)) or 'none'}), not {m.get(key)!r}"
                )
        w = m.get("weight", 0.9)
        if not isinstance(w, int | float) or not 0 <= w <= 1:
            raise InputError(f"{where}: system {s.name}: merge.weight must be in [0, 1], not {w!r}")
    probe = r.get("probe")
    if probe is not None:
        probe = dict(_mapping(probe, f"{where}: probe", PROBE_KEYS))
        if not isinstance(probe.get("data"), str):
            raise InputError(f"{where}: probe.data is required (e.g. udhr)")
        probe["langs"] = _langs(probe.get("langs"), f"{where}: probe.langs")
        from midalign.retrieval import NORMALIZE_MODES

        normalize = probe.pop("normalize", "none")
        if normalize not in NORMALIZE_MODES:
            raise InputError(
                f"{where}: probe.normalize must be one of {', '.join(NORMALIZE_MODES)}, "
                f"not {normalize!r}"
            )
        if normalize != "none":  # absent or none: one setting, so one probe step hash
            probe["normalize"] = normalize
        _check_dtype(probe, f"{where}: probe.dtype")
    evaluation = dict(_mapping(r.get("eval") or {}, f"{where}: eval", EVAL_KEYS))
    _check_dtype(evaluation, f"{where}: eval.dtype")
    train = r.get("train") or {}
    if not isinstance(train, dict):
        raise InputError(f"{where}: train must be a mapping of config sections")
    name = str(r.get("name") or Path(where).stem)
    if not re.fullmatch(r"\w[\w .+-]*", name):  # no "..", "/" or "~": it stays in runs/
        raise InputError(
            f"{where}: name {name!r} must be a plain folder name (letters, digits, _ . + -), "
            "as it names the run directory runs/<name>"
        )
    recipe = Recipe(
        name=name,
        model=str(r.get("model", "default")),
        seeds=seeds,
        task=task["name"],
        train_data=_data_spec(task.get("train"), f"{where}: task.train", "train"),
        dev_data=_data_spec(task["dev"], f"{where}: task.dev", "dev") if task.get("dev") else None,
        test_data=[
            _data_spec(t, f"{where}: task.test" + (f"[{i}]" if len(tests) > 1 else ""), "test")
            for i, t in enumerate(tests)
        ],
        groups={str(k): _langs(v, f"{where}: task.groups.{k}") for k, v in groups.items()},
        probe=probe,
        train=train,
        systems=systems,
        eval=evaluation,
        path=where,
    )
    check_recipe(recipe)
    return recipe


def _check_dtype(section: dict[str, Any], where: str) -> None:
    from midalign.dtypes import DTYPE_CHOICES

    if section.get("dtype", "auto") not in DTYPE_CHOICES:
        raise InputError(
            f"{where} must be one of {', '.join(DTYPE_CHOICES)}, not {section['dtype']!r}"
        )


def system_config(
    recipe: Recipe, system: System, seed: int, task_data: str | None, dev_data: str | None
) -> TrainConfig:
    """A trained system's full TrainConfig: the recipe's ``train`` sections < the system's <
    what the runner sets (the model, the prepared task files, the seed)."""
    from midalign.config import from_dict

    sections = deep_merge(recipe.train, system.train or {})
    # An alignment-only adapter has no task: its best checkpoint is chosen by the dev
    # alignment loss, and it reads no task data.
    align = sections.get("align")
    task_free = isinstance(align, dict) and align.get("schedule") == "align"
    runner = {
        "model": {"name": recipe.model},
        "data": {
            "task_data": None if task_free else task_data,
            "dev_data": None if task_free else dev_data,
        },
        "optim": {"seed": seed},
    }
    return from_dict(
        deep_merge(sections, runner), f"{recipe.path}: system {system.name}", prefix="train."
    )


def check_recipe(recipe: Recipe) -> None:
    """What would fail only hours into a run fails at load, naming the recipe's field: the task,
    every language list, and every trained system's config (as ``midalign train`` validates
    it, fields named ``recipe.yaml: system NAME: train.align.temperature``)."""
    from midalign.config_checks import validate
    from midalign.languages import parse_langs
    from midalign.tasks import get_task

    where = recipe.path
    task = get_task(recipe.task, f"{where}: task.name")
    specs = [("task.train", recipe.train_data), ("task.dev", recipe.dev_data)]
    specs += [
        (f"task.test[{i}]" if len(recipe.test_data) > 1 else "task.test", spec)
        for i, spec in enumerate(recipe.test_data)
    ]
    for name, spec in specs:
        if spec is not None and spec.langs:  # none: all a local data set has
            task.languages(",".join(spec.langs), f"{where}: {name}.langs")
    for group, codes in recipe.groups.items():
        task.languages(",".join(codes), f"{where}: task.groups.{group}")
    if recipe.probe is not None:
        parse_langs(",".join(recipe.probe["langs"]), f"{where}: probe.langs")
    for system in recipe.systems:
        if system.kind == "train":
            # the task files are prepared later; that there will be some is what counts here
            dev = "task.dev" if recipe.dev_data is not None else None
            config = system_config(recipe, system, recipe.seeds[0], "task.train", dev)
            validate(config, f"{where}: system {system.name}")


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe {path} not found")
    return parse_recipe(read_yaml(path), str(path))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, recursively for mappings (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
