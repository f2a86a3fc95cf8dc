"""One alignment micro-batch (forward + backward) as a share of its FLOP floor, ours vs the
reference style, and the throughput of an alternate training step vs a task-only step
(docs/design.md §8).

The same 16 Tatoeba pairs (deu↔eng), the default model with LoRA (r 8 on q,k,v,o,gate,up,down):
  reference  x and y in two separate forwards through every layer, logits computed,
             ``output_hidden_states=True``, layer l pooled (the paper's code);
  ours       ``AlignmentTrainer.align_loss``: x and y, 2B rows, through
             ``pooled_states``, stopped after layer l (no later layers, no final norm, no lm_head),
             run as length-sorted sub-batches (``grouped_pooled_states``);
  ours, one padded batch
             the same with the 2B rows in one batch padded to the longest, as before the
             sub-batches: their gain.
Both then compute the same InfoNCE and backpropagate into the LoRA weights. Each variant runs in
its own subprocess; reported are the median seconds of the timed repeats and the step's memory:
the peak resident memory during the first (warm-up) step above the resident memory before it.

Headline: ours as a share of its FLOP floor, the time the floor's FLOPs (``flops.py``: forward of
layers 1..l over the real tokens, the input-gradient backward, LoRA's forward and backward) take
at the fp32 matmul peak measured on the floor's own matmul shapes, before and after the timings
(the higher counts), over the measured time. Target ≥ 60 %. The speed-up over the reference is
the second figure: the reference's backward also stops at layer l, so only its forward does
extra work, which bounds the ratio near 3.3× in fp32 on the default model.

Throughput: tokens (non-padding, both kinds) per second of one optimizer step of 2 micro-batches:
task-only = 2 task micro-batches; alternate = 1 task + 1 alignment micro-batch. Task micro-batches
are SIB-200 topic questions (8 examples, loss on the answer).

fp32 vs bf16 (``--bf16``): ours and both steps again under bf16 autocast, as ``optim.bf16``
trains (weights, gradients and LoRA in float32, matmuls in bf16), with the loss of the same
micro-batch in both, ours as a share of its floor at the bf16 matmul peak, and the bf16/fp32
ratios. Only a CPU with AMX or AVX512-BF16 (or a GPU) runs bf16 natively; elsewhere it is
emulated, many times slower than fp32, and only ``--quick --bf16`` is worth running there, as a
check of the script.

Run on a quiet machine: ``nice python benchmarks/align_step.py`` (≈ 3 min). ``--quick`` is a
smoke run (4 pairs, 1 repeat, small matmul peaks, no wait): its figures are not results.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import (
    REPO,
    SIB200,
    load_1min,
    machine,
    matmul_gflops,
    print_machine,
    print_ops,
    profile_ops,
    timed,
    wait_for_quiet,
)
from flops import LORA_TARGETS, align_step_flops, projection_shapes
from transformers import AutoConfig

from midalign.data.pairs import encode_pairs, load_pairs
from midalign.modeling.forward import _masked_mean, length_groups, pooling_mask
from midalign.modeling.layers import num_layers
from midalign.modeling.loading import load_model, resolve_model
from midalign.modeling.prompting import encode_example
from midalign.probe.embeddings import special_token_ids
from midalign.training.align_setup import SUB_BATCH_OVERHEAD, AlignSetup
from midalign.training.losses import info_nce
from midalign.training.trainer import AlignmentTrainer

TATOEBA = REPO.parent / "shared" / "data" / "tatoeba"
LORA_RANK = 8
TOPIC_PROMPT = (
    "What is the topic of this sentence? Answer with one of: science/technology, travel, "
    "politics, sports, health, entertainment, geography.\nSentence: {text}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", type=int, default=16, help="pairs per alignment micro-batch (B)")
    p.add_argument("--layer", type=int, default=None, help="alignment layer (default L // 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    p.add_argument("--task-batch", type=int, default=8, help="examples per task micro-batch")
    p.add_argument(
        "--pairs-ab",
        type=int,
        default=10,
        help="pairs of alternating timings, one padded batch then sub-batches, in ours' process",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's). On a shared machine use fewer threads than free "
        "cores: OpenMP threads that wait on a descheduled sibling make a step 10x slower",
    )
    p.add_argument("--max-load", type=float, default=1.0, help="wait for this 1-min load")
    p.add_argument("--max-wait", type=float, default=900.0, help="give up waiting after s")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="also time ours and the steps in bf16 mixed precision, side by side with fp32 "
        "(meaningful only where bf16 is native: AMX, AVX512-BF16, a GPU)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="run ours' micro-batch once more under torch.profiler and print (and record) its "
        "ROWS most expensive ops by self CPU time (0: no profile)",
    )
    p.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)  # a bf16 worker
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 pairs, 1 repeat, task batch 2, small matmul peaks, no wait for a "
        "quiet machine; checks the script end to end, its figures are not results",
    )
    p.add_argument(
        "--worker",
        choices=["ours", "ours-padded", "reference", "throughput"],
        help=argparse.SUPPRESS,
    )
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.repeats, args.task_batch, args.max_wait, args.pairs_ab = 4, 1, 2, 0.0, 1
    return args


def _rss_mib() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_during(fn) -> float:
    """MiB of resident memory ``fn()`` needs above what the process held before: a thread
    samples /proc/self/statm every millisecond (torch's CPU allocations are invisible to
    tracemalloc, and ru_maxrss would report the peak of model loading instead)."""
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_mib()) - base


def _setup(args: argparse.Namespace):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model("default")
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=16,
            lora_dropout=0.1,
            task_type="CAUSAL_LM",
            target_modules=list(LORA_TARGETS),
        ),
    )
    model.train()
    layer = args.layer if args.layer is not None else num_layers(model) // 2
    pairs = load_pairs(f"tatoeba:{TATOEBA}", ["deu"])["deu_Latn"][: args.pairs]
    return model, tokenizer, layer, pairs


def reference_step(model, tokenizer, layer: int, pairs) -> torch.Tensor:
    """The paper's code: two full forwards with hidden states and logits, pool, InfoNCE."""
    pooled = []
    for texts in ([x for x, _ in pairs], [y for _, y in pairs]):
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        out = model(**enc, output_hidden_states=True)  # logits over the whole vocabulary too
        weights = pooling_mask(enc["input_ids"], enc["attention_mask"], "mean-all")
        pooled.append(_masked_mean(out.hidden_states[layer], weights))
    loss = info_nce(pooled[0], pooled[1], 0.1)
    loss.backward()
    return loss.detach()


def ours_step(trainer, model, batch) -> torch.Tensor:
    loss = AlignmentTrainer.align_loss(trainer, model, batch)
    loss.backward()
    return loss.detach()


def _fake_trainer(layer: int, special: list[int], bf16: bool = False) -> SimpleNamespace:
    """What ``align_loss`` and ``task_loss`` read from the trainer: the alignment settings and
    the run's autocast (``AlignmentMixin.autocast``: bf16 on the CPU with ``optim.bf16``)."""
    setup = AlignSetup(stream=None, layers=[layer], special_ids=special)  # type: ignore[arg-type]
    return SimpleNamespace(
        align=setup, autocast=lambda: torch.autocast("cpu", torch.bfloat16, enabled=bf16)
    )


def worker_step(args: argparse.Namespace) -> dict:
    model, tokenizer, layer, pairs = _setup(args)
    batch = encode_pairs(tokenizer, pairs, 128)
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # real tokens per row
    if args.worker == "ours-padded":
        SUB_BATCH_OVERHEAD.update(dict.fromkeys(SUB_BATCH_OVERHEAD, math.inf))
    groups = length_groups(lengths, SUB_BATCH_OVERHEAD["cpu", args.autocast])
    losses = []
    if args.worker.startswith("ours"):
        trainer = _fake_trainer(layer, special_token_ids(tokenizer), args.autocast)
        run = lambda: losses.append(ours_step(trainer, model, batch))  # noqa: E731
    else:
        run = lambda: losses.append(reference_step(model, tokenizer, layer, pairs))  # noqa: E731
    # The warm-up step measures memory: later steps reuse memory the allocator kept, which a
    # resident-memory reading cannot tell from new memory.
    step_mib = peak_rss_during(run)
    model.zero_grad()
    times, others = [], []
    for _ in range(args.repeats):
        _, seconds, busy = timed(run)
        model.zero_grad()
        times.append(seconds)
        others.append(busy)
    ops = profile_ops(run, args.profile) if args.profile and args.worker == "ours" else []
    paired = paired_sub_batch_timings(run, model, args.pairs_ab) if args.worker == "ours" else {}
    if args.worker == "reference":  # x and y, each padded to its own longest row
        groups = [list(range(len(pairs))), list(range(len(pairs), 2 * len(pairs)))]
    computed = sum(len(rows) * max(lengths[i] for i in rows) for rows in groups)
    return {
        "profile": ops,
        "paired": paired,
        "seconds": statistics.median(times),
        "all_seconds": times,
        "loss": losses[0].item(),  # of the warm-up step, before any update
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_rss_mib": step_mib,
        "other_cores_busy": max(others),
        "layer": layer,
        "lengths": lengths,
        "padded_tokens": batch["attention_mask"].numel(),  # the batch padded to its longest row
        "sub_batches": len(groups),
        "computed_tokens": computed,  # padding included
    }


def paired_sub_batch_timings(run, model, repeats: int) -> dict:
    """Sub-batches against one padded batch in the same process, alternating, ``repeats`` pairs:
    timings of separate processes differ by up to 30 % here (a process's thread placement and
    memory), more than the sub-batches' gain, so the gain is read from pairs."""
    chosen = dict(SUB_BATCH_OVERHEAD)
    one_batch = dict.fromkeys(SUB_BATCH_OVERHEAD, math.inf)
    padded, grouped = [], []
    try:
        for _ in range(repeats):
            for overheads, times in ((one_batch, padded), (chosen, grouped)):
                SUB_BATCH_OVERHEAD.update(overheads)
                times.append(timed(run)[1])
                model.zero_grad()
    finally:
        SUB_BATCH_OVERHEAD.update(chosen)
    ratios = [p / g for p, g in zip(padded, grouped, strict=True)]
    return {
        "padded_seconds": padded,
        "sub_batch_seconds": grouped,
        "median_ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def topic_batch(tokenizer, start: int, size: int) -> dict[str, torch.Tensor]:
    """SIB-200 English train questions ``start``..``start + size`` (by index_id) as one task
    micro-batch, right-padded, the loss on the answer."""
    with (SIB200 / "eng_Latn" / "train.tsv").open(encoding="utf-8", newline="") as f:
        rows = sorted(csv.DictReader(f, delimiter="\t"), key=lambda r: int(r["index_id"]))
    pad = tokenizer.pad_token_id
    items = [
        encode_example(tokenizer, TOPIC_PROMPT.format(text=r["text"]), r["category"])
        for r in rows[start : start + size]
    ]
    width = max(len(ids) for ids, _ in items)
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in items]),
        "attention_mask": torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in items]
        ),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in items]),
    }


def worker_throughput(args: argparse.Namespace) -> dict:
    model, tokenizer, layer, pairs = _setup(args)
    trainer = _fake_trainer(layer, special_token_ids(tokenizer), args.autocast)
    size = args.task_batch
    task_batches = [topic_batch(tokenizer, start, size) for start in (0, size)]
    align_batch = encode_pairs(tokenizer, pairs, 128)

    def task(batch):
        (AlignmentTrainer.task_loss(trainer, model, batch) / 2).backward()
        return int(batch["attention_mask"].sum())

    def align(batch):
        (AlignmentTrainer.align_loss(trainer, model, batch) / 2).backward()
        return int(batch["attention_mask"].sum())

    def task_only():
        return task(task_batches[0]) + task(task_batches[1])

    def alternate():
        return task(task_batches[0]) + align(align_batch)

    result = {}
    for name, step in (("task_only", task_only), ("alternate", alternate)):
        step()  # warm-up
        model.zero_grad()
        rates = []
        for _ in range(args.repeats):
            tokens, seconds, _ = timed(step)
            model.zero_grad()
            rates.append(tokens / seconds)
        result[name] = {"tokens_per_s": statistics.median(rates), "tokens": tokens}
    result["ratio"] = result["alternate"]["tokens_per_s"] / result["task_only"]["tokens_per_s"]
    return result


def _spawn(worker: str, args: argparse.Namespace, bf16: bool = False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--pairs",
        str(args.pairs),
        "--repeats",
        str(args.repeats),
        "--task-batch",
        str(args.task_batch),
        "--pairs-ab",
        str(args.pairs_ab),
    ]
    if args.layer is not None:
        cmd += ["--layer", str(args.layer)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if bf16:
        cmd.append("--autocast")
    if args.profile:
        cmd += ["--profile", str(args.profile)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bf16_side_by_side(args: argparse.Namespace, shapes, sizes: dict, figures: dict) -> dict:
    """Ours and the two steps again under bf16 autocast, next to the fp32 figures: seconds,
    the micro-batch's loss, ours as a share of the floor at the bf16 peak on its shapes."""
    peak = matmul_gflops(shapes, dtype=torch.bfloat16, **sizes)
    ours, fp32 = _spawn("ours", args, bf16=True), figures["ours"]
    steps, fp32_steps = _spawn("throughput", args, bf16=True), figures["throughput"]
    result = {
        "ours": ours,
        "throughput": steps,
        "floor_matmul_gflops": peak,
        "share_of_floor": figures["flop_floor"]["total"] / (peak * 1e9) / ours["seconds"],
        "speedup_over_fp32": fp32["seconds"] / ours["seconds"],
        "loss_difference": ours["loss"] - fp32["loss"],
        "alternate_over_fp32": steps["alternate"]["tokens_per_s"]
        / fp32_steps["alternate"]["tokens_per_s"],
    }
    print(
        f"{'':22}{'fp32':>12}{'bf16':>12}{'bf16/fp32':>11}\n"
        f"{'micro-batch seconds':22}{fp32['seconds']:12.2f}{ours['seconds']:12.2f}"
        f"{fp32['seconds'] / ours['seconds']:10.2f}x\n"
        f"{'micro-batch loss':22}{fp32['loss']:12.5f}{ours['loss']:12.5f}"
        f"{'':>11}\n"
        f"{'share of FLOP floor':22}{fp32['share_of_floor']:12.1%}{result['share_of_floor']:12.1%}"
        f"{'':>11}\n"
        f"{'matmul peak GFLOP/s':22}{max(figures['floor_matmul_gflops']):12.1f}{peak:12.1f}\n"
        f"{'task-only tokens/s':22}{fp32_steps['task_only']['tokens_per_s']:12.0f}"
        f"{steps['task_only']['tokens_per_s']:12.0f}"
        f"{steps['task_only']['tokens_per_s'] / fp32_steps['task_only']['tokens_per_s']:10.2f}x\n"
        f"{'alternate tokens/s':22}{fp32_steps['alternate']['tokens_per_s']:12.0f}"
        f"{steps['alternate']['tokens_per_s']:12.0f}{result['alternate_over_fp32']:10.2f}x"
    )
    if ours["profile"]:
        print_ops("ours' micro-batch under torch.profiler (bf16 autocast)", ours["profile"])
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker == "throughput":
        print(json.dumps(worker_throughput(args)))
        return
    if args.worker:
        print(json.dumps(worker_step(args)))
        return
    if args.quick:
        print("--quick: a smoke run; its figures are not results")
    load = wait_for_quiet(args.max_load, args.max_wait)
    info = machine(**({"gemm": 512, "repeats": 1} if args.quick else {}))
    print_machine(info)
    print(f"1-min load {load:.2f}")
    figures = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "quick": args.quick,
        "machine": info,
        "load_1min_before": load,
    }
    # The floor's rate: the fp32 matmul peak on its own products, X·W and the input gradients'
    # dY·Wᵀ, taken before and after the timings; the higher take counts, so a busy moment
    # cannot flatter us.
    config = AutoConfig.from_pretrained(resolve_model("default"))
    shapes = list(projection_shapes(config).values())
    shapes += [(n_out, n_in) for n_in, n_out in shapes]
    sizes = {"tokens": (128,), "repeats": 1} if args.quick else {}
    peaks = [matmul_gflops(shapes, **sizes)]
    for worker in ("reference", "ours-padded", "ours"):
        figures[worker] = _spawn(worker, args)
        r = figures[worker]
        print(
            f"{worker:11s}: {r['seconds']:.2f} s per micro-batch (layer {r['layer']}, "
            f"{r['computed_tokens']} tokens computed in {r['sub_batches']} batches), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['step_rss_mib']:.0f} MiB for the step), "
            f"other processes kept {r['other_cores_busy']:.2f} cores busy"
        )
    peaks.append(matmul_gflops(shapes, **sizes))
    ours = figures["ours"]
    floor = align_step_flops(config, ours["lengths"], ours["layer"], LORA_RANK)
    floor_seconds = floor["total"] / (max(peaks) * 1e9)
    figures.update(flop_floor=floor, floor_matmul_gflops=peaks, floor_seconds=floor_seconds)
    for worker in ("reference", "ours-padded", "ours"):
        figures[worker]["share_of_floor"] = floor_seconds / figures[worker]["seconds"]
    figures["sub_batch_speedup"] = figures["ours-padded"]["seconds"] / ours["seconds"]
    ab = ours["paired"]
    figures["speedup"] = figures["reference"]["seconds"] / ours["seconds"]
    figures["step_memory_ratio"] = ours["step_rss_mib"] / figures["reference"]["step_rss_mib"]
    print(
        f"FLOP floor {floor['total'] / 1e9:.2f} GFLOP (layers 1..{ours['layer']}, "
        f"{sum(ours['lengths'])} real tokens; ours computes {ours['computed_tokens']}, "
        f"{ours['padded_tokens']} as one padded batch) "
        f"= {floor_seconds:.3f} s at {max(peaks):.1f} GFLOP/s (fp32 peak on its shapes)\n"
        f"ours {ours['share_of_floor']:.1%} of its FLOP floor (target >= 60 %), as one padded "
        f"batch {figures['ours-padded']['share_of_floor']:.1%} (sub-batches "
        f"{figures['sub_batch_speedup']:.2f}x; paired in one process, median of "
        f"{len(ab['ratios'])}: {ab['median_ratio']:.2f}x), reference "
        f"{figures['reference']['share_of_floor']:.1%}; speed-up over the reference "
        f"{figures['speedup']:.2f}x; step memory ours/reference {figures['step_memory_ratio']:.2f}"
    )
    if ours["profile"]:
        print_ops("ours' micro-batch under torch.profiler (fp32)", ours["profile"])
    figures["throughput"] = _spawn("throughput", args)
    t = figures["throughput"]
    print(
        f"tokens/s: task-only step {t['task_only']['tokens_per_s']:.0f}, alternate step "
        f"{t['alternate']['tokens_per_s']:.0f}, ratio {t['ratio']:.2f} (target >= 0.7)"
    )
    if args.bf16:
        figures["bf16"] = bf16_side_by_side(args, shapes, sizes, figures)
    figures["load_1min_after"] = load_1min()
    if args.quick:
        print("--quick: a smoke run; its figures are not results")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
