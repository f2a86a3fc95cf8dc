"""The statistics of a run's report: mean ± 95 % CI over seeds, paired differences against a
reference system, group means of per-language scores, the dev alignment at the end of training,
and :func:`summarize_run`, which puts them together for a recipe's outcome.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.experiments.recipe import Recipe


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


def summarize_run(recipe: Recipe, outcome: dict, groups: dict[str, list[str]]) -> dict:
    """Mean ± 95 % CI over seeds of every evaluated system, per group and language; retrieval
    before/after per language; the correlation of base retrieval with transfer scores."""
    from midalign.probe.retrieval import correlate

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
        # system -> seed -> group (and "even layers", unless no even layer was probed) -> retrieval
        evens = base["aggregate"] is not None
        by_group = {
            name: {
                seed: {
                    **group_means(run["per_language"], groups),
                    **({"even layers": run["aggregate"]} if evens else {}),
                }
                for seed, run in by_seed.items()
            }
            for name, by_seed in outcome["retrieval"].items()
        }
        summary["retrieval"] = {
            "layer": base["layer"],
            "normalize": recipe.probe.normalize if recipe.probe else "none",
            "base": base["per_language"],
            "base_aggregate": base["aggregate"],
            "base_groups": group_means(base["per_language"], groups),
            "systems": after,
            "systems_aggregate": {
                name: mean_ci([run["aggregate"] for run in by_seed.values()]) if evens else None
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
    from midalign.training.callbacks import LOG_FILE, read_log

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
