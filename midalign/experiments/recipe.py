"""The experiment recipe: its sections as typed dataclasses, read from YAML by
:mod:`midalign.sections` (the mechanism `midalign train` configs use), and the checks that fail
at load what would otherwise fail hours into a run. A recipe names a model, a task's data, seeds
and the systems of one results table; :mod:`midalign.experiments.runner` executes it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from midalign import sections
from midalign.data.reading import read_yaml
from midalign.errors import InputError
from midalign.sections import setting
from midalign.training.config import Compile, Normalize, Pool, TrainConfig

RunDtype = Literal[
    "auto", "float32", "bfloat16"
]  # midalign.modeling.dtypes.DTYPE_CHOICES (torch-free)


def _compile(work: str, default: str) -> Any:
    return setting(
        f"torch.compile the decoder layers for {work}: auto (on where a short measurement on "
        "this machine shows a gain of at least 1.1×; float32 on a CPU stays eager), on, off",
        default=default,
    )


def _dtype() -> Any:
    return setting(
        "dtype of the model: auto (bfloat16 where bf16 matmuls are native), float32, bfloat16",
        default="auto",
    )


@dataclass(kw_only=True)
class DataSpec:
    """A task split to read: ``source`` as ``midalign eval --data`` takes it; ``limit``
    examples per language, the seeded sample of
    :func:`midalign.evaluation.tasks.base.limit_per_key`."""

    source: str = setting("data set: a path, FORMAT:PATH or a hub id, as `midalign eval --data`")
    langs: list[str] = setting("languages to read (codes as `--langs` takes them)")
    split: str | None = setting(
        "split (default: train, dev or test, as the key says)", default=None
    )
    limit: int | None = setting("examples per language, a seeded sample", default=None)
    held_out: bool = setting(
        "test only: keep just the sentences whose ids the recipe's train and dev data hold in "
        "no language (a parallel set gives a sentence one id in every language, so a sentence "
        "trained in English is not tested in Swahili); for testing on a train or dev split",
        default=False,
    )

    def check(self, name: sections.Name, error: sections.Error) -> None:
        if not self.langs:
            raise error(f"{name('langs')}: give at least one language code")
        sections.positive(name, error, self, "limit")

    def hashed(self) -> dict[str, Any]:
        """The settings as a step's hash sees them: ``held_out`` only when set, so that steps
        made before it existed keep their hashes."""
        return {k: v for k, v in vars(self).items() if k != "held_out" or v}


@dataclass(kw_only=True)
class TaskSpec:
    name: str = setting("the task: slots, mt, ner or topic")
    train: DataSpec = setting("training examples")
    dev: DataSpec | None = setting("dev examples (the dev task loss)", default=None)
    test: list[DataSpec] = setting(
        "test examples: one source or a list (e.g. ALMA's test sets and WMT23's)"
    )
    groups: dict[str, list[str]] = setting(
        "report groups: a name → test languages, e.g. supervised, transfer", default_factory=dict
    )

    def __post_init__(self) -> None:  # a split left out is the one the key names
        for spec, split in [(self.train, "train"), (self.dev, "dev")] + [
            (t, "test") for t in self.test
        ]:
            if spec is not None and spec.split is None:
                spec.split = split

    def check(self, name: sections.Name, error: sections.Error) -> None:
        if not self.test:
            raise error(f"{name('test')} must be a data source or a list of them")
        for key, spec in (("train", self.train), ("dev", self.dev)):
            if spec is not None and spec.held_out:
                raise error(f"{name(key)}.held_out: only test data can be held out")


@dataclass(kw_only=True)
class ProbeSpec:
    """The retrieval probe of every system (`midalign probe`'s options). A setting left out
    takes `midalign probe`'s default and is left out of the step's hash."""

    data: str = setting("parallel text, as `midalign probe --data` takes it (e.g. udhr)")
    langs: list[str] = setting("languages probed, all pairs")
    split: str | None = setting("split of flores/sib200 data (default: dev)", default=None)
    max_sentences: int | None = setting("sentences per language (default: all)", default=None)
    layers: str | None = setting("layers: all, even, or numbers (default: all)", default=None)
    pool: Pool | None = setting(
        "pooling (default: the recipe's train.align.pool, else mean)", default=None
    )
    k: int | None = setting("neighbours of the xsim margin (default: 4)", default=None)
    normalize: Normalize = setting(
        "per-dimension normalisation of the pooled states before scoring: none (as the paper and "
        "LASER measure), center or standardize",
        default="none",
    )
    report_layer: str | None = setting(
        "layer of the report's tables: middle, or a number (default: middle)", default=None
    )
    dtype: RunDtype = _dtype()
    compile: Compile = _compile("the probe's forwards", "auto")

    def check(self, name: sections.Name, error: sections.Error) -> None:
        sections.positive(name, error, self, "max_sentences")
        sections.positive(name, error, self, "k")

    def given(self) -> dict[str, Any]:
        """The settings the recipe gives (what the probe step's hash covers): ``normalize:
        none`` is the same step as no ``normalize``."""
        return sections.given(self, {"normalize": "none"})


@dataclass(kw_only=True)
class EvalSpec:
    batch_size: int | None = setting("prompts per generation batch (default: 32)", default=None)
    max_new_tokens: int | None = setting(
        "longest answer in tokens (default: the task's)", default=None
    )
    dtype: RunDtype = _dtype()
    scoring: Literal["generate", "loglik"] = setting(
        "generate (greedy answers, parsed) or loglik (the label of highest log-probability "
        "after the prompt, for classification tasks: topic)",
        default="generate",
    )
    compile: Compile = _compile(
        "evaluation; off by default, as its KV-cached forwards compile several graphs for a gain "
        "not measured",
        "off",
    )

    def check(self, name: sections.Name, error: sections.Error) -> None:
        sections.positive(name, error, self, "batch_size")
        sections.positive(name, error, self, "max_new_tokens")


@dataclass(kw_only=True)
class MergeSpec:
    task: str = setting("the trained system whose adapter carries the task")
    align: str = setting("the trained system whose adapter carries the alignment")
    weight: float = setting("w of w·task + (1−w)·align", default=0.9)

    def check(self, name: sections.Name, error: sections.Error) -> None:
        if not 0 <= self.weight <= 1:
            raise error(f"{name('weight')} must be in [0, 1], not {self.weight!r}")


@dataclass(kw_only=True)
class System:
    """One row of the results table.

    ``train``: config sections (model, lora, data, align, optim) laid over the recipe's shared
    ``train`` sections; ``merge`` merges two trained systems' adapters as w·task + (1−w)·align;
    neither: the base model itself (``zero_shot`` picks the task's zero-shot prompt).
    ``evaluate: false`` trains an adapter only for merging.
    """

    name: str = setting("the system's name in the tables")
    train: dict[str, Any] | None = setting(
        "train config sections laid over the recipe's train", default=None
    )
    merge: MergeSpec | None = setting("merge two trained systems' adapters", default=None)
    zero_shot: bool = setting("the base model with the task's zero-shot prompt", default=False)
    evaluate: bool = setting("score the system on the test languages", default=True)
    probe: bool = setting("probe the system's retrieval", default=True)

    @property
    def kind(self) -> str:
        return "train" if self.train is not None else "merge" if self.merge else "base"

    def check(self, name: sections.Name, error: sections.Error) -> None:
        if not self.name:
            raise error(f"{name('name')} is required")
        if self.train is not None and self.merge is not None:
            raise error(f"system {self.name} has both train and merge")


@dataclass(kw_only=True)
class Recipe:
    name: str | None = setting(
        "the run's name: runs/<name> (default: the file's name)", default=None
    )
    model: str = setting("base model, as `--model` takes it", default="default")
    seeds: list[int] = setting("seeds of every trained system", default_factory=lambda: [0])
    task: TaskSpec = setting("the task and its data")
    probe: ProbeSpec | None = setting("retrieval before and after (none: no probe)", default=None)
    train: dict[str, Any] = setting(
        "train config sections shared by every trained system", default_factory=dict
    )
    systems: list[System] = setting("the rows of the results table")
    eval: EvalSpec = setting("evaluation settings", default_factory=EvalSpec)
    path: str = field(default="", init=False)  # the file read, naming every error

    def check(self, name: sections.Name, error: sections.Error) -> None:
        if not self.seeds:
            raise error(f"{name('seeds')} must be a non-empty list of integers")
        bad = [s for s in self.seeds if not 0 <= s < 2**32]
        if bad:
            raise error(f"{name('seeds')}: {bad[0]} is not a seed (0..{2**32 - 1})")
        if not self.systems:
            raise error(f"{name('systems')} must be a non-empty list")
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise error(f"system names must be unique, got {names}")
        trained = {s.name for s in self.systems if s.kind == "train"}
        for s in self.systems:
            for key in ("task", "align"):
                if s.merge is not None and getattr(s.merge, key) not in trained:
                    raise error(
                        f"system {s.name}: merge.{key} must name a trained system "
                        f"({', '.join(sorted(trained)) or 'none'}), not {getattr(s.merge, key)!r}"
                    )
        if self.name is not None and not re.fullmatch(r"\w[\w .+-]*", self.name):
            # no "..", "/" or "~": it stays in runs/
            raise error(
                f"name {self.name!r} must be a plain folder name (letters, digits, _ . + -), "
                "as it names the run directory runs/<name>"
            )


def parse_recipe(values: Any, where: str) -> Recipe:
    """A recipe from its YAML mapping; every mistake is an InputError naming the key."""
    recipe = sections.read(Recipe, values, where)
    recipe.path = where
    recipe.name = recipe.name or Path(where).stem
    check_recipe(recipe)
    return recipe


SECTION_OPTIONS = {"probe": ProbeSpec, "eval": EvalSpec}  # `midalign run --probe.k 8`


def apply_overrides(recipe: Recipe, overrides: dict[str, str]) -> Recipe:
    """Command-line values (``probe.normalize`` -> text) on top of a loaded recipe, checked
    again as a whole."""
    recipe = copy.deepcopy(recipe)
    for key, text in overrides.items():
        section, name = key.split(".")
        target = getattr(recipe, section)
        if target is None:
            raise InputError(f"--{key}: {recipe.path} has no {section} section")
        sections.set_text(target, name, text, f"--{key}")
        sections.check(target, name=lambda field, section=section: f"--{section}.{field}")
    check_recipe(recipe)
    return recipe


def system_config(
    recipe: Recipe, system: System, seed: int, task_data: str | None, dev_data: str | None
) -> TrainConfig:
    """A trained system's full TrainConfig: the recipe's ``train`` sections < the system's <
    what the runner sets (the model, the prepared task files, the seed)."""
    from midalign.training.config import from_dict

    merged = deep_merge(recipe.train, system.train or {})
    # An alignment-only adapter has no task: its best checkpoint is chosen by the dev
    # alignment loss, and it reads no task data.
    align = merged.get("align")
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
        deep_merge(merged, runner), f"{recipe.path}: system {system.name}", prefix="train."
    )


def check_recipe(recipe: Recipe) -> None:
    """What would fail only hours into a run fails at load, naming the recipe's field: every
    section's own rules, the task, every language list, and every trained system's config (as
    ``midalign train`` validates it, fields named ``recipe.yaml: system NAME:
    train.align.temperature``). The model is checked by :func:`check_model` when the recipe
    runs."""
    from midalign.evaluation.tasks import get_task
    from midalign.languages import parse_langs
    from midalign.training.config_checks import validate

    where = recipe.path

    def error(message: str) -> InputError:
        return InputError(f"{where}: {message}")

    sections.check(recipe, error=error)
    task = get_task(recipe.task.name, f"{where}: task.name")
    t = recipe.task
    specs = [("task.train", t.train), ("task.dev", t.dev)]
    specs += [
        (f"task.test[{i}]" if len(t.test) > 1 else "task.test", spec)
        for i, spec in enumerate(t.test)
    ]
    for name, spec in specs:
        if spec is not None:
            task.languages(",".join(spec.langs), f"{where}: {name}.langs")
    for group, codes in t.groups.items():
        task.languages(",".join(codes), f"{where}: task.groups.{group}")
    if recipe.probe is not None:
        parse_langs(",".join(recipe.probe.langs), f"{where}: probe.langs")
    for system in recipe.systems:
        if system.kind == "train":
            # the task files are prepared later; that there will be some is what counts here
            dev = "task.dev" if t.dev is not None else None
            config = system_config(recipe, system, recipe.seeds[0], "task.train", dev)
            validate(config, f"{where}: system {system.name}")


def check_model(name: str, where: str) -> None:
    """The recipe's model is one :func:`midalign.modeling.loading.resolve_model` will find: a local
    folder or GGUF file that exists (the folder an HF model's), or a hub id. Checked before
    any step runs (a dry run too), without loading it (nor converting the default or a GGUF
    file), and named as the recipe spells it (``recipe.yaml: model: models/x does not
    exist``), where loading would name ``--model`` only after the steps before the first that
    loads it."""
    from midalign.modeling.loading import DEFAULT_MODEL, resolve_model

    if name == DEFAULT_MODEL or (Path(name).suffix == ".gguf" and Path(name).is_file()):
        return
    try:
        resolve_model(name)
    except InputError as e:
        raise InputError(f"{where}: {str(e).removeprefix('--model: ')}") from None


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        listed = ", ".join(inside[:3]) + (", …" if len(inside) > 3 else "")
        which = f"one of its YAML files ({listed})" if inside else "a YAML file"
        raise InputError(f"recipe {path} is a folder, not a recipe file; give {which}")
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
