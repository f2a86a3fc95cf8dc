"""`midalign eval`: generate answers for a task's test set and score them per language."""

from __future__ import annotations

import argparse
import logging
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midalign.cli.options import (
    add_compile_option,
    add_dtype_option,
    add_group_option,
    add_model_options,
    add_output_options,
    add_placement_options,
    add_task_data_options,
    parse_groups,
    positive_int,
)
from midalign.errors import InputError
from midalign.evaluation.run import SCORINGS, evaluate, write_outputs
from midalign.evaluation.tasks import TASKS, get_task, source_forms
from midalign.files import atomic_output_dir, check_output_dir
from midalign.modeling.dtypes import dtype_name, resolve_dtype
from midalign.modeling.loading import load_model
from midalign.modeling.placement import parse_placement

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (optionally with an adapter) on slots, mt, ner or topic",
        description=textwrap.fill(
            "Prompt a causal LM with a task's test set (prompts of the paper's Appendix D.2), "
            "decode greedily in batches and parse the answers (or, with --scoring loglik, pick "
            "the label of highest log-probability), and score them per language. Writes "
            "results.json, predictions.jsonl, scores.csv, scores.png and per-language scores for "
            "`midalign probe --scores`."
        )
        + "\n\n--data forms per task:\n"
        + source_forms(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_placement_options(p)
    add_task_data_options(p, "the task to evaluate", "--data", "de-en,en-ja", split="test")
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="the longer zero-shot prompt where the paper has one (slot filling), for a model "
        "never trained on the task",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="prompts per batch (default: 32)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="cap on generated tokens (default per task: "
        + ", ".join(f"{n} {cls.max_new_tokens}" for n, cls in TASKS.items())
        + ")",
    )
    p.add_argument(
        "--scoring",
        choices=SCORINGS,
        default="generate",
        help="generate: greedy answers, parsed (every task); loglik: the label of highest "
        "log-probability after the prompt, as lm-evaluation-harness scores multiple choice, "
        "plus the pick per character of the label (<metric>_norm); classification only "
        "(topic). Default: generate",
    )
    add_group_option(p, "to average, e.g. supervised=ar,en,es or transfer=de-en,ja-en")
    p.add_argument(
        "--comet-model",
        type=Path,
        help="mt only: a local Unbabel/wmt22-comet-da folder for COMET-22 (needs the extra "
        "midalign[comet]; never downloaded)",
    )
    add_dtype_option(p)
    add_compile_option(p, "evaluation (generation or likelihood scoring)", "off")
    add_output_options(p, "output directory", "no progress bar")


def run(args: argparse.Namespace) -> int:
    start = time.time()
    check_output_dir(args.out, args.overwrite)
    placement = parse_placement(args.device_map, args.max_memory, args.offload_folder)
    task = get_task(args.task)
    keys = task.languages(args.langs)
    groups = parse_groups(args.group, task.languages, "transfer=de,ja", keys)
    if args.comet_model is not None and args.task != "mt":
        raise InputError("--comet-model: COMET scores translations only (--task mt)")
    examples = task.read(args.data, keys, args.split, args.limit)
    if args.scoring == "loglik" and task.choices(examples[0]) is None:
        raise InputError(
            f"--scoring loglik: the {args.task} task has no closed set of answers to score "
            "(loglik scores classification: topic); use --scoring generate"
        )
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
        scoring=args.scoring,
        compile=args.compile,
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
        "scoring": args.scoring,
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
