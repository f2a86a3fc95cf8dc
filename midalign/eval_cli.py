"""`midalign eval`: generate answers for a task's test set and score them per language.

:func:`evaluate` is the whole evaluation as a function (prompts → batched greedy generation →
parsing → per-language scores and group averages), for callers that already hold a model, such
as the experiment runner; the command adds reading data, loading the model and writing files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from midalign.cli import LIMIT_HELP, add_model_options, add_placement_options, positive_int
from midalign.dtypes import DTYPE_CHOICES, dtype_name, resolve_dtype
from midalign.errors import InputError
from midalign.files import atomic_output_dir, check_output_dir, write_json
from midalign.generate import generate
from midalign.models import load_model
from midalign.placement import parse_placement
from midalign.prompting import encode_prompt, prompt_text
from midalign.tasks import TASKS, Example, Task, get_task, source_forms
from midalign.tasks.translation import PIVOT, comet_scores

log = logging.getLogger(__name__)


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    zero_shot: bool = False,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    groups: dict[str, list[str]] | None = None,
    comet_model: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer every example greedily and score the answers per language (``example.key``).

    Returns ``{"task", "metric", "zero_shot", "per_language": {key: scores + n + unparseable},
    "groups": {name: mean of the headline metric over the group's keys}, "average",
    "unparseable", "signatures", "predictions": [one dict per example]}``. Outputs that cannot
    be parsed score as empty answers and are counted, never raised.
    """
    if not examples:
        raise InputError("no examples to evaluate")
    instructions = [task.instruction(ex, zero_shot) for ex in examples]
    prompts = [encode_prompt(tokenizer, prompt, system) for system, prompt in instructions]
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        stop=task.stop,
        batch_size=batch_size,
        progress=progress,
    )
    parsed = [task.parse(out, ex) for out, ex in zip(outputs, examples, strict=True)]
    comet = None
    if comet_model is not None:
        if task.name != "mt":
            raise InputError("--comet-model: COMET scores translations only (--task mt)")
        comet = comet_scores(examples, [p.value for p in parsed], comet_model)

    by_key: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_key.setdefault(ex.key, []).append(i)
    per_language: dict[str, dict[str, Any]] = {}
    signatures: dict[str, None] = {}  # distinct sacrebleu signatures, in order
    for key, rows in by_key.items():
        scores = task.score([examples[i] for i in rows], [parsed[i].value for i in rows])
        signatures.update({sig: None for sig in scores.get("signatures", {}).values()})
        if comet is not None:
            scores["comet"] = sum(comet[i] for i in rows) / len(rows)
        scores["n"] = len(rows)
        scores["unparseable"] = sum(not parsed[i].ok for i in rows)
        per_language[key] = scores

    metric = task.metric
    group_scores = {}
    for name, keys in (groups or {}).items():
        present = [k for k in keys if k in per_language]
        if not present:
            raise InputError(f"--group {name}: none of {', '.join(keys)} was evaluated")
        group_scores[name] = {
            metric: sum(per_language[k][metric] for k in present) / len(present),
            "languages": present,
            "missing": [k for k in keys if k not in per_language],
        }
    predictions = [
        {
            "id": ex.id,
            "key": ex.key,
            "lang": ex.lang,
            "prompt": prompt_text(tokenizer, prompt, system),
            "reference": task.target(ex),
            "output": out,
            "parsed": p.value,
            "ok": p.ok,
            **({"comet": comet[i]} if comet is not None else {}),
        }
        for i, (ex, (system, prompt), out, p) in enumerate(
            zip(examples, instructions, outputs, parsed, strict=True)
        )
    ]
    return {
        "task": task.name,
        "metric": metric,
        "zero_shot": zero_shot,
        "per_language": per_language,
        "average": sum(s[metric] for s in per_language.values()) / len(per_language),
        "groups": group_scores,
        "n": len(examples),
        "unparseable": sum(not p.ok for p in parsed),
        "signatures": list(signatures),
        "predictions": predictions,
    }


def probe_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-language headline scores as ``midalign probe --scores`` reads them ({lang: score}),
    by file name. Translation has two files, keyed by the non-English side: directions into
    English and out of it (directions without English are left out)."""
    metric, per = results["metric"], results["per_language"]
    if results["task"] != "mt":
        return {"probe_scores.json": {k: v[metric] for k, v in per.items()}}
    into = {k.split("-")[0]: v[metric] for k, v in per.items() if k.endswith(f"-{PIVOT}")}
    out_of = {k.split("-")[1]: v[metric] for k, v in per.items() if k.startswith(f"{PIVOT}-")}
    files = {}
    if into:
        files[f"probe_scores_xx-{PIVOT}.json"] = into
    if out_of:
        files[f"probe_scores_{PIVOT}-xx.json"] = out_of
    return files


# --------------------------------------------------------------------------- command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (optionally with an adapter) on slots, mt, ner or topic",
        description=textwrap.fill(
            "Prompt a causal LM with a task's test set (prompts of the paper's Appendix D.2), "
            "decode greedily in batches, parse the answers and score them per language. Writes "
            "results.json, predictions.jsonl, scores.csv, scores.png and per-language scores for "
            "`midalign probe --scores`."
        )
        + "\n\n--data forms per task:\n"
        + source_forms(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_placement_options(p)
    p.add_argument("--task", required=True, choices=list(TASKS), help="the task to evaluate")
    p.add_argument("--data", required=True, help="the task's data: a path or hub id (see above)")
    p.add_argument(
        "--langs",
        required=True,
        help="languages (ISO 639-1/639-3/FLoRes codes, presets); for mt, directions such as "
        "de-en,en-ja (a bare code means both directions with English)",
    )
    p.add_argument("--split", default="test", help="data split (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, metavar="N", help=LIMIT_HELP)
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="the longer zero-shot prompt where the paper has one (slot filling), for a model "
        "never trained on the task",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=16, help="prompts per batch (default: 16)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="cap on generated tokens (default per task: "
        + ", ".join(f"{n} {cls.max_new_tokens}" for n, cls in TASKS.items())
        + ")",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=CODES",
        help="a language group to average, e.g. supervised=ar,en,es or transfer=de-en,ja-en "
        "(repeatable)",
    )
    p.add_argument(
        "--comet-model",
        type=Path,
        help="mt only: a local Unbabel/wmt22-comet-da folder for COMET-22 (needs the extra "
        "midalign[comet]; never downloaded)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype; auto: bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16, float32 "
        "elsewhere (results.json records what it resolved to and why) (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_groups(task: Task, specs: list[str], keys: list[str]) -> dict[str, list[str]]:
    """``--group NAME=CODES`` options, checked against ``--langs`` before any work starts."""
    groups = {}
    for spec in specs:
        name, sep, codes = spec.partition("=")
        if not sep or not name or not codes:
            raise InputError(f"--group: expected NAME=CODES such as transfer=de,ja; got {spec!r}")
        groups[name] = task.languages(codes)
        if not set(groups[name]) & set(keys):
            raise InputError(f"--group {name}: none of {codes} is in --langs")
    return groups


def run(args: argparse.Namespace) -> int:
    start = time.time()
    check_output_dir(args.out, args.overwrite)
    placement = parse_placement(args.device_map, args.max_memory, args.offload_folder)
    task = get_task(args.task)
    keys = task.languages(args.langs)
    groups = _parse_groups(task, args.group, keys)
    if args.comet_model is not None and args.task != "mt":
        raise InputError("--comet-model: COMET scores translations only (--task mt)")
    examples = task.read(args.data, keys, args.split, args.limit)
    log.info("%d examples in %d languages", len(examples), len(keys))
    dtype, dtype_reason = resolve_dtype(args.dtype)
    model, tokenizer = load_model(args.model, args.adapter, dtype_name(dtype), placement=placement)
    results = evaluate(
        model,
        tokenizer,
        task,
        examples,
        zero_shot=args.zero_shot,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        groups=groups,
        comet_model=args.comet_model,
        progress=not args.no_progress,
    )
    predictions = results.pop("predictions")
    results["config"] = {
        "model": args.model,
        "adapter": args.adapter,
        "task": args.task,
        "data": args.data,
        "langs": keys,
        "split": args.split,
        "limit": args.limit,
        "zero_shot": args.zero_shot,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens or task.max_new_tokens,
        "dtype": dtype_name(dtype),
        "dtype_requested": args.dtype,
        "dtype_reason": dtype_reason,
        "device_map": args.device_map,
        "max_memory": args.max_memory,
    }
    results["seconds"] = round(time.time() - start, 1)
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        write_outputs(tmp, results, predictions, args.model, args.adapter)
    _print_table(results, predictions, args.out)
    return 0


def write_outputs(
    folder: Path,
    results: dict[str, Any],
    predictions: Sequence[dict[str, Any]],
    model: str,
    adapter: str | None,
) -> None:
    """results.json, predictions.jsonl, scores.csv, the probe's per-language scores and
    scores.png of one evaluation, into ``folder``."""
    write_json(folder / "results.json", results)
    lines = [json.dumps(p, ensure_ascii=False) for p in predictions]
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "scores.csv").write_text(_scores_csv(results), encoding="utf-8")
    for name, scores in probe_scores(results).items():
        write_json(folder / name, scores)
    _plot(results, folder / "scores.png", model, adapter)


def _scores_csv(results: dict[str, Any]) -> str:
    per = results["per_language"]
    first = next(iter(per.values()))
    columns = [c for c, v in first.items() if not isinstance(v, dict)]  # signatures stay in JSON
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["language", *columns])
    for key, scores in per.items():
        writer.writerow([key, *(_fmt(scores[c]) for c in columns)])
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _plot(results: dict[str, Any], path: Path, model: str, adapter: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, per = results["metric"], results["per_language"]
    keys = list(per)
    values = [per[k][metric] for k in keys]
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(keys), 4))
    ax.bar(range(len(keys)), values, color="tab:blue")
    ax.axhline(results["average"], color="gray", linestyle=":", label="average")
    ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=8)
    name = "Gemma 3 270M" if model == "default" else Path(model).name
    name += f" + {Path(adapter).name}" if adapter else ""
    shot = ", zero-shot" if results["zero_shot"] else ""
    ax.set(ylabel=metric, title=f"{name}: {results['task']}{shot}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_table(results: dict[str, Any], predictions: Sequence[dict[str, Any]], out: Path) -> None:
    metric = results["metric"]
    print(f"\n{'language':<20} {metric:>9} {'n':>6} {'unparseable':>12}")
    for key, s in results["per_language"].items():
        print(f"{key:<20} {s[metric]:9.4f} {s['n']:6d} {s['unparseable']:12d}")
    print(f"{'average':<20} {results['average']:9.4f}")
    for name, g in results["groups"].items():
        print(f"{name:<20} {g[metric]:9.4f}  ({', '.join(g['languages'])})")
    bad = [p for p in predictions if not p["ok"]]
    if bad:  # a score of 0 with every answer unreadable is a format problem, not a bad model
        print(
            f"{len(bad)} of {len(predictions)} answers could not be parsed and scored as empty; "
            f"the first ({bad[0]['key']}, id {bad[0]['id']}): {bad[0]['output'][:200]!r}"
        )
    print(f"results in {out}/")
