"""Executes a recipe as cached steps: one YAML recipe (:mod:`midalign.experiments.recipe`) →
prepared data, trained and merged adapters, transfer scores and retrieval before and after, the
outcome that :mod:`midalign.report` turns into a report (docs/design.md §6). The recipe wires the
parts; the parts (:mod:`midalign.training.run`, :mod:`midalign.evaluation.run`,
:mod:`midalign.probe.run`, :mod:`midalign.training.merge`) know nothing of recipes.

Every unit of work is a *step* (prepare data, train a system with one seed, merge, evaluate,
probe). A step lives in ``<out>/steps/<name>-<hash>/``, where the hash covers everything its
result depends on (its own settings and the hashes of the steps it consumes), and is finished
when its ``done.json`` exists, written last and atomically. Re-running a recipe reuses finished
steps, redoes the ones whose settings changed, and resumes a training step that was killed
from its last complete checkpoint.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midalign import sections
from midalign.errors import InputError
from midalign.experiments.recipe import DataSpec, Recipe, System, check_model, system_config
from midalign.files import write_json
from midalign.training.model_card import add_retrieval

log = logging.getLogger(__name__)

# Part of the hash of every step that reads data (prepare, evaluate, probe), raised when the
# same settings come to read other examples, so that no run reuses a step read the old way.
# 2: SIB-200's CSV quoting undone; ``limit`` a seeded sample instead of the first N rows.
READING = 2
# Settings added after run directories existed: left out of a step's hash while at the value
# those steps used, so that those runs' steps are reused (they computed the same). Training
# steps, by section of their config, ``optim.bf16`` resolved (``auto`` is off on a CPU without
# native bf16: float32 as every earlier training step); probe and eval steps: the dtype they
# load the model in, resolved (``auto`` is float32 there), as every one of them used float32.
# ``compile`` at its default (off for training and evaluation; auto for the probe, which runs
# eagerly in float32 on a CPU, and on a machine that compiles computes the same up to rounding,
# as another CPU does).
LATER_DEFAULTS = {
    ("align", "normalize"): "none",
    ("align", "stats"): "batch",
    ("align", "stats_pairs"): 256,
    ("optim", "bf16"): "false",
    ("optim", "data_order"): "global",
    ("align", "matched"): False,
    ("probe", "dtype"): "float32",
    ("eval", "dtype"): "float32",
    ("eval", "scoring"): "generate",
    ("model", "compile"): "off",
    ("data", "align_pivot"): "english",
    ("probe", "compile"): "auto",
    ("eval", "compile"): "off",
}


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
        # a dry run's steps to run -> what each would read: (field, source, model or data)
        self.reads: dict[str, list[tuple[str, str, str]]] = {}

    def folder(self, name: str, spec: dict[str, Any]) -> Path:
        slug = re.sub(r"_*-_*", "-", re.sub(r"[^\w.-]+", "_", name))  # align (top) → align_top
        return self.root / f"{slug}-{spec_hash(spec)}"

    def run(
        self,
        name: str,
        spec: dict[str, Any],
        fn: Callable[[Path], dict],
        reads: Sequence[tuple[str, str, str]] = (),
    ) -> dict:
        """``fn(folder)``'s result, or the stored one if this exact step finished before; either
        way with ``"step"``, the folder's name, which later steps' specs use as its identity.
        ``reads``: the model and data the step reads, as ``(field, source, "model" or
        "data")``, which a dry run lists (:func:`midalign.data.origin.describe`)."""
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
            self.reads[folder.name] = list(reads)
            return {"step": folder.name}
        log.info("step %s", folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "spec.json", spec)
        segments = _segments(folder)  # one an attempt: a resumed step has several
        result = fn(folder)
        if any(s != {**segments[-1], "started": s["started"]} for s in segments):
            log.warning(
                "%s ran in %d attempts whose environments differ (%s): its result may not be "
                "what one uninterrupted run gives",
                folder.name,
                len(segments),
                ENVIRONMENT_FILE,
            )
        write_json(done, {"step": name, "spec": spec, "result": result, "environment": segments})
        self.ran.append(folder.name)
        return {**result, "step": folder.name}


ENVIRONMENT_FILE = "environment.json"  # in a step folder: each attempt's environment


def environment() -> dict[str, Any]:
    """What a step's float numerics depend on besides its settings: library versions, torch's
    threads, the CPU and the kernels torch dispatches to (a resumed run on another machine or
    thread count trains to another adapter: docs/results/cpu_transfer/determinism.md)."""
    import peft
    import torch
    import transformers

    from midalign.modeling.dtypes import cpu_bf16_feature, cpu_name

    return {
        "cpu": cpu_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": cpu_bf16_feature(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _segments(folder: Path) -> list[dict[str, Any]]:
    """The environments of the step's attempts so far, this one appended (and saved)."""
    path = folder / ENVIRONMENT_FILE
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    now = {**environment(), "started": started}
    segments = [*earlier, now]
    write_json(path, segments)
    return segments


# --------------------------------------------------------------------------- running


@dataclass
class RunOptions:
    out: Path
    progress: bool = True
    dry_run: bool = False


class Runner:
    """Executes a recipe step by step (see the module docstring)."""

    def __init__(self, recipe: Recipe, options: RunOptions) -> None:
        from midalign.evaluation.tasks import get_task

        self.recipe = recipe
        self.opt = options
        self.out = Path(options.out)
        self.steps = Steps(self.out, options.dry_run)
        self.task = get_task(recipe.task.name)
        self.test_keys: list[str] = []
        read: set[tuple[str, str, str | None]] = set()  # (key, source, split) read so far
        for i, spec in enumerate(recipe.task.test):
            keys = self.task.languages(",".join(spec.langs))
            twice = [k for k in keys if (k, spec.source, spec.split) in read]
            if twice:
                raise InputError(
                    f"{recipe.path}: task.test[{i}]: {', '.join(twice)} already read from "
                    f"{spec.source} ({spec.split}) by an earlier test source"
                )
            read.update((k, spec.source, spec.split) for k in keys)
            self.test_keys += [k for k in keys if k not in self.test_keys]
        self.groups = {
            name: self.task.languages(",".join(codes)) for name, codes in recipe.task.groups.items()
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

        settings = {"task": self.task.name, **spec.hashed(), "reading": READING}
        reads = [(f"task.{name}", spec.source, "data")]
        return self.steps.run(f"data-{name}", settings, work, reads)

    # ----------------------------------------------------------------- train and merge

    def train_config(self, system: System, seed: int, data: dict[str, dict]) -> dict:
        """The system's full TrainConfig as nested sections (validated when the recipe was
        loaded)."""
        dev = data["dev"].get("path") if "dev" in data else None
        return system_config(self.recipe, system, seed, data["train"].get("path"), dev).to_dict()

    def train(self, system: System, seed: int, data: dict[str, dict]) -> dict:
        from midalign.modeling.dtypes import DTYPES, resolve_bf16
        from midalign.training import run_dir
        from midalign.training.config import from_dict
        from midalign.training.run import train

        sections = self.train_config(system, seed, data)
        # optim.bf16 hashed as it resolves here: a step is redone exactly when it would train
        # in another precision than before (LATER_DEFAULTS), and written to the step's
        # config.yaml. The run gets the recipe's value, which resolves the same in this
        # process, so that its log says what decided it (auto: the CPU), not "as requested".
        weights = DTYPES.get(sections["model"]["dtype"])
        bf16 = resolve_bf16(sections["optim"]["bf16"], weights)[0]
        hashed = {**sections, "optim": {**sections["optim"], "bf16": "true" if bf16 else "false"}}
        # The data files' paths change with their hashes; their hashes are what matter. (The
        # paths are under --out and stay in the hash, so that the steps of run folders made
        # before keep their names: the same recipe run into two --out folders names its
        # training steps differently; docs/results/cpu_transfer/determinism.md.)
        spec = {"config": _hashed(hashed), "data": {k: v.get("step") for k, v in data.items()}}
        align = sections["align"]
        if align["schedule"] != "task" and align["layers"] != "middle":
            # The layer may be L, where the loss takes the state before the final norm (it took
            # HF's hidden_states[L] before): runs made before that train these steps again.
            spec["last_layer"] = "before the final norm"
        if align["schedule"] == "alternate" and not align.get("matched", False):
            # optim.gradient_accumulation_steps counts task micro-batches under alternate (it
            # counted both kinds before, G/2 task micro-batches a step): runs made before that
            # train these steps again
            spec["accumulation"] = "task micro-batches"

        def work(folder: Path) -> dict:
            where = f"{folder}/{run_dir.CONFIG_FILE}"
            config = from_dict(sections, where)
            run_dir.write_config(folder, from_dict(hashed, where))  # optim.bf16 as it trains
            checkpoint = run_dir.resume_point(folder, required=False)
            result = train(config, folder, checkpoint, progress=self.opt.progress)
            if result.interrupted:
                raise KeyboardInterrupt
            return {
                "adapter": str(folder.resolve()),
                "global_step": result.global_step,
                "best_metric": result.best_metric,
                "align_layers": result.align_layers,
                "bf16": result.bf16,
                "budget": result.budget,
            }

        reads = [("model", self.recipe.model, "model")]
        if align["schedule"] != "task":
            reads.append(("train.data.align_data", sections["data"]["align_data"], "data"))
        return self.steps.run(f"train-{system.name}-seed{seed}", spec, work, reads)

    def merge(self, system: System, seed: int, adapters: dict[str, dict]) -> dict:
        from midalign.training.merge import merge_adapters

        m = system.merge
        weight = float(m.weight)
        task, align = adapters[m.task], adapters[m.align]
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
        from midalign.evaluation.run import evaluate, probe_scores, write_outputs
        from midalign.modeling.loading import load_model

        tests = self.recipe.task.test
        e = self.recipe.eval
        settings = {**sections.given(e), "dtype": self.dtype(e.dtype)}
        spec = {
            "model": self.recipe.model,
            "adapter": adapter["step"] if adapter else None,
            "task": self.task.name,
            # a single source hashes as it did before test sources could be listed
            "test": tests[0].hashed() if len(tests) == 1 else [t.hashed() for t in tests],
            "zero_shot": system.zero_shot,
            "eval": _hashed({"eval": settings})["eval"],
            "groups": self.groups,
            "reading": READING,
        }
        if any(t.held_out for t in tests):  # which sentences are left depends on these
            spec["used"] = [s.hashed() for s in self.used_specs()]

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
                batch_size=e.batch_size or 32,
                max_new_tokens=e.max_new_tokens,
                groups=self.groups,
                progress=self.opt.progress,
                scoring=e.scoring,
                compile=e.compile,
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
        reads = [("model", self.recipe.model, "model")]
        reads += [
            (f"task.test[{i}]" if len(tests) > 1 else "task.test", t.source, "data")
            for i, t in enumerate(tests)
        ]
        if any(t.held_out for t in tests):  # and the ids of the train and dev data
            task = self.recipe.task
            used = {"task.train": task.train, "task.dev": task.dev}
            reads += [(key, d.source, "data") for key, d in used.items() if d is not None]
        return self.steps.run(f"eval-{system.name}{suffix}", spec, work, reads)

    def used_specs(self) -> list[DataSpec]:
        """The data a system trains on or selects its checkpoint on."""
        return [s for s in (self.recipe.task.train, self.recipe.task.dev) if s is not None]

    def used_ids(self) -> set[str]:
        """The ids of every sentence in the train and dev data, in any language."""
        return {
            ex.id
            for s in self.used_specs()
            for ex in self.task.read(
                s.source, self.task.languages(",".join(s.langs)), s.split, s.limit
            )
        }

    def test_examples(self) -> list:
        """Every test source's examples, in the recipe's order; a ``held_out`` source without
        the sentences the train and dev data hold (:meth:`used_ids`). An item read twice (the
        same language and id from two sources) is an error: it would count twice."""
        used = self.used_ids() if any(t.held_out for t in self.recipe.task.test) else set()
        examples, seen = [], set()
        for i, t in enumerate(self.recipe.task.test):
            found = self.task.read(
                t.source, self.task.languages(",".join(t.langs)), t.split, t.limit
            )
            if t.held_out:
                found = [ex for ex in found if ex.id not in used]
                if not found:
                    raise InputError(
                        f"{self.recipe.path}: task.test[{i}]: every sentence of {t.source} "
                        f"({t.split}) is in the train or dev data"
                    )
            for ex in found:
                if (ex.key, ex.id) in seen:
                    raise InputError(
                        f"{self.recipe.path}: task.test[{i}]: {ex.key} sentence {ex.id} is "
                        "already read by an earlier test source"
                    )
                seen.add((ex.key, ex.id))
            examples += found
        return examples

    def probe_settings(self) -> dict[str, Any]:
        """The recipe's ``probe`` section, pooling as the recipe trains (its shared
        ``train.align.pool``) unless it names a ``pool`` of its own: the paper recipes train
        with ``mean-all`` and should measure the states they align. A pool equal to the default
        (``mean``) is left implicit, so that the steps' hashes stay what they were."""
        p = self.recipe.probe.given() if self.recipe.probe else {}
        trained = (self.recipe.train.get("align") or {}).get("pool", "mean")
        if "pool" not in p and trained != "mean":
            p["pool"] = trained
        return p

    def dtype(self, requested: str) -> str:
        """The dtype a probe or eval step loads the model in: the section's ``dtype`` (``auto``
        unless the recipe names one) as :func:`midalign.modeling.dtypes.resolve_dtype` resolves it
        on this machine. Steps hash the resolved name, so a step is redone exactly when it would
        compute in another dtype than before (see LATER_DEFAULTS)."""
        from midalign.modeling.dtypes import dtype_name, resolve_dtype

        return dtype_name(resolve_dtype(requested)[0])

    def probe(self, name: str, adapter: dict | None) -> dict:
        """Retrieval per layer and language on the recipe's parallel text (model + adapter)."""
        from midalign.probe.run import run_probe

        p = {**self.probe_settings(), "dtype": self.dtype(self.recipe.probe.dtype)}
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
                compile=p.get("compile", "auto"),
            )
            summary = {
                **probe.summary,
                "normalize": normalize,
                "dtype": p["dtype"],
                "compile": probe.compile,
                "anisotropy": probe.anisotropy,
            }
            write_json(folder / "results.json", summary)
            layer = probe.report_layer
            return {
                "layer": layer,
                "per_layer": {str(k): v["mean"] for k, v in summary["per_layer"].items()},
                "aggregate": summary["aggregate"],
                "per_language": summary["per_language"][layer]["both"],
            }

        reads = [("model", self.recipe.model, "model"), ("probe.data", p["data"], "data")]
        return self.steps.run(f"probe-{name}", spec, work, reads)

    # ----------------------------------------------------------------- the whole recipe

    def run(self) -> dict:
        r = self.recipe
        check_model(r.model, f"{r.path}: model")  # a dry run too, where loading it would not
        if not self.opt.dry_run:  # a missing test set fails now, not after hours of training
            self.test_examples()
        data = {"train": self.prepare(r.task.train, "train")}
        if r.task.dev is not None:
            data["dev"] = self.prepare(r.task.dev, "dev")
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
