"""`midalign run`: one YAML recipe → prepared data, trained and merged adapters, transfer scores,
retrieval before and after, and a report (docs/design.md §6). The recipe wires the parts; the parts
(:mod:`midalign.train`, :mod:`midalign.evaluate`, :mod:`midalign.probe_run`,
:mod:`midalign.merge`) know nothing of recipes.

Every unit of work is a *step* (prepare data, train a system with one seed, merge, evaluate,
probe). A step lives in ``<out>/steps/<name>-<hash>/``, where the hash covers everything its
result depends on (its own settings and the hashes of the steps it consumes), and is finished
when its ``done.json`` exists, written last and atomically. Re-running a recipe reuses finished
steps, redoes the ones whose settings changed, and resumes a training step that was killed
from its last complete checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midalign.config import TrainConfig
from midalign.data.reading import read_yaml
from midalign.errors import InputError
from midalign.files import write_json, write_text_atomic
from midalign.model_card import add_retrieval

log = logging.getLogger(__name__)

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
# Part of the hash of every step that reads data (prepare, evaluate, probe), raised when the
# same settings come to read other examples, so that no run reuses a step read the old way.
# 2: SIB-200's CSV quoting undone; ``limit`` a seeded sample instead of the first N rows.
READING = 2
# Settings added after run directories existed: left out of a step's hash while at the value
# those steps used, so that those runs' steps are reused (they computed the same). Training
# steps, by section of their config; probe and eval steps: the dtype they load the model in,
# resolved (``auto`` is float32 on a CPU without native bf16), as every one of them used float32.
LATER_DEFAULTS = {
    ("align", "normalize"): "none",
    ("align", "stats"): "batch",
    ("align", "stats_pairs"): 256,
    ("probe", "dtype"): "float32",
    ("eval", "dtype"): "float32",
}


# --------------------------------------------------------------------------- the recipe


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
    from midalign.config import validate
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


def _hashed(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Settings by section as a step's hash sees them: without LATER_DEFAULTS at their default."""
    return {
        section: {
            k: v for k, v in entries.items() if LATER_DEFAULTS.get((section, k), object()) != v
        }
        for section, entries in sections.items()
    }


# --------------------------------------------------------------------------- steps


def spec_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Steps:
    """Finished-or-not bookkeeping of a run directory's steps."""

    def __init__(self, out: Path, dry_run: bool = False) -> None:
        self.root = Path(out) / "steps"
        self.dry_run = dry_run
        self.ran: list[str] = []
        self.reused: list[str] = []

    def folder(self, name: str, spec: dict[str, Any]) -> Path:
        slug = re.sub(r"_*-_*", "-", re.sub(r"[^\w.-]+", "_", name))  # align (top) → align_top
        return self.root / f"{slug}-{spec_hash(spec)}"

    def run(self, name: str, spec: dict[str, Any], fn: Callable[[Path], dict]) -> dict:
        """``fn(folder)``'s result, or the stored one if this exact step finished before; either
        way with ``"step"``, the folder's name, which later steps' specs use as its identity."""
        folder = self.folder(name, spec)
        done = folder / "done.json"
        if not done.is_file():
            # the hash is the step's identity, the name only a label: a renamed system (or
            # another recipe run into this --out with the same settings) reuses the step
            twins = sorted(self.root.glob(f"*-{spec_hash(spec)}/done.json"))
            if twins:
                folder, done = twins[0].parent, twins[0]
        if done.is_file():
            self.reused.append(folder.name)
            return {**json.loads(done.read_text(encoding="utf-8"))["result"], "step": folder.name}
        if self.dry_run:
            self.ran.append(folder.name)
            return {"step": folder.name}
        log.info("step %s", folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "spec.json", spec)
        result = fn(folder)
        write_json(done, {"step": name, "spec": spec, "result": result})
        self.ran.append(folder.name)
        return {**result, "step": folder.name}


# --------------------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95 % confidence interval (Student t over seeds);
    ``ci95`` is None for a single value."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n, "values": list(values)}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {
        "mean": mean,
        "ci95": float(t.ppf(0.975, n - 1) * sd / math.sqrt(n)),
        "n": n,
        "values": list(values),
    }


# --------------------------------------------------------------------------- running


@dataclass
class RunOptions:
    out: Path
    progress: bool = True
    dry_run: bool = False


class Runner:
    """Executes a recipe step by step (see the module docstring)."""

    def __init__(self, recipe: Recipe, options: RunOptions) -> None:
        from midalign.tasks import get_task

        self.recipe = recipe
        self.opt = options
        self.out = Path(options.out)
        self.steps = Steps(self.out, options.dry_run)
        self.task = get_task(recipe.task)
        self.test_keys: list[str] = []
        for i, spec in enumerate(recipe.test_data):
            keys = self.task.languages(",".join(spec.langs))
            twice = [k for k in keys if k in self.test_keys]
            if twice:
                raise InputError(
                    f"{recipe.path}: task.test[{i}]: {', '.join(twice)} already read from an "
                    "earlier test source; a language is scored on one test set"
                )
            self.test_keys += keys
        self.groups = {
            name: self.task.languages(",".join(codes)) for name, codes in recipe.groups.items()
        }
        for name, keys in self.groups.items():
            missing = [k for k in keys if k not in self.test_keys]
            if missing:
                raise InputError(
                    f"{recipe.path}: task.groups.{name}: {', '.join(missing)} "
                    "not in task.test.langs"
                )

    # ----------------------------------------------------------------- data

    def prepare(self, spec: DataSpec, name: str) -> dict:
        """The split as instruction jsonl (the training contract of `midalign data prepare`)."""
        from midalign.data.instructions import write_instructions

        def work(folder: Path) -> dict:
            examples = self.task.read(spec.source, spec.langs, spec.split, spec.limit)
            path = folder / f"{name}.jsonl"
            write_instructions(path, self.task, examples)
            return {"path": str(path.resolve()), "examples": len(examples)}

        return self.steps.run(
            f"data-{name}", {"task": self.task.name, **vars(spec), "reading": READING}, work
        )

    # ----------------------------------------------------------------- train and merge

    def train_config(self, system: System, seed: int, data: dict[str, dict]) -> dict:
        """The system's full TrainConfig as nested sections (validated when the recipe was
        loaded)."""
        dev = data["dev"].get("path") if "dev" in data else None
        return system_config(self.recipe, system, seed, data["train"].get("path"), dev).to_dict()

    def train(self, system: System, seed: int, data: dict[str, dict]) -> dict:
        from midalign import run_dir
        from midalign.config import from_dict
        from midalign.train import train

        sections = self.train_config(system, seed, data)
        # The data files' paths change with their hashes; their hashes are what matter.
        spec = {"config": _hashed(sections), "data": {k: v.get("step") for k, v in data.items()}}
        align = sections["align"]
        if align["schedule"] != "task" and align["layers"] != "middle":
            # The layer may be L, where the loss takes the state before the final norm (it took
            # HF's hidden_states[L] before): runs made before that train these steps again.
            spec["last_layer"] = "before the final norm"

        def work(folder: Path) -> dict:
            config = from_dict(sections, f"{folder}/{run_dir.CONFIG_FILE}")
            run_dir.write_config(folder, config)
            checkpoint = run_dir.resume_point(folder, required=False)
            result = train(config, folder, checkpoint, progress=self.opt.progress)
            if result.interrupted:
                raise KeyboardInterrupt
            return {
                "adapter": str(folder.resolve()),
                "global_step": result.global_step,
                "best_metric": result.best_metric,
                "align_layers": result.align_layers,
            }

        return self.steps.run(f"train-{system.name}-seed{seed}", spec, work)

    def merge(self, system: System, seed: int, adapters: dict[str, dict]) -> dict:
        from midalign.merge import merge_adapters

        m = system.merge or {}
        weight = float(m.get("weight", 0.9))
        task, align = adapters[m["task"]], adapters[m["align"]]
        spec = {"task": task["step"], "align": align["step"], "weight": weight}

        def work(folder: Path) -> dict:
            target = folder / "adapter"
            merge_adapters(
                [Path(task["adapter"]), Path(align["adapter"])],
                [weight, 1 - weight],
                target,
                overwrite=True,
            )
            return {"adapter": str(target.resolve())}

        return self.steps.run(f"merge-{system.name}-seed{seed}", spec, work)

    # ----------------------------------------------------------------- evaluate and probe

    def evaluate(self, system: System, seed: int | None, adapter: dict | None) -> dict:
        from midalign.evaluate import evaluate, probe_scores, write_outputs
        from midalign.models import load_model

        tests = self.recipe.test_data
        settings = {**self.recipe.eval, "dtype": self.dtype(self.recipe.eval)}
        spec = {
            "model": self.recipe.model,
            "adapter": adapter["step"] if adapter else None,
            "task": self.task.name,
            # a single source hashes as it did before test sources could be listed
            "test": vars(tests[0]) if len(tests) == 1 else [vars(t) for t in tests],
            "zero_shot": system.zero_shot,
            "eval": _hashed({"eval": settings})["eval"],
            "groups": self.groups,
            "reading": READING,
        }

        def work(folder: Path) -> dict:
            examples = self.test_examples()
            model, tokenizer = load_model(
                self.recipe.model, adapter and adapter["adapter"], settings["dtype"]
            )
            results = evaluate(
                model,
                tokenizer,
                self.task,
                examples,
                zero_shot=system.zero_shot,
                batch_size=int(self.recipe.eval.get("batch_size", 16)),
                max_new_tokens=self.recipe.eval.get("max_new_tokens"),
                groups=self.groups,
                progress=self.opt.progress,
            )
            predictions = results.pop("predictions")
            results["dtype"] = settings["dtype"]
            write_outputs(
                folder, results, predictions, self.recipe.model, adapter and adapter["adapter"]
            )
            metric = results["metric"]
            return {
                "metric": metric,
                "per_language": {k: v[metric] for k, v in results["per_language"].items()},
                "groups": {k: v[metric] for k, v in results["groups"].items()},
                "average": results["average"],
                "unparseable": results["unparseable"],
                "probe_scores": probe_scores(results),
            }

        suffix = f"-seed{seed}" if seed is not None else ""
        return self.steps.run(f"eval-{system.name}{suffix}", spec, work)

    def test_examples(self) -> list:
        """Every test source's examples, in the recipe's order."""
        return [
            ex
            for t in self.recipe.test_data
            for ex in self.task.read(
                t.source, self.task.languages(",".join(t.langs)), t.split, t.limit
            )
        ]

    def probe_settings(self) -> dict[str, Any]:
        """The recipe's ``probe`` section, pooling as the recipe trains (its shared
        ``train.align.pool``) unless it names a ``pool`` of its own: the paper recipes train
        with ``mean-all`` and should measure the states they align. A pool equal to the default
        (``mean``) is left implicit, so that the steps' hashes stay what they were."""
        p = dict(self.recipe.probe or {})
        trained = (self.recipe.train.get("align") or {}).get("pool", "mean")
        if "pool" not in p and trained != "mean":
            p["pool"] = trained
        return p

    def dtype(self, section: dict[str, Any]) -> str:
        """The dtype a probe or eval step loads the model in: the section's ``dtype`` (``auto``
        unless the recipe names one) as :func:`midalign.dtypes.resolve_dtype` resolves it on
        this machine. Steps hash the resolved name, so a step is redone exactly when it would
        compute in another dtype than before (see LATER_DEFAULTS)."""
        from midalign.dtypes import dtype_name, resolve_dtype

        return dtype_name(resolve_dtype(section.get("dtype", "auto"))[0])

    def probe(self, name: str, adapter: dict | None) -> dict:
        """Retrieval per layer and language on the recipe's parallel text (model + adapter)."""
        from midalign.probe_run import run_probe

        p = {**self.probe_settings(), "dtype": self.dtype(self.recipe.probe or {})}
        spec = {
            "model": self.recipe.model,
            "adapter": adapter["step"] if adapter else None,
            **_hashed({"probe": p})["probe"],
            "reading": READING,
        }

        def work(folder: Path) -> dict:
            normalize = p.get("normalize", "none")
            probe = run_probe(
                self.recipe.model,
                adapter and adapter["adapter"],
                p["data"],
                ",".join(p["langs"]),
                split=p.get("split", "dev"),
                max_sentences=p.get("max_sentences"),
                layers=str(p.get("layers", "all")),
                report_layer=str(p.get("report_layer", "middle")),
                pool=p.get("pool", "mean"),
                normalize=normalize,
                k=int(p.get("k", 4)),
                dtype=p["dtype"],
                progress=self.opt.progress,
                option="probe.",
            )
            summary = {
                **probe.summary,
                "normalize": normalize,
                "dtype": p["dtype"],
                "anisotropy": probe.anisotropy,
            }
            write_json(folder / "results.json", summary)
            layer = probe.report_layer
            return {
                "layer": layer,
                "per_layer": {k: v["mean"] for k, v in summary["per_layer"].items()},
                "aggregate": summary["aggregate"],
                "per_language": summary["per_language"][str(layer)]["both"],
            }

        return self.steps.run(f"probe-{name}", spec, work)

    # ----------------------------------------------------------------- the whole recipe

    def run(self) -> dict:
        r = self.recipe
        if not self.opt.dry_run:  # a missing test set fails now, not after hours of training
            self.test_examples()
        data = {"train": self.prepare(r.train_data, "train")}
        if r.dev_data is not None:
            data["dev"] = self.prepare(r.dev_data, "dev")
        scores: dict[str, dict[str, dict]] = {}  # system -> seed -> eval result
        training: dict[str, dict[str, dict]] = {}  # system -> seed -> train result
        retrieval: dict[str, dict[str, dict]] = {}  # system -> seed -> probe result
        base_probe = self.probe("base", None) if r.probe else None
        for system in r.systems:
            if system.kind != "base":
                continue
            if system.evaluate:
                scores[system.name] = {"-": self.evaluate(system, None, None)}
        for seed in r.seeds:
            adapters: dict[str, dict] = {}
            for system in r.systems:
                if system.kind == "train":
                    adapters[system.name] = self.train(system, seed, data)
                    training.setdefault(system.name, {})[str(seed)] = adapters[system.name]
            for system in r.systems:
                if system.kind == "merge":
                    adapters[system.name] = self.merge(system, seed, adapters)
            for system in r.systems:
                if system.kind == "base":
                    continue
                if system.evaluate:
                    scores.setdefault(system.name, {})[str(seed)] = self.evaluate(
                        system, seed, adapters[system.name]
                    )
                if r.probe and system.probe:
                    after = self.probe(f"{system.name}-seed{seed}", adapters[system.name])
                    retrieval.setdefault(system.name, {})[str(seed)] = after
                    if not self.opt.dry_run:  # the adapter's model card gains the table
                        add_retrieval(
                            Path(adapters[system.name]["adapter"]),
                            after["layer"],
                            self.probe_settings().get("normalize", "none"),
                            base_probe["per_language"],
                            after["per_language"],
                        )
        return {
            "scores": scores,
            "retrieval": retrieval,
            "base_retrieval": base_probe,
            "training": training,
        }


# --------------------------------------------------------------------------- the report


def summarize_run(recipe: Recipe, outcome: dict, groups: dict[str, list[str]]) -> dict:
    """Mean ± 95 % CI over seeds of every evaluated system, per group and language; retrieval
    before/after per language; the correlation of base retrieval with transfer scores."""
    from midalign.retrieval import correlate

    table: dict[str, dict[str, dict]] = {}
    metric = None
    for name, by_seed in outcome["scores"].items():
        runs = list(by_seed.values())
        metric = runs[0]["metric"]
        columns: dict[str, dict] = {}
        for group in groups:
            columns[group] = mean_ci([r["groups"][group] for r in runs])
        columns["average"] = mean_ci([r["average"] for r in runs])
        for key in runs[0]["per_language"]:
            columns[key] = mean_ci([r["per_language"][key] for r in runs])
        table[name] = columns
    summary: dict[str, Any] = {"metric": metric, "table": table, "seeds": recipe.seeds}
    # the reference of paired differences: the first trained system that was evaluated (SFT)
    reference = next(
        (s.name for s in recipe.systems if s.kind == "train" and s.name in outcome["scores"]),
        None,
    )
    if reference is not None:
        summary["paired"] = {
            "reference": reference,
            "systems": paired_differences(
                {
                    name: {
                        seed: {**r["groups"], "average": r["average"]} for seed, r in runs.items()
                    }
                    for name, runs in outcome["scores"].items()
                },
                reference,
            ),
        }
    dev = dev_alignment(outcome.get("training", {}))
    if dev:
        summary["dev_alignment"] = dev
    base = outcome.get("base_retrieval")
    if base:
        after = {
            name: {
                lang: mean_ci([run["per_language"][lang] for run in by_seed.values()])
                for lang in base["per_language"]
            }
            for name, by_seed in outcome["retrieval"].items()
        }
        by_group = {  # system -> seed -> group (and "even layers") -> retrieval
            name: {
                seed: {
                    **group_means(run["per_language"], groups),
                    "even layers": run["aggregate"],
                }
                for seed, run in by_seed.items()
            }
            for name, by_seed in outcome["retrieval"].items()
        }
        summary["retrieval"] = {
            "layer": base["layer"],
            "normalize": (recipe.probe or {}).get("normalize", "none"),
            "base": base["per_language"],
            "base_aggregate": base["aggregate"],
            "base_groups": group_means(base["per_language"], groups),
            "systems": after,
            "systems_aggregate": {
                name: mean_ci([run["aggregate"] for run in by_seed.values()])
                for name, by_seed in outcome["retrieval"].items()
            },
            "systems_groups": {
                name: {
                    key: mean_ci([values[key] for values in by_seed.values()])
                    for key in next(iter(by_seed.values()))
                }
                for name, by_seed in by_group.items()
            },
        }
        if reference in by_group:
            summary["retrieval"]["paired"] = paired_differences(by_group, reference)
        if reference is not None:
            runs = list(outcome["scores"][reference].values())
            files = runs[0]["probe_scores"]
            first = next(iter(files))  # topic/slots/ner: one file; mt: into English first
            per_lang = {
                lang: sum(r["probe_scores"][first][lang] for r in runs) / len(runs)
                for lang in files[first]
            }
            summary["correlation"] = {
                "system": reference,
                "scores": first,
                "layer": base["layer"],
                **correlate(base["per_language"], per_lang),
                "points": {
                    lang: [base["per_language"][lang], per_lang[lang]]
                    for lang in per_lang
                    if base["per_language"].get(lang) is not None
                },
            }
    return summary


def paired_differences(
    values: dict[str, dict[str, dict[str, float]]], reference: str
) -> dict[str, dict[str, dict]]:
    """system -> key -> mean ± 95 % CI over seeds of (system − reference), paired by seed:
    ``values`` is system -> seed -> key -> value. Systems without a seed in common with the
    reference (the base model's single run) are left out, as is the reference itself."""
    ref = values[reference]
    out: dict[str, dict[str, dict]] = {}
    for name, by_seed in values.items():
        seeds = [seed for seed in by_seed if seed in ref]
        if name == reference or not seeds:
            continue
        keys = [k for k in by_seed[seeds[0]] if k in ref[seeds[0]]]
        out[name] = {k: mean_ci([by_seed[s][k] - ref[s][k] for s in seeds]) for k in keys}
        for stat in out[name].values():
            stat["seeds"] = seeds
    return out


def group_means(per_language: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    """The mean of ``per_language`` over each group's languages that it holds. A language
    matches a group member by its full key or by its ISO 639-3 code (``cym_Latn`` ~ ``cym``),
    so probe languages group with the task's."""

    def code(key: str) -> str:
        return re.split(r"[_-]", key)[0]

    out = {}
    for group, members in groups.items():
        wanted = {code(m) for m in members}
        got = [v for k, v in per_language.items() if v is not None and code(k) in wanted]
        if got:
            out[group] = sum(got) / len(got)
    return out


def dev_alignment(training: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """system -> mean ± CI over seeds of the last dev in-batch top-1 accuracy of the alignment
    pairs (``eval_align_acc`` in the training log; τ-free, unlike the dev InfoNCE), and of the
    dev alignment loss, for systems that logged one."""
    from midalign.callbacks import LOG_FILE, read_log

    out = {}
    for name, by_seed in training.items():
        last: dict[str, dict] = {}
        for seed, result in by_seed.items():
            log = Path(result["adapter"]) / LOG_FILE
            rows = [r for r in read_log(log) if "eval_align_acc" in r] if log.is_file() else []
            if rows:
                last[seed] = rows[-1]
        if last:
            out[name] = {
                "step": max(r["step"] for r in last.values()),
                "acc": mean_ci([r["eval_align_acc"] for r in last.values()]),
                "loss": mean_ci([r["eval_align_loss"] for r in last.values()]),
            }
    return out


def _cell(stat: dict | None, scale: float) -> str:
    if stat is None:
        return "–"
    text = f"{stat['mean'] * scale:.1f}"
    return text + (f" ± {stat['ci95'] * scale:.1f}" if stat["ci95"] is not None else "")


def _table(head: str, columns: list[str], rows: dict[str, dict], scale: float) -> list[str]:
    """A Markdown table: one row per key of ``rows``, its stats (mean ± CI) per column."""
    return [
        f"| {head} | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(
            f"| {name} | " + " | ".join(_cell(cols.get(c), scale) for c in columns) + " |"
            for name, cols in rows.items()
        ),
    ]


def report_markdown(recipe: Recipe, summary: dict, groups: dict[str, list[str]]) -> str:
    """Table 2 of the paper, at this recipe's scale, plus retrieval and correlation."""
    metric = summary["metric"] or "score"
    scale = 1.0 if metric in ("bleu", "chrf") else 100.0
    table = summary["table"]
    lines = [
        f"# {recipe.name}",
        "",
        f"Model `{recipe.model}`, task `{recipe.task}` ({metric}"
        + (", ×100" if scale == 100 else "")
        + f"), seeds {', '.join(map(str, recipe.seeds))}: mean ± 95 % CI over seeds "
        "(Student t; no interval with one seed).",
        "",
    ]
    if table:
        keys = [k for k in next(iter(table.values())) if k not in groups and k != "average"]
        lines += _table("system", [*groups, "average", *keys], table, scale)
        lines += [
            "",
            "Groups: " + "; ".join(f"{g} = {', '.join(m)}" for g, m in groups.items()),
            "",
        ]
    paired = summary.get("paired")
    if paired and paired["systems"]:
        columns = [*groups, "average"]
        lines += [
            f"## Paired differences against {paired['reference']}",
            "",
            f"System − {paired['reference']} seed by seed, mean ± 95 % CI of the differences "
            "(an interval that excludes 0 is a difference these seeds show).",
            "",
            *_table("system", columns, paired["systems"], scale),
            "",
        ]
    dev = summary.get("dev_alignment")
    if dev:
        lines += [
            "## Dev alignment pairs at the end of training",
            "",
            "In-batch top-1 accuracy x → y of the held-out alignment pairs (τ-free) and their "
            "InfoNCE, at each run's last evaluation; mean ± 95 % CI over seeds.",
            "",
            "| system | step | dev top-1 ×100 | dev InfoNCE |",
            "|---|---|---|---|",
            *(
                f"| {name} | {d['step']} | {_cell(d['acc'], 100)} | {_cell(d['loss'], 1)} |"
                for name, d in dev.items()
            ),
            "",
        ]
    retrieval = summary.get("retrieval")
    if retrieval:
        from midalign.retrieval import NORMALIZED_STATES

        langs = list(retrieval["base"])
        normalize = retrieval["normalize"]
        lines += [
            f"## Retrieval at layer {retrieval['layer']} (xsim accuracy ×100, before → after)",
            "",
            f"Scored on {NORMALIZED_STATES[normalize]} pooled states (`probe.normalize: "
            f"{normalize}`"
            + (
                ", as LASER and the paper score them)."
                if normalize == "none"
                else ", with each layer's statistics over all sentences of all languages)."
            ),
            "",
            "| system | mean over even layers | " + " | ".join(langs) + " |",
            "|---|---|" + "---|" * len(langs),
            "| base | "
            + f"{retrieval['base_aggregate'] * 100:.1f} | "
            + " | ".join(f"{retrieval['base'][g] * 100:.1f}" for g in langs)
            + " |",
        ]
        for name, per in retrieval["systems"].items():
            agg = retrieval["systems_aggregate"][name]
            lines.append(
                f"| {name} | {_cell(agg, 100)} | "
                + " | ".join(_cell(per[g], 100) for g in langs)
                + " |"
            )
        lines.append("")
        columns = [*retrieval["base_groups"], "even layers"]
        rows = {
            "base": {
                **{g: {"mean": v, "ci95": None} for g, v in retrieval["base_groups"].items()},
                "even layers": {"mean": retrieval["base_aggregate"], "ci95": None},
            },
            **retrieval["systems_groups"],
        }
        lines += [
            f"By group: the mean over the group's languages at layer {retrieval['layer']}, "
            "and the mean over even layers and all languages.",
            "",
            *_table("system", columns, rows, 100),
            "",
        ]
        if retrieval.get("paired"):
            lines += [
                f"Paired differences against {summary['paired']['reference']} (×100, same seed):",
                "",
                *_table("system", columns, retrieval["paired"], 100),
                "",
            ]
    corr = summary.get("correlation")
    if corr:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines += [
            "## Retrieval vs transfer (paper, Figure 2)",
            "",
            f"Base-model retrieval at layer {corr['layer']} against `{corr['system']}` scores "
            f"over {corr['n']} languages: Pearson r = {fmt(corr['pearson'])}, "
            f"Spearman ρ = {fmt(corr['spearman'])}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def write_report(recipe: Recipe, outcome: dict, groups: dict[str, list[str]], out: Path) -> dict:
    """``out/report/``: report.md, results.json and the plots, replaced as a whole."""
    from midalign.files import atomic_output_dir
    from midalign.report import plot_correlation, plot_grouped_bars
    from midalign.retrieval import NORMALIZED_STATES

    summary = summarize_run(recipe, outcome, groups)
    with atomic_output_dir(Path(out) / "report", overwrite=True) as tmp:
        write_json(tmp / "results.json", {"recipe": recipe.name, **summary, "raw": outcome})
        write_text_atomic(tmp / "report.md", report_markdown(recipe, summary, groups))
        table = summary["table"]
        if table:
            columns = [c for c in next(iter(table.values()))]
            plot_grouped_bars(
                columns,
                {
                    name: ([cols[c]["mean"] for c in columns], [cols[c]["ci95"] for c in columns])
                    for name, cols in table.items()
                },
                tmp / "scores.png",
                ylabel=summary["metric"] or "score",
                title=f"{recipe.name}: {recipe.task}",
            )
        retrieval = summary.get("retrieval")
        if retrieval:
            langs = list(retrieval["base"])
            series = {"base": ([retrieval["base"][g] for g in langs], [None] * len(langs))}
            for name, per in retrieval["systems"].items():
                series[name] = ([per[g]["mean"] for g in langs], [per[g]["ci95"] for g in langs])
            plot_grouped_bars(
                langs,
                series,
                tmp / "retrieval.png",
                ylabel="xsim retrieval accuracy",
                title=f"retrieval at layer {retrieval['layer']}, before and after, "
                f"{NORMALIZED_STATES[retrieval['normalize']]} states",
            )
        corr = summary.get("correlation")
        if corr and corr["points"]:
            labels = list(corr["points"])
            plot_correlation(
                [corr["points"][g][0] for g in labels],
                [corr["points"][g][1] for g in labels],
                labels,
                tmp / "correlation.png",
                xlabel=f"base retrieval at layer {corr['layer']}",
                ylabel=f"{corr['system']} {summary['metric']}",
                title="retrieval vs transfer",
            )
    return summary
