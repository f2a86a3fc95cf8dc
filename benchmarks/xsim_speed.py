"""All-pairs xsim scoring: ours (streamed tensor ops) at scale, and against a LASER-style loop.

Scale: ``midalign.probe.retrieval``'s all-pairs scoring (what ``all_pairs_accuracy`` runs: one layer
at a time, one block of language pairs at a time, both directions of a pair from one product,
each block's predictions reduced to accuracies at once) over synthetic embeddings with planted
structure, a shared meaning per sentence + an offset per language + noise growing with the
layer, generated one layer at a time as the probe's scorer reads them. Reported: seconds,
(layer, pair) retrievals per second, the process's peak resident memory (``resource.getrusage``)
and the accuracy. When the whole run would take longer than ``--max-seconds``, the first blocks
are timed and the total is extrapolated by pairs (every pair costs the same: same N, same d),
and the output says so.

Comparison: on the first ``--laser-langs`` languages, the structure of LASER's
``source/xsim.py`` for every ordered pair and layer (faiss ``IndexFlatIP`` k-NN both ways, a
Python double loop over sources × candidates computing cos / ((avg_x + avg_y) / 2)) against
``all_pairs_predictions``. Both must give identical predictions.

    python benchmarks/xsim_speed.py                # M=10 languages, N=200 sentences, 19 layers
    python benchmarks/xsim_speed.py --langs 204 --sentences 1012 --layers 19 --dim 640
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from _common import load_1min, quiet_start

from midalign.probe.retrieval import all_pairs_predictions, layer_predictions

GIB = 2**30


def planted_layer(layer: int, layers: int, langs: int, n: int, dim: int, seed: int):
    """[M, N, d] states of one layer: a meaning vector per sentence and an offset per language
    (the same at every layer) plus noise whose scale grows from 2 to 6 over the layers, so that
    retrieval is neither trivial nor hopeless (like a real model's middle layers)."""
    g = torch.Generator().manual_seed(seed)
    meaning = torch.randn(1, n, dim, generator=g)
    language = torch.randn(langs, 1, dim, generator=g)
    noise = 2.0 + 4.0 * layer / max(layers - 1, 1)
    g.manual_seed(seed + 1 + layer)
    return meaning + 0.5 * language + noise * torch.randn(langs, n, dim, generator=g)


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def scale(args: argparse.Namespace) -> dict:
    """Score every (layer, ordered pair) of the synthetic set, or as many blocks as fit in
    ``--max-seconds`` and extrapolate; the diagonal blocks are scored as the library does."""
    m, n = args.langs, args.sentences
    total = args.layers * m * m  # scored pairs, diagonal included
    rss_before = peak_rss_gib()
    seconds, done, accuracies = 0.0, 0, []
    for layer in range(args.layers):
        e = planted_layer(layer, args.layers, m, n, args.dim, args.seed)
        acc = torch.full((m, m), float("nan"))  # [M, M], unscored and diagonal stay NaN
        start = time.perf_counter()
        for src, tgt, pred in layer_predictions(e, args.k):
            acc[src, tgt] = (pred == torch.arange(n)).float().mean(-1)  # as layer_accuracy
            seconds += time.perf_counter() - start
            done += pred.shape[0] * pred.shape[1]
            if seconds > args.max_seconds:
                break
            start = time.perf_counter()
        acc.fill_diagonal_(float("nan"))
        accuracies.append(acc[~acc.isnan()])
        if seconds > args.max_seconds:
            break
    retrievals = args.layers * m * (m - 1)
    full = seconds * total / done
    # the similarity products: one per unordered pair (both directions come from it), the
    # diagonal pairs included
    flop = args.layers * (m * (m + 1) // 2) * n * n * args.dim * 2
    return {
        "similarity_tflop": flop / 1e12,
        "similarity_gflops_achieved": flop / full / 1e9,
        "gpu_seconds_lower_bound": flop / (args.gpu_tflops * 1e12),
        "pairs_scored": done,
        "pairs_total": total,
        "measured_share": done / total,
        "seconds_measured": seconds,
        "seconds": full,
        "extrapolated": done < total,
        "retrievals_per_s": retrievals / full,
        "accuracy": torch.cat(accuracies).mean().item(),
        "peak_rss_gib": peak_rss_gib(),
        "rss_before_gib": rss_before,
        "layer_states_gib": m * n * args.dim * 4 / GIB,
        "all_states_gib": args.layers * m * n * args.dim * 4 / GIB,
        "old_predictions_gib": args.layers * m * m * n * 8 / GIB,
    }


def laser_style(emb: np.ndarray, k: int) -> np.ndarray:
    """Per layer, per ordered pair: faiss k-NN both ways and LASER's candidate-scoring loops."""
    n_layers, m, n, _ = emb.shape
    pred = np.empty((n_layers, m, m, n), dtype=np.int64)
    for layer in range(n_layers):
        for s in range(m):
            for t in range(m):
                if s == t:
                    continue
                x = np.ascontiguousarray(emb[layer, s], dtype=np.float32)
                y = np.ascontiguousarray(emb[layer, t], dtype=np.float32)
                faiss.normalize_L2(x)
                faiss.normalize_L2(y)
                index_y, index_x = faiss.IndexFlatIP(y.shape[1]), faiss.IndexFlatIP(x.shape[1])
                index_y.add(y)
                index_x.add(x)
                sim_xy, ind_xy = index_y.search(x, k)
                sim_yx, _ = index_x.search(y, k)
                avg_xy, avg_yx = sim_xy.mean(axis=1), sim_yx.mean(axis=1)
                scores = np.zeros(ind_xy.shape)
                for i in range(ind_xy.shape[0]):
                    for j in range(ind_xy.shape[1]):
                        c = ind_xy[i, j]
                        scores[i, j] = x[i].dot(y[c]) / ((avg_xy[i] + avg_yx[c]) / 2)
                pred[layer, s, t] = ind_xy[np.arange(n), scores.argmax(axis=1)]
    return pred


def compare(args: argparse.Namespace, m: int) -> dict:
    """LASER-style loop vs ``all_pairs_predictions`` on the first ``m`` languages."""
    emb = torch.stack(
        [
            planted_layer(layer, args.layers, args.langs, args.sentences, args.dim, args.seed)[:m]
            for layer in range(args.layers)
        ]
    )  # [L, m, N, d]
    start = time.perf_counter()
    reference = laser_style(emb.numpy(), args.k)
    t_ref = time.perf_counter() - start
    all_pairs_predictions(emb[:1, :2], args.k)  # warm-up
    start = time.perf_counter()
    ours = all_pairs_predictions(emb, args.k).numpy()
    t_ours = time.perf_counter() - start
    off_diagonal = np.broadcast_to(~np.eye(m, dtype=bool)[None, :, :, None], ours.shape)
    same = (ours == reference)[off_diagonal]
    return {
        "langs": m,
        "retrievals": args.layers * m * (m - 1),
        "laser_seconds": t_ref,
        "ours_seconds": t_ours,
        "speedup": t_ref / t_ours,
        "identical": float(same.mean()),
        "differ": int((~same).sum()),
        "accuracy": float((ours == np.arange(args.sentences))[off_diagonal].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--langs", type=int, default=10, help="M languages (default: %(default)s)")
    parser.add_argument(
        "--sentences", type=int, default=200, help="N sentences (default: %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=19, help="L layers (default: %(default)s)")
    parser.add_argument(
        "--dim", type=int, default=640, help="embedding size (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=4, help="xsim neighbours (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="time the scale run for at most this long and extrapolate the rest "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=19.5,
        help="GPU rate for the printed lower bound of the scale run's time on a GPU: its "
        "similarity products at this rate (default: %(default)s, an A100's fp32 peak)",
    )
    parser.add_argument(
        "--laser-langs",
        type=int,
        default=10,
        help="compare with the LASER-style loop on the first this many languages (at most "
        "--langs; 0: no comparison) (default: %(default)s)",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.langs < 2 or not 1 <= args.k < args.sentences:
        parser.error("need --langs ≥ 2 and 1 ≤ --k < --sentences")

    load, info = quiet_start(wait=not args.no_wait)
    print(
        f"{args.langs} languages × {args.sentences} sentences × {args.layers} layers, "
        f"d={args.dim}, k={args.k}: {args.layers * args.langs * (args.langs - 1):,} (layer, "
        f"pair) retrievals; 1-min load {load:.2f}"
    )
    result = scale(args)
    how = (
        f"measured on {result['pairs_scored']:,} of {result['pairs_total']:,} scored pairs "
        f"({result['measured_share']:.1%}, {result['seconds_measured']:.1f} s) and EXTRAPOLATED"
        if result["extrapolated"]
        else "measured in full"
    )
    print(
        f"ours (streamed): {result['seconds']:.1f} s, {result['retrievals_per_s']:,.0f} "
        f"retrievals/s, {how}; mean accuracy of the pairs scored {result['accuracy']:.3f}\n"
        f"peak RSS {result['peak_rss_gib']:.2f} GiB ({result['rss_before_gib']:.2f} GiB before "
        f"scoring; one layer's states {result['layer_states_gib']:.2f} GiB; all layers' would be "
        f"{result['all_states_gib']:.2f} GiB, and the int64 predictions the scorer held before "
        f"it streamed {result['old_predictions_gib']:.2f} GiB)\n"
        f"similarity products {result['similarity_tflop']:,.1f} TFLOP, "
        f"{result['similarity_gflops_achieved']:.0f} GFLOP/s here; on a GPU at "
        f"{args.gpu_tflops} TFLOP/s (--gpu-tflops) they alone take "
        f"{result['gpu_seconds_lower_bound']:.0f} s: a lower bound, the top-k and margins "
        "over the same similarities are memory-bound"
    )
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": info,
        "load_1min_before": load,
        "args": {k: str(v) for k, v in vars(args).items()},
        "scale": result,
    }
    m = min(args.laser_langs, args.langs)
    if m >= 2:
        c = compare(args, m)
        report["comparison"] = c
        print(f"\nLASER-style loop vs ours, first {m} languages: {c['retrievals']:,} retrievals")
        print(f"{'':22}{'seconds':>9}{'pairs/s':>10}")
        for name, key in (("LASER-style loop", "laser_seconds"), ("midalign", "ours_seconds")):
            print(f"{name:22}{c[key]:9.3f}{c['retrievals'] / c[key]:10.0f}")
        print(
            f"speed-up: {c['speedup']:.1f}×   identical predictions: {c['identical'] * 100:.3f} % "
            f"({c['differ']} differ)   mean accuracy {c['accuracy']:.3f}"
        )
    report["load_1min_after"] = load_1min()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
