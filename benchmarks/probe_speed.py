"""Probe extraction speed: a MEXA-style loop vs ``midalign.probe.embeddings.extract_embeddings``
(docs/design.md §8).

The same SIB-200 sentences go through
  baseline   one sentence per forward, the whole model with ``output_hidden_states=True`` and
             logits, fp32, every layer pooled afterwards (what MEXA's embed_extractor does);
  ours       ``extract_embeddings``: length-sorted token-budget batches, forward stopped after
             the last requested layer, no lm_head, each layer pooled as it is produced;
             in fp32 and in bf16.
Reported: sentences/s and the ratios to the baseline, xsim retrieval accuracy (ratio margin,
k = 4, mean over all ordered pairs and the even layers 2..L) of each, and ours as a share of the
fp32 FLOP limit 2 · P · tokens / (measured matmul GFLOP/s), P = parameters of the decoder layers
run (no embeddings, no lm_head), tokens = real (non-padding) tokens. Attention's own FLOPs
(QK^T, AV) are not in that count, so the share slightly understates the work done.

Run on a quiet machine: ``python benchmarks/probe_speed.py`` (≈ 7 min with the defaults).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from functools import partial
from pathlib import Path

import torch
from _common import (
    SIB200,
    cpu_name,
    machine,
    matmul_gflops,
    print_machine,
    print_ops,
    profile_ops,
    read_sib200,
    timed,
    wait_for_quiet,
)
from tqdm.auto import tqdm

from midalign.modeling.compiled import COMPILE_MODES, compiled_layers
from midalign.modeling.forward import pooling_mask
from midalign.modeling.layers import decoder_layers
from midalign.modeling.loading import load_model
from midalign.probe.embeddings import extract_embeddings, special_token_ids, token_budget_batches
from midalign.probe.retrieval import all_pairs_accuracy

LANGS = "eng_Latn,deu_Latn,fra_Latn,spa_Latn,rus_Cyrl,zho_Hans,jpn_Jpan,arb_Arab,hin_Deva,swh_Latn"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=200, help="sentences per language (first by index_id)")
    p.add_argument("--langs", default=LANGS, help="comma-separated FLoRes codes")
    p.add_argument("--data", type=Path, default=SIB200, help="SIB-200 folder (<code>/<split>.tsv)")
    p.add_argument("--split", default="train", help="SIB-200 split to read")
    p.add_argument(
        "--dtype",
        default="float32,bfloat16",
        help="dtypes to run ours in (comma-separated; the baseline is always float32)",
    )
    p.add_argument(
        "--batch-tokens",
        default="1024",
        help="ours: token budget per batch (default: the probe's CPU default); several (e.g. "
        "512,1024,8192) run ours once per budget",
    )
    p.add_argument(
        "--baseline-every",
        type=int,
        default=1,
        help="run the baseline on every N-th sentence of each language only (its rate is per "
        "sentence, so sentences/s stays comparable; accuracy is then scored on that subset "
        "for every config); 0 skips the baseline",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--max-load",
        type=float,
        default=1.0,
        help="wait until the 1-min load average is at most this before timing",
    )
    p.add_argument("--max-wait", type=float, default=1200.0, help="give up waiting after s")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="after the timings, run ours once more per dtype under torch.profiler and print "
        "(and record) its ROWS most expensive ops by self CPU time (0: no profile)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="ours with the decoder layers compiled (midalign.modeling.compiled; the warm-up "
        "compiles): off, on, or auto as the probe decides (default: %(default)s)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    args.langs = [x for x in args.langs.split(",") if x]
    args.dtype = [x for x in args.dtype.split(",") if x]
    try:
        args.batch_tokens = [int(x) for x in args.batch_tokens.split(",") if x]
    except ValueError:
        p.error(f"--batch-tokens: expected integers like 8192,1024, got {args.batch_tokens!r}")
    bad = [x for x in args.dtype if x not in SHORT]
    if bad:
        p.error(f"--dtype: {bad[0]!r} is not one of {', '.join(SHORT)}")
    if len(args.langs) < 2:
        p.error("--langs: retrieval needs at least two languages")
    if args.baseline_every < 0 or args.n < 1:
        p.error("--n must be positive and --baseline-every non-negative")
    return args


# --------------------------------------------------------------------------- the two extractors


@torch.no_grad()
def mexa_style(model, tokenizer, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings the way MEXA's embed_extractor makes them: [L+1, n, d] twice.

    One sentence per forward through the full model (logits included, as ``model(**tokens)``
    computes them), all hidden states kept, then each layer pooled. MEXA pools with a
    position-weighted mean over every token, BOS included (weights 1..T); we also pool the same
    states with the probe's content mean (BOS excluded, docs/design.md §1), so the accuracy can
    be compared with ours like for like. The second pooling costs microseconds next to the forward.
    """
    special = special_token_ids(tokenizer)
    weighted, content = [], []
    for text in tqdm(sentences, desc="baseline", unit="sent"):
        tokens = tokenizer(text, return_tensors="pt")
        hidden = model(**tokens, output_hidden_states=True).hidden_states  # L+1 × [1, T, d]
        mask = tokens["attention_mask"][0].float()  # [T]
        position = mask * torch.arange(1, mask.numel() + 1)
        keep = pooling_mask(tokens["input_ids"], tokens["attention_mask"], "mean", special)[0]
        weighted.append(torch.stack([position @ h[0] / position.sum() for h in hidden]))
        content.append(torch.stack([keep @ h[0] / keep.sum() for h in hidden]))
    return torch.stack(weighted, dim=1).float(), torch.stack(content, dim=1).float()


# --------------------------------------------------------------------------- scoring


def retrieval(emb: torch.Tensor, n_langs: int, layers: list[int]) -> tuple[float, list[float]]:
    """xsim ratio-margin accuracy (k = 4) from flat language-major embeddings [L+1, M·N, d]:
    the mean over ordered pairs per even layer 2..L, and the mean of those."""
    even = [i for i, layer in enumerate(layers) if layer >= 2 and layer % 2 == 0]
    grid = emb[even].reshape(len(even), n_langs, -1, emb.shape[-1])  # [Le, M, N, d]
    acc = all_pairs_accuracy(grid, k=4, margin="ratio")  # [Le, M, M], NaN diagonal
    per_layer = acc.flatten(1).nanmean(dim=1)
    return per_layer.mean().item(), [round(x, 4) for x in per_layer.tolist()]


def subset(emb: torch.Tensor, n_langs: int, every: int) -> torch.Tensor:
    """Every ``every``-th sentence of each language: [L, M·N, d] -> [L, M·ceil(N/every), d]."""
    grid = emb.reshape(emb.shape[0], n_langs, -1, emb.shape[-1])
    return grid[:, :, ::every].reshape(emb.shape[0], -1, emb.shape[-1])


def figures(
    dtype: str,
    sentences: list[str],
    lengths: list[int],
    seconds: float,
    others: float,
    batch_tokens: int | None = None,
) -> dict:
    """What one timed run measured; ``batch_tokens`` None = one sentence per forward."""
    batches = token_budget_batches(lengths, batch_tokens) if batch_tokens else []
    tokens = sum(lengths)
    padded = sum(len(b) * lengths[b[0]] for b in batches) if batch_tokens else tokens
    return {
        "dtype": dtype,
        "sentences": len(sentences),
        "tokens": tokens,
        "padding": padded / tokens - 1,
        "seconds": seconds,
        "sentences_per_s": len(sentences) / seconds,
        "other_cores_busy": others,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_sib200(args.langs, args.n, args.split, args.data)
    n = len(texts[args.langs[0]])
    m = len(args.langs)
    sentences = [s for lang in args.langs for s in texts[lang]]
    every = args.baseline_every
    base_sentences = [s for lang in args.langs for s in texts[lang][::every]] if every else []

    model, tokenizer = load_model("default", dtype="float32")
    layers = list(range(len(decoder_layers(model)) + 1))  # 0 (embeddings) .. L
    run = decoder_layers(model)[: max(layers)]
    params = sum(p.numel() for p in run.parameters())
    shapes = [
        (mod.in_features, mod.out_features)
        for mod in run[0].modules()
        if isinstance(mod, torch.nn.Linear)
    ]
    lengths = [len(x) for x in tokenizer(sentences)["input_ids"]]
    base_lengths = [len(x) for x in tokenizer(base_sentences)["input_ids"]] if every else []
    tokens = sum(lengths)

    load_start = wait_for_quiet(args.max_load, args.max_wait)
    info = machine()
    print_machine(info)
    print(
        f"{m} languages × {n} sentences = {len(sentences)}, {tokens} tokens; "
        f"torch threads {torch.get_num_threads()}; 1-min load {load_start:.2f}"
    )
    # Matmul peaks on this model's projection shapes, taken before and after the timings;
    # the higher take counts, so a busy moment cannot flatter us.
    gflops = {
        dtype: [matmul_gflops(shapes, dtype=DTYPES[dtype])]
        for dtype in dict.fromkeys(["float32", *args.dtype])
    }
    print(
        "matmul peak on this model's projection shapes: "
        + ", ".join(f"{SHORT[k]} {v[0]:.0f} GFLOP/s" for k, v in gflops.items())
    )

    rows: dict[str, dict] = {}  # config -> figures
    embeddings: dict[str, torch.Tensor] = {}  # config -> [L+1, sentences, d]
    if every:
        if every > 1:
            print(f"baseline on 1 sentence in {every} only: {len(base_sentences)} sentences")
        mexa_style(model, tokenizer, base_sentences[:2])  # warm-up
        (weighted, content), seconds, others = timed(mexa_style, model, tokenizer, base_sentences)
        embeddings["baseline-fp32"] = content
        embeddings["baseline-fp32, MEXA pooling"] = weighted
        rows["baseline-fp32"] = figures("float32", base_sentences, base_lengths, seconds, others)
        rows["baseline-fp32, MEXA pooling"] = {}

    profiles: dict[str, list[dict]] = {}  # dtype -> ops by self CPU time
    loaded = "float32"
    for dtype in args.dtype:
        if dtype != loaded:
            del model
            model, tokenizer = load_model("default", dtype=dtype)
            loaded = dtype
        with compiled_layers(model, args.compile) as how:
            extract_embeddings(model, tokenizer, sentences[:8], layers, progress=False)  # warm-up
            for budget in args.batch_tokens:
                name = f"ours-{SHORT[dtype]}"
                name += f" @{budget}" if len(args.batch_tokens) > 1 else ""
                embeddings[name], seconds, others = timed(
                    extract_embeddings, model, tokenizer, sentences, layers, "mean", budget
                )
                rows[name] = figures(dtype, sentences, lengths, seconds, others, budget)
                rows[name]["compile"] = how.as_dict()
            if args.profile:
                once = partial(
                    extract_embeddings,
                    model,
                    tokenizer,
                    sentences,
                    layers,
                    "mean",
                    args.batch_tokens[0],
                    progress=False,
                )
                profiles[SHORT[dtype]] = profile_ops(once, args.profile)
    for dtype, takes in gflops.items():
        takes.append(matmul_gflops(shapes, dtype=DTYPES[dtype]))
    peak = {dtype: max(takes) for dtype, takes in gflops.items()}

    for name, emb in embeddings.items():
        row = rows[name]
        scored = subset(emb, m, every) if every > 1 and name.startswith("ours") else emb
        row["accuracy"], row["accuracy_per_layer"] = retrieval(scored, m, layers)
        if every > 1 and name.startswith("ours"):
            row["accuracy_all_sentences"] = retrieval(emb, m, layers)[0]
        if "seconds" in row:
            achieved = 2 * params * row["tokens"] / row["seconds"] / 1e9  # GFLOP/s
            row["share_of_flop_limit"] = achieved / peak["float32"]
            row["share_of_own_dtype_limit"] = achieved / peak[row["dtype"]]
    base = rows.get("baseline-fp32", {}).get("sentences_per_s")
    for row in rows.values():
        if base and "sentences_per_s" in row:
            row["speedup"] = row["sentences_per_s"] / base

    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "cpu": cpu_name(),
        "machine": info,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_1min_at_start": round(load_start, 2),
        "langs": args.langs,
        "n": n,
        "baseline_every": every,
        "batch_tokens": args.batch_tokens,
        "layers": layers,
        "params_run": params,
        "tokens": tokens,
        "matmul_gflops": {k: [round(g, 1) for g in v] for k, v in gflops.items()},
        "rows": rows,
        "profile": profiles,
    }
    print_table(report)
    for dtype, ops in profiles.items():
        print_ops(f"ours-{dtype} under torch.profiler", ops)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def print_table(report: dict) -> None:
    rows, every = report["rows"], report["baseline_every"]
    columns = [  # header, key, format
        ("sent", "sentences", "d"),
        ("tokens", "tokens", "d"),
        ("padding", "padding", ".1%"),
        ("s", "seconds", ".1f"),
        ("sent/s", "sentences_per_s", ".2f"),
        ("× base", "speedup", ".2f"),
        ("acc", "accuracy", ".3f"),
        ("fp32 limit", "share_of_flop_limit", ".1%"),
        ("own limit", "share_of_own_dtype_limit", ".1%"),
        ("others", "other_cores_busy", ".2f"),
    ]
    print("\n" + f"{'config':<28}" + "".join(f"{h:>12}" for h, _, _ in columns))
    for name, row in rows.items():
        cells = (format(row[key], fmt) if key in row else "–" for _, key, fmt in columns)
        print(f"{name:<28}" + "".join(f"{c:>12}" for c in cells))
    peaks = ", ".join(f"{SHORT[k]} {max(v):.0f}" for k, v in report["matmul_gflops"].items())
    print(
        "\nacc: xsim ratio margin, k=4, mean over ordered pairs and layers 2,4,…,"
        f"{report['layers'][-1]}.\nlimit: share of 2 × {report['params_run'] / 1e6:.1f}M params "
        f"× real tokens / matmul peak ({peaks} GFLOP/s); fp32 limit uses the fp32 peak for "
        "every row, own limit the row's dtype; attention's QK^T and AV are not counted.\n"
        "others: cores that other processes kept busy during the timing (0 = quiet machine)."
    )
    if every > 1:
        print(
            f"baseline ran on 1 sentence in {every}; sentences/s is per sentence, so "
            "comparable. acc of every row is on that subset; ours on all sentences: "
            + ", ".join(
                f"{k} {r['accuracy_all_sentences']:.3f}"
                for k, r in rows.items()
                if "accuracy_all_sentences" in r
            )
        )
    print(f"1-min load average before timing: {report['load_1min_at_start']}")
    busy = [name for name, row in rows.items() if row.get("other_cores_busy", 0) > 0.1]
    if busy:
        print(f"WARNING: other processes kept > 0.1 core busy during {', '.join(busy)}: rerun")
    amx = report["machine"]["bf16_native"] == "AMX"
    print("targets (docs/design.md §8):")
    for name, row in rows.items():
        if not name.startswith("ours"):
            continue
        checks = []  # (text, met)
        if "speedup" in row:
            target = 6.0 if "fp32" in name else 20.0 if amx else 10.0
            checks.append((f"{row['speedup']:.2f}× baseline ≥ {target}×", row["speedup"] >= target))
        if "fp32" in name:
            share = row["share_of_flop_limit"]
            checks.append((f"{share:.1%} of the fp32 FLOP limit ≥ 70 %", share >= 0.70))
        if "bf16" in name and amx:
            share = row["share_of_own_dtype_limit"]
            checks.append((f"{share:.1%} of the bf16 FLOP limit ≥ 40 % (AMX)", share >= 0.40))
        twin = rows.get(name.replace("bf16", "fp32"), {})
        if "bf16" in name and "accuracy" in twin:
            gap = abs(row["accuracy"] - twin["accuracy"])
            checks.append((f"|acc − acc fp32| = {gap:.4f} ≤ 0.01", gap <= 0.01))
        for text, met in checks:
            print(f"  {'met ' if met else 'MISS'}  {name}: {text}")


if __name__ == "__main__":
    raise SystemExit(main())
