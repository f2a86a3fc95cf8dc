"""Batched greedy generation vs one prompt at a time, on the default model.

Same prompts on both sides (SIB-200 English sentences with the paper's MT prompt into German,
the plain template of the base model), same greedy config and stop rule (a newline). One at a
time = a loop of ``model.generate`` over single prompts, transformers' own decoding loop, which
is what a user without batching writes. Batched = ``midalign.modeling.generate.generate`` with
``--batch-size`` prompts per batch (length-sorted, left-padded, KV cache, prefill in groups of
similar length, finished rows leaving the batch). Outputs must be identical.

    python benchmarks/generation.py                       # 32 prompts, 32 new tokens, batch 32
    python benchmarks/generation.py --batch-size 16,32 --threads 1 --json docs/bench/gen.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from _common import load_1min, quiet_start, read_sib200, timed

from midalign.evaluation.tasks.base import Example
from midalign.evaluation.tasks.translation import Translation
from midalign.modeling.dtypes import DTYPE_CHOICES, dtype_name, resolve_dtype
from midalign.modeling.generate import TextStop, generate, greedy_config
from midalign.modeling.loading import load_model
from midalign.modeling.prompting import encode_prompt


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--prompts", type=int, default=32, help="prompts (default: %(default)s)")
    p.add_argument(
        "--max-new-tokens", type=int, default=32, help="new tokens cap (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        default="32",
        help="batched side's prompts per batch; several (16,32) are timed one after another "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype (default: auto: bfloat16 where this CPU or GPU runs it natively, "
        "else float32)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's choice); 1 on a machine where another job holds a "
        "core, since OpenMP threads then wait on a descheduled sibling",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    try:
        args.batch_size = [int(x) for x in args.batch_size.split(",") if x]
    except ValueError:
        p.error(f"--batch-size: expected integers like 16,32, got {args.batch_size!r}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, reason = resolve_dtype(args.dtype)
    task = Translation()
    sentences = read_sib200(["eng_Latn"], args.prompts, split="dev")["eng_Latn"]
    model, tokenizer = load_model("default", dtype=dtype_name(dtype))
    prompts = []
    for i, text in enumerate(sentences):
        pair = {"src": "eng_Latn", "tgt": "deu_Latn"}
        ex = Example(str(i), "deu_Latn", "eng_Latn-deu_Latn", text, "", pair)
        system, prompt = task.instruction(ex)
        prompts.append(encode_prompt(tokenizer, prompt, system))
    lengths = [len(p) for p in prompts]
    load, info = quiet_start(wait=not args.no_wait)
    print(
        f"{len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens ({sum(lengths)} in all), "
        f"≤ {args.max_new_tokens} new tokens, stop at newline, {dtype_name(dtype)} ({reason})"
    )
    config = greedy_config(model, tokenizer, args.max_new_tokens)

    @torch.inference_mode()
    def one_at_a_time() -> list[str]:
        answers = []
        for p in prompts:
            out = model.generate(
                input_ids=torch.tensor([p]),
                generation_config=config,
                stopping_criteria=[TextStop(tokenizer, len(p), task.stop)],
            )
            answers.append(tokenizer.decode(out[0, len(p) :], skip_special_tokens=True))
        return answers

    def batched(batch_size: int) -> list[str]:
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            stop=task.stop,
            batch_size=batch_size,
            progress=False,
        )

    batched(max(args.batch_size))  # warm-up: thread pool, kernels
    rows = {}
    single, seconds, busy = timed(one_at_a_time)
    rows["one at a time"] = {"seconds": seconds, "others_busy": busy}
    for batch_size in args.batch_size:
        answers, seconds, busy = timed(batched, batch_size)
        same = sum(a == b for a, b in zip(single, answers, strict=True))
        rows[f"batched ({batch_size})"] = {
            "batch_size": batch_size,
            "seconds": seconds,
            "others_busy": busy,
            "speedup": rows["one at a time"]["seconds"] / seconds,
            "identical": same,
        }
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in single)
    print(f"1-min load at start {load:.2f}, at end {load_1min():.2f}")
    print(
        f"{'':22}{'seconds':>9}{'prompts/s':>11}{'tokens/s':>10}{'others busy':>13}{'speed-up':>10}"
    )
    for name, row in rows.items():
        t = row["seconds"]
        speedup = f"{row['speedup']:.2f}×" if "speedup" in row else ""
        print(
            f"{name:22}{t:9.2f}{len(prompts) / t:11.2f}{tokens / t:10.1f}"
            f"{row['others_busy']:13.2f}{speedup:>10}"
        )
        if "identical" in row:
            print(f"{'':22}identical outputs: {row['identical']}/{len(prompts)}")
    print(f"example: {sentences[0][:60]!r} → {single[0].strip()[:60]!r}")
    if args.json:
        figures = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
            "machine": info,
            "dtype": dtype_name(dtype),
            "dtype_reason": reason,
            "prompts": len(prompts),
            "prompt_tokens": lengths,
            "answer_tokens": tokens,
            "max_new_tokens": args.max_new_tokens,
            "load_1min_before": load,
            "load_1min_after": load_1min(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
