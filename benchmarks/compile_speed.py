"""Compiled decoder layers (``--compile on``) against eager ones, side by side in one process:
the probe's forward, the alignment micro-batch and the task micro-batch (forward + backward),
in float32 and in bf16 (bf16 weights for the probe, bf16 autocast for training, as
``optim.bf16`` trains), on the default model with LoRA (r 8, every projection) for training.

For each work and dtype: the median seconds of ``--repeats`` runs eager, then compiled (after
the first compiled call, whose extra time is the compile time), their ratio, and from one
profiled run of each the share of self CPU time outside matmuls and attention (``mm``,
``addmm``, ``bmm``, SDPA): the element-wise work that Inductor fuses (docs/benchmarks.md; the
issue's aim is to halve it in bf16). Compiled and eager outputs are compared norm-relative.

Run on a quiet machine: ``python benchmarks/compile_speed.py`` (≈ 10 min on 2 cores; writes
docs/bench/compile_speed-<date>.json with the machine record). ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

import torch
from _common import REPO, profile_ops, quiet_start, read_sib200, timed
from align_step import _fake_trainer, _setup, topic_batch
from align_step import parse_args as align_args

from midalign.data.pairs import encode_pairs
from midalign.modeling.compiled import _swapped
from midalign.modeling.loading import load_model
from midalign.probe.embeddings import extract_embeddings, special_token_ids
from midalign.training.trainer import AlignmentTrainer

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (median)")
    p.add_argument("--sentences", type=int, default=40, help="SIB-200 sentences per language")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny inputs, no wait")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--out", default=None, help="JSON path (default docs/bench/compile_speed-…)")
    return p.parse_args(argv)


def outside_matmuls(fn) -> float:
    """Share of ``fn``'s self CPU time not in matmuls or attention."""
    ops = profile_ops(fn, 10_000)
    return 1.0 - sum(o["share"] for o in ops if o["op"].startswith(MATMUL_OPS))


def side_by_side(model, run, repeats: int, compare: bool = True) -> dict:
    """``run()`` eager then with compiled layers: medians, compile time, outside-matmul
    shares, and (``compare``) how far the compiled output is from eager's, norm-relative.
    Training draws LoRA's dropout masks from Inductor's generator when compiled, so its
    gradients are another sample, not comparable (tests/test_compiled.py compares them
    without dropout)."""
    eager_out = run()  # warm-up
    eager = [timed(run)[1] for _ in range(repeats)]
    eager_share = outside_matmuls(run)
    with _swapped(model):
        _, first, _ = timed(run)
        compiled_out = run()
        compiled = [timed(run)[1] for _ in range(repeats)]
        compiled_share = outside_matmuls(run)
    e, c = statistics.median(eager), statistics.median(compiled)
    diff = None
    if compare:
        diff = (
            (compiled_out.double() - eager_out.double()).norm() / eager_out.double().norm()
        ).item()
    return {
        "eager_s": e,
        "compiled_s": c,
        "ratio": e / c,
        "compile_s": max(first - c, 0.0),
        "eager_runs": eager,
        "compiled_runs": compiled,
        "outside_matmuls_eager": eager_share,
        "outside_matmuls_compiled": compiled_share,
        "rel_diff": diff,
    }


def probe_work(dtype: str, args) -> dict:
    model, tokenizer = load_model("default", dtype=dtype)
    langs = ["eng_Latn", "deu_Latn", "swh_Latn", "jpn_Jpan"]
    texts = [t for side in read_sib200(langs, args.sentences).values() for t in side]
    layers = list(range(0, 19, 2))

    def run():
        return extract_embeddings(model, tokenizer, texts, layers, progress=False)

    result = side_by_side(model, run, max(2, args.repeats // 2))
    result["tokens"] = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    return result


def training_work(bf16: bool, args) -> dict:
    setup_args = align_args(["--pairs", "4" if args.quick else "16"])
    model, tokenizer, layer, pairs = _setup(setup_args)
    trainer = _fake_trainer(layer, special_token_ids(tokenizer), bf16)
    align_batch = encode_pairs(tokenizer, pairs, 128)
    task_batch = topic_batch(tokenizer, 0, 8)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(loss_fn, batch):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.random.fork_rng():  # every run draws the same eager dropout masks
                torch.manual_seed(0)
                loss_fn(trainer, model, batch).backward()
            return torch.cat([p.grad.flatten() for p in trainable if p.grad is not None])

        return run

    return {
        "align": side_by_side(
            model, step(AlignmentTrainer.align_loss, align_batch), args.repeats, compare=False
        ),
        "task": side_by_side(
            model, step(AlignmentTrainer.task_loss, task_batch), args.repeats, compare=False
        ),
        "align_tokens": int(align_batch["attention_mask"].sum()),
        "task_tokens": int(task_batch["attention_mask"].sum()),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.repeats, args.sentences = 1, 4
    load, info = quiet_start(wait=not (args.quick or args.no_wait))
    results = {"machine": info, "load_before": load, "args": vars(args)}
    for name, dtype in (("float32", "float32"), ("bf16", "bfloat16")):
        results[f"probe_{name}"] = probe_work(dtype, args)
        training = training_work(dtype == "bfloat16", args)
        results[f"align_{name}"], results[f"task_{name}"] = training["align"], training["task"]
    print(
        f"\n{'work':16} {'eager s':>8} {'compiled s':>10} {'ratio':>6} {'compile s':>9} "
        f"{'outside mm eager':>16} {'compiled':>8} {'rel diff':>9}"
    )
    for key, r in results.items():
        if isinstance(r, dict) and "ratio" in r:
            print(
                f"{key:16} {r['eager_s']:8.3f} {r['compiled_s']:10.3f} {r['ratio']:6.2f} "
                f"{r['compile_s']:9.1f} {r['outside_matmuls_eager']:16.1%} "
                f"{r['outside_matmuls_compiled']:8.1%} "
                + (f"{r['rel_diff']:9.1e}" if r["rel_diff"] is not None else "  (dropout)")
            )
    stamp = datetime.datetime.now().strftime("%m%d-%H%M")
    out = args.out or REPO / "docs" / "bench" / f"compile_speed-{stamp}.json"
    if not args.quick:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
