"""A recipe's answers item by item: system − reference with seeds and sentences as random.

The run's per-language scores (:mod:`midalign.report.stats`) average each seed's answers first,
so their intervals take the test sentences as fixed. Here every answer of a classification
task (metric ``accuracy``) is a record ``(system, seed, language, sentence id, correct)`` read
from its eval step's ``predictions.jsonl``, and :mod:`midalign.report.transfer` compares each
system with the reference (the first trained system: SFT) on every group of languages with
seeds and sentences as crossed random effects: the difference, its 95 % CI, p, and the
smallest difference the design detects with 80 % power (MDE). Beside them: the test items per
language, the per-language transfer SD (the paper's Table 3), the correlation of per-language
retrieval gains with task gains over every probed test language, and the budgets (optimizer
steps, task examples, alignment pairs) each system's adapter saw, with a warning where
compared systems differ.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

TRANSFER = "transfer"  # the group of every test language outside ``supervised``


def item_records(outcome: dict, steps: Path) -> list[dict[str, Any]]:
    """Every scored answer of every seeded system: ``{system, seed, lang, item, correct}``."""
    records = []
    for system, by_seed in outcome["scores"].items():
        for seed, result in by_seed.items():
            if seed == "-" or "step" not in result:
                continue
            path = steps / result["step"] / "predictions.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                p = json.loads(line)
                records.append(
                    {
                        "system": system,
                        "seed": int(seed),
                        "lang": p["key"],
                        "item": p["id"],
                        "correct": float(p["parsed"] == p["reference"]),
                    }
                )
    return records


def effect_groups(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """The recipe's groups, and ``transfer``: all of them but ``supervised`` together."""
    found = dict(groups)
    if len(groups) > 2:  # with one other group, that group is the transfer languages
        found[TRANSFER] = _transfer_langs(groups) or None
    return {k: v for k, v in found.items() if v}


def _transfer_langs(groups: dict[str, list[str]]) -> list[str]:
    """Every language of a group other than ``supervised`` (none without that group)."""
    if "supervised" not in groups:
        return []
    return [k for g, keys in groups.items() if g != "supervised" for k in keys]


def budgets(outcome: dict) -> tuple[dict[str, dict], list[str]]:
    """Per trained system, what its adapters saw (the same for every seed, or a list), and a
    warning for each system whose optimizer steps or task examples differ from the
    reference's."""
    table: dict[str, dict] = {}
    for system, by_seed in outcome.get("training", {}).items():
        seen = [r.get("budget", {}).get("adapter") for r in by_seed.values()]
        if not all(seen):  # steps trained before budgets were recorded
            continue
        table[system] = {
            key: sorted({s[key] for s in seen})
            for key in ("optimizer_steps", "task_examples", "align_pairs")
        }
    warnings = []
    trained = [s for s, b in table.items() if b["task_examples"] != [0]]
    if trained:
        reference = trained[0]
        for system in trained[1:]:
            for key in ("optimizer_steps", "task_examples"):
                if table[system][key] != table[reference][key]:
                    warnings.append(
                        f"{system} and {reference} differ in {key.replace('_', ' ')} "
                        f"({table[system][key]} vs {table[reference][key]}): their difference "
                        "mixes the method with the budget"
                    )
    return table, warnings


def analyse(outcome: dict, groups: dict[str, list[str]], steps: Path) -> dict[str, Any] | None:
    """The section's numbers; None for a task scored otherwise than by accuracy (BLEU, F1)."""
    from midalign.report.transfer import correlation, paired_effect, transfer_sd

    runs = [r for by_seed in outcome["scores"].values() for r in by_seed.values()]
    if not runs or runs[0].get("metric") != "accuracy":
        return None
    records = item_records(outcome, steps)
    if not records:
        return None
    # in the recipe's order: the first trained system is the reference
    reference, *systems = dict.fromkeys(r["system"] for r in records)
    items = Counter(r["lang"] for r in records if r["system"] == reference)
    seeds = {r["seed"] for r in records if r["system"] == reference}
    result: dict[str, Any] = {
        "reference": reference,
        "items_per_language": {k: n // len(seeds) for k, n in items.items()},
        "effects": {},
        "transfer_sd": {},
        "correlation": {},
    }
    result["budgets"], result["budget_warnings"] = budgets(outcome)
    per_lang_gain: dict[str, dict[str, float]] = {}
    for system in systems:
        shared = seeds & {r["seed"] for r in records if r["system"] == system}
        chosen = [r for r in records if r["seed"] in shared]
        effects = {}
        for name, langs in effect_groups(groups).items():
            try:
                if len(shared) < 2:  # no seed variance: the estimate alone
                    raise ValueError("one seed")
                effects[name] = _plain(paired_effect(chosen, system, reference, langs))
            except ValueError as e:  # one seed; no residual variation (every difference equal)
                effects[name] = {
                    "estimate": _mean_difference(chosen, system, reference, langs),
                    "seeds": len(shared),
                    "ci": None,
                    "why": str(e),
                }
        result["effects"][system] = effects
        gain = _per_language(chosen, system, reference)
        per_lang_gain[system] = gain
        transfer = _transfer_langs(groups)
        if len(transfer) >= 2:
            result["transfer_sd"][system] = transfer_sd({k: gain[k] for k in transfer})
        retrieval = _retrieval_gain(outcome, system, reference, shared)
        if retrieval and len(set(retrieval) & set(gain)) >= 3:
            found = correlation(retrieval, gain)
            if math.isfinite(found["r"]):  # not when either side is constant
                result["correlation"][system] = found
    result["task_gain_per_language"] = per_lang_gain
    return _json_safe(result)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (a bootstrap CI of a few languages) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _mean_difference(records: list[dict], system: str, reference: str, langs: list[str]) -> float:
    from midalign.report.transfer import differences

    diffs = differences(records, system, reference, langs)
    return sum(diffs.values()) / len(diffs)


def _per_language(records: list[dict], system: str, reference: str) -> dict[str, float]:
    """Per language: the mean over seeds and items of system − reference correct."""
    sums: dict[str, list[float]] = {}
    for r in records:
        sign = {system: 1.0, reference: -1.0}.get(r["system"])
        if sign is not None:
            sums.setdefault(r["lang"], [0.0, 0])
            sums[r["lang"]][0] += sign * r["correct"]
            sums[r["lang"]][1] += 0.5  # one answer of each system per (seed, item)
    return {lang: total / n for lang, (total, n) in sums.items()}


def _retrieval_gain(
    outcome: dict, system: str, reference: str, seeds: set[int]
) -> dict[str, float] | None:
    """Per probed language: the mean over seeds of system − reference retrieval."""
    probes = outcome.get("retrieval", {})
    if system not in probes or reference not in probes:
        return None
    shared = [str(s) for s in seeds if str(s) in probes[system] and str(s) in probes[reference]]
    if not shared:
        return None
    langs = probes[reference][shared[0]]["per_language"]
    return {
        lang: sum(
            probes[system][s]["per_language"][lang] - probes[reference][s]["per_language"][lang]
            for s in shared
        )
        / len(shared)
        for lang in langs
    }


def _plain(effect: dict) -> dict:
    """``paired_effect``'s result as JSON keeps it."""
    return {**effect, "ci": list(effect["ci"])}


def markdown(section: dict[str, Any]) -> list[str]:
    """The report's section: effects with CI and MDE, items, budgets, SD, correlation."""
    ref = section["reference"]
    items = section["items_per_language"]
    counts = sorted(set(items.values()))
    lines = [
        f"## Transfer, answer by answer: system − {ref} (×100)",
        "",
        "Each answer is a record; a system's difference from "
        f"{ref} is a mean over seeds, sentences and the group's languages, with seeds and "
        "sentences as crossed random effects (sentences are shared by all languages: REML, "
        "Satterthwaite df). MDE: the difference this design detects with 80 % power at "
        "α 0.05. An interval that covers 0 is no answer, whichever side the estimate is on.",
        "",
        f"Test items per language: {', '.join(map(str, counts))}"
        + (f" ({len(items)} languages)" if len(counts) == 1 else f" over {len(items)} languages")
        + ".",
        "",
        "| system | group | difference | 95 % CI | p | MDE | seeds | sentences |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, effects in section["effects"].items():
        for group, e in effects.items():
            if e["ci"] is None:
                lines.append(
                    f"| {system} | {group} | {e['estimate'] * 100:+.1f} | – ({e['why']}) | – | – "
                    f"| {e['seeds']} | – |"
                )
                continue
            lo, hi = e["ci"]
            lines.append(
                f"| {system} | {group} | {e['estimate'] * 100:+.1f} | "
                f"{lo * 100:+.1f} to {hi * 100:+.1f} | {e['p']:.3f} | {e['mde'] * 100:.1f} | "
                f"{e['seeds']} | {e['items']} |"
            )
    lines.append("")
    if section["budgets"]:
        lines += [
            "Budgets of the adapters evaluated (per seed; a list where seeds differ):",
            "",
            "| system | optimizer steps | task examples | alignment pairs |",
            "|---|---|---|---|",
            *(
                f"| {s} | {_values(b['optimizer_steps'])} | {_values(b['task_examples'])} | "
                f"{_values(b['align_pairs'])} |"
                for s, b in section["budgets"].items()
            ),
            "",
        ]
    for warning in section["budget_warnings"]:
        lines += [f"**Warning:** {warning}.", ""]
    if section["transfer_sd"]:
        lines += [
            "Transfer SD (the SD over the transfer languages of each language's difference, "
            "the paper's Table 3): "
            + "; ".join(f"{s} {v * 100:.1f}" for s, v in section["transfer_sd"].items()),
            "",
        ]
    for system, c in section["correlation"].items():
        ci = c.get("fisher_ci")
        ci_text = f", 95 % CI {ci[0]:+.2f} to {ci[1]:+.2f}" if ci else ""
        lines += [
            f"Retrieval gain vs task gain over languages ({system} − {ref}, {c['n']} languages): "
            f"Pearson r = {c['r']:+.2f}{ci_text}.",
            "",
        ]
    return lines


def _values(values: list) -> str:
    return str(values[0]) if len(values) == 1 else ", ".join(map(str, values))
