"""Likelihood scoring vs greedy generation of SIB-200 topic labels, on the default model.

The same items on both sides: SIB-200 test sentences in the paper's 35 languages with the
topic prompt (plain template of the base model). Generation = ``midalign.evaluation.run.evaluate``
with ``scoring="generate"`` (batched greedy answers up to the task's 8 new tokens, parsed);
loglik = ``scoring="loglik"`` (each of the 7 labels' log-probability after the prompt, the
prompt computed once, its shared instruction once for all, logits only at label positions);
and loglik with every prompt computed whole (``share_start=False``), whose label scores must
equal the shared-start ones up to float32 rounding. Generation and loglik score the answers;
their accuracies are printed beside the times (they differ: a base model rarely answers with
a label, and loglik always picks one). The full task, 35 × 204 = 7,140 items, is extrapolated
from the items timed.

    python benchmarks/loglik_speed.py                      # 35 languages × 8 sentences
    python benchmarks/loglik_speed.py --per-lang 204 --json docs/bench/loglik.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from _common import SIB200, load_1min, quiet_start, timed

from midalign.evaluation.loglik import label_ids, label_logprobs
from midalign.evaluation.run import evaluate
from midalign.evaluation.tasks.topic import LABELS, Topic
from midalign.languages import parse_langs
from midalign.modeling.loading import load_model
from midalign.modeling.prompting import encode_prompt

FULL = 35 * 204  # the transfer experiment's SIB-200 test items


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--per-lang", type=int, default=8, help="test sentences a language (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="prompts a batch, both sides (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = Topic()
    examples = task.read(f"sib200:{SIB200}", parse_langs("paper35"), "test", args.per_lang)
    model, tokenizer = load_model("default", dtype="float32")
    load, info = quiet_start(wait=not args.no_wait)
    print(f"{len(examples)} items (35 languages × {args.per_lang}), float32, plain template")

    def run(scoring: str) -> dict:
        return evaluate(
            model,
            tokenizer,
            task,
            examples,
            batch_size=args.batch_size,
            scoring=scoring,
            progress=False,
        )

    def whole() -> list[list[float]]:  # loglik without the shared start, same inputs
        prompts, labels = [], []
        for ex in examples:
            system, prompt = task.instruction(ex)
            prompts.append(encode_prompt(tokenizer, prompt, system))
            labels.append([label_ids(tokenizer, prompt, lab, system) for lab in LABELS])
        return label_logprobs(
            model, prompts, labels, batch_size=args.batch_size, progress=False, share_start=False
        )

    run("loglik")  # warm-up: thread pool, kernels
    rows, scores = {}, {}
    for name in ("generate", "loglik", "loglik, whole prompts"):
        fn = whole if name.endswith("prompts") else lambda n=name: run(n)
        result, seconds, busy = timed(fn)
        row = {
            "seconds": seconds,
            "items_per_s": len(examples) / seconds,
            "full_task_minutes": FULL / (len(examples) / seconds) / 60,
            "others_busy": busy,
        }
        if isinstance(result, dict):
            row |= {"accuracy": result["average"], "unparseable": result["unparseable"]}
            if name == "loglik":
                scores[name] = [list(p["loglik"].values()) for p in result["predictions"]]
        else:
            scores[name] = result
        rows[name] = row
    a = torch.tensor(scores["loglik"], dtype=torch.float64)
    b = torch.tensor(scores["loglik, whole prompts"], dtype=torch.float64)
    rel = float((a - b).norm() / b.norm())
    same = int((a.argmax(1) == b.argmax(1)).sum())
    print(f"1-min load at start {load:.2f}, at end {load_1min():.2f}")
    print(f"{'':24}{'seconds':>9}{'items/s':>9}{'7,140 items':>13}{'accuracy':>10}{'busy':>7}")
    for name, row in rows.items():
        acc = f"{row['accuracy']:10.3f}" if "accuracy" in row else f"{'':10}"
        print(
            f"{name:24}{row['seconds']:9.1f}{row['items_per_s']:9.2f}"
            f"{row['full_task_minutes']:9.1f} min{acc}{row['others_busy']:7.2f}"
        )
    ratio = rows["generate"]["seconds"] / rows["loglik"]["seconds"]
    shared = rows["loglik, whole prompts"]["seconds"] / rows["loglik"]["seconds"]
    print(f"loglik is {ratio:.2f}× generation's speed on these items")
    print(f"the shared start makes loglik {shared:.2f}× faster than whole prompts")
    print(f"label scores, shared start vs whole: norm-relative difference {rel:.1e},")
    print(f"the same label picked for {same} of {len(examples)} items")
    if args.json:
        figures = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
            "machine": info,
            "items": len(examples),
            "per_lang": args.per_lang,
            "batch_size": args.batch_size,
            "load_1min_before": load,
            "load_1min_after": load_1min(),
            "rows": rows,
            "speedup": ratio,
            "shared_start_speedup": shared,
            "shared_vs_whole_rel_difference": rel,
            "shared_vs_whole_same_pick": same,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
