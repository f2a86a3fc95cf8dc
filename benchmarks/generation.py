"""Batched greedy generation vs one prompt at a time, on the default model.

Both sides run ``midalign.generate.generate`` on the same prompts (SIB-200 English sentences
with the paper's MT prompt into German, the plain template of the base model): once with
``--batch-size`` prompts per batch (length-sorted, left-padded, KV cache), once with batch size
1, which is what a loop over ``model.generate`` does. Outputs must be identical.

    python benchmarks/generation.py                       # 32 prompts, 32 new tokens, batch 16
    python benchmarks/generation.py --prompts 64 --batch-size 32 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from _common import load_1min, machine, print_machine, read_sib200, timed, wait_for_quiet

from midalign.generate import generate
from midalign.models import load_model
from midalign.prompting import encode_prompt
from midalign.tasks.base import Example
from midalign.tasks.translation import Translation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=32, help="prompts (default: %(default)s)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="new tokens cap (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="batched side (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's choice); 1 on a machine where another job holds a "
        "core, since OpenMP threads then wait on a descheduled sibling",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = Translation()
    sentences = read_sib200(["eng_Latn"], args.prompts, split="dev")["eng_Latn"]
    model, tokenizer = load_model("default")
    prompts = []
    for i, text in enumerate(sentences):
        ex = Example(
            str(i),
            "deu_Latn",
            "eng_Latn-deu_Latn",
            text,
            "",
            {"src": "eng_Latn", "tgt": "deu_Latn"},
        )
        system, prompt = task.instruction(ex)
        prompts.append(encode_prompt(tokenizer, prompt, system))
    lengths = [len(p) for p in prompts]
    if not args.no_wait:
        wait_for_quiet()
    print_machine(machine())
    print(
        f"{len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens, "
        f"≤ {args.max_new_tokens} new tokens, stop at newline"
    )
    load = load_1min()

    def run(batch_size: int) -> list[str]:
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            stop=task.stop,
            batch_size=batch_size,
            progress=False,
        )

    run(args.batch_size)  # warm-up: thread pool, kernels
    single, t_single, busy_single = timed(run, 1)
    batched, t_batched, busy_batched = timed(run, args.batch_size)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in single)
    same = sum(a == b for a, b in zip(single, batched, strict=True))
    print(f"1-min load at start {load:.2f}")
    print(f"{'':26}{'seconds':>9}{'prompts/s':>11}{'tokens/s':>10}{'others busy':>13}")
    for name, t, busy in (
        ("one prompt at a time", t_single, busy_single),
        (f"batched ({args.batch_size})", t_batched, busy_batched),
    ):
        print(f"{name:26}{t:9.2f}{len(prompts) / t:11.2f}{tokens / t:10.1f}{busy:13.2f}")
    print(
        f"speed-up: {t_single / t_batched:.1f}×   identical outputs: {same}/{len(prompts)}   "
        f"example: {sentences[0][:60]!r} → {single[0].strip()[:60]!r}"
    )


if __name__ == "__main__":
    main()
