"""Evaluation of a model already in memory, and the files one evaluation writes.

Prompts → batched greedy generation → parsing → per-language scores and group averages.

:func:`evaluate` is for callers that already hold a model (``midalign eval``, the experiment
runner, ``midalign merge --search``); :func:`write_outputs` writes what ``midalign eval`` and a
runner's eval step keep.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from midalign.errors import InputError
from midalign.evaluation.tasks import Example, Task
from midalign.evaluation.tasks.translation import PIVOT, comet_scores
from midalign.files import write_json, write_text_atomic
from midalign.modeling.compiled import check_mode, compiled_layers
from midalign.modeling.generate import generate
from midalign.modeling.prompting import encode_prompt, prompt_text

SCORINGS = ("generate", "loglik")  # how an answer is obtained: see evaluate()


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    zero_shot: bool = False,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    groups: dict[str, list[str]] | None = None,
    comet_model: Path | None = None,
    progress: bool = True,
    scoring: str = "generate",
    compile: str = "off",
) -> dict[str, Any]:
    """Answer every example and score the answers per language (``example.key``).

    ``scoring``: ``generate`` answers greedily and parses the answer; ``loglik`` (tasks with a
    closed label set: topic) picks the label of highest log-probability after the prompt
    (:mod:`midalign.evaluation.loglik`), and also scores the pick per character of the label (the
    headline metric with ``_norm`` appended, lm-evaluation-harness's ``acc_norm``).
    ``compile``: ``auto``, ``on`` or ``off``, the decoder layers under ``torch.compile``
    (:mod:`midalign.modeling.compiled`; the result's ``compile`` says what it did).

    Returns ``{"task", "metric", "zero_shot", "scoring", "per_language": {key: scores + n +
    unparseable}, "groups": {name: mean of the headline metric over the group's keys},
    "average", "unparseable", "signatures", "predictions": [one dict per example]}``. Outputs
    that cannot be parsed score as empty answers and are counted, never raised.
    """
    if not examples:
        raise InputError("no examples to evaluate")
    if scoring not in SCORINGS:
        raise InputError(f"--scoring {scoring}: one of {', '.join(SCORINGS)}")
    check_mode(compile)
    instructions = [task.instruction(ex, zero_shot) for ex in examples]
    prompts = [encode_prompt(tokenizer, prompt, system) for system, prompt in instructions]
    extra: list[dict[str, Any]] = [{} for _ in examples]  # per prediction: label scores
    normalised = None  # loglik: the label of highest log-probability per character
    with compiled_layers(model, compile) as how:
        if scoring == "loglik":
            outputs, extra, normalised = _loglik_answers(
                model, tokenizer, task, examples, instructions, prompts, batch_size, progress
            )
        else:
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
        if normalised is not None:
            norm = task.score([examples[i] for i in rows], [normalised[i] for i in rows])
            scores[f"{task.metric}_norm"] = norm[task.metric]
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
            **extra[i],
        }
        for i, (ex, (system, prompt), out, p) in enumerate(
            zip(examples, instructions, outputs, parsed, strict=True)
        )
    ]
    return {
        "task": task.name,
        "metric": metric,
        "zero_shot": zero_shot,
        "scoring": scoring,
        "compile": how.as_dict(),
        "per_language": per_language,
        "average": sum(s[metric] for s in per_language.values()) / len(per_language),
        "groups": group_scores,
        "n": len(examples),
        "unparseable": sum(not p.ok for p in parsed),
        "signatures": list(signatures),
        "predictions": predictions,
    }


def _loglik_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    instructions: Sequence[tuple[str | None, str]],
    prompts: Sequence[list[int]],
    batch_size: int,
    progress: bool,
) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Likelihood scoring: each example's label of highest log-probability (its "output"),
    the label scores kept with the prediction, and the pick per character of the label."""
    from midalign.evaluation.loglik import label_ids, label_logprobs

    choices = [task.choices(ex) for ex in examples]
    if any(c is None for c in choices):
        raise InputError(
            f"--scoring loglik: the {task.name} task has no closed set of answers to score "
            "(loglik scores classification: topic); use --scoring generate"
        )
    # A label's tokens depend on the prompt only through a chat template's answer turn.
    memo: dict[tuple[str | None, str, str], list[int]] = {}
    label_tokens = []
    for (system, prompt), labels in zip(instructions, choices, strict=True):
        row = []
        for label in labels:
            key = (system, prompt if tokenizer.chat_template else "", label)
            if key not in memo:
                memo[key] = label_ids(tokenizer, prompt, label, system)
            row.append(memo[key])
        label_tokens.append(row)
    logps = label_logprobs(model, prompts, label_tokens, batch_size=batch_size, progress=progress)
    outputs, extra, normalised = [], [], []
    for labels, scores in zip(choices, logps, strict=True):
        best = max(range(len(labels)), key=lambda k: scores[k])
        best_norm = max(range(len(labels)), key=lambda k: scores[k] / len(labels[k]))
        outputs.append(labels[best])
        normalised.append(labels[best_norm])
        extra.append({"loglik": dict(zip(labels, scores, strict=True))})
    return outputs, extra, normalised


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


def write_outputs(
    folder: Path,
    results: dict[str, Any],
    predictions: Sequence[dict[str, Any]],
    model: str,
    adapter: str | None,
) -> None:
    """results.json, predictions.jsonl, scores.csv, the probe's per-language scores and
    scores.png of one evaluation, into ``folder``."""
    # matplotlib only now: importing this module must not switch a notebook's backend to Agg
    from midalign.report.plots import plot_scores

    write_json(folder / "results.json", results)
    lines = [json.dumps(p, ensure_ascii=False) for p in predictions]
    write_text_atomic(folder / "predictions.jsonl", "\n".join(lines) + "\n")
    write_text_atomic(folder / "scores.csv", _scores_csv(results))
    for name, scores in probe_scores(results).items():
        write_json(folder / name, scores)
    plot_scores(results, folder / "scores.png", model, adapter)


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
