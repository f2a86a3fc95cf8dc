"""All-pairs xsim scoring: ours (batched tensor ops) vs a LASER-style per-pair loop.

The LASER-style side follows the structure of LASER's ``source/xsim.py`` for every ordered
language pair and every layer: faiss ``IndexFlatIP`` k-NN both ways, then a Python double loop
over sources × candidates computing cos / ((avg_x + avg_y) / 2). Ours scores all pairs of a
layer as one [M, M, N, N] similarity block. Both must give identical predictions.

    python benchmarks/xsim_speed.py                # M=10 languages, N=200 sentences, 19 layers
    python benchmarks/xsim_speed.py --langs 35 --sentences 100
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from midalign.retrieval import all_pairs_predictions


def planted_embeddings(layers: int, langs: int, n: int, dim: int, seed: int) -> torch.Tensor:
    """[L, M, N, d]: a shared meaning vector per sentence plus language- and layer-specific noise,
    so that retrieval is neither trivial nor hopeless (like a real model's middle layers)."""
    g = torch.Generator().manual_seed(seed)
    meaning = torch.randn(1, 1, n, dim, generator=g)
    language = torch.randn(1, langs, 1, dim, generator=g)
    noise = torch.linspace(2.0, 6.0, layers).view(layers, 1, 1, 1)
    return meaning + 0.5 * language + noise * torch.randn(layers, langs, n, dim, generator=g)


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
    args = parser.parse_args()

    emb = planted_embeddings(args.layers, args.langs, args.sentences, args.dim, args.seed)
    pairs = args.layers * args.langs * (args.langs - 1)
    print(
        f"{args.langs} languages × {args.sentences} sentences × {args.layers} layers, "
        f"d={args.dim}: {pairs} (layer, pair) retrievals, k={args.k}, "
        f"torch threads {torch.get_num_threads()}"
    )

    start = time.perf_counter()
    reference = laser_style(emb.numpy(), args.k)
    t_ref = time.perf_counter() - start

    all_pairs_predictions(emb[:1, :2], args.k)  # warm-up
    start = time.perf_counter()
    ours = all_pairs_predictions(emb, args.k).numpy()
    t_ours = time.perf_counter() - start

    off_diagonal = ~np.eye(args.langs, dtype=bool)[None, :, :, None].repeat(args.layers, 0)
    off_diagonal = np.broadcast_to(off_diagonal, ours.shape)
    same = (ours == reference)[off_diagonal]
    gold = np.arange(args.sentences)
    accuracy = (ours == gold)[off_diagonal].mean()
    print(f"{'':22}{'seconds':>9}{'pairs/s':>10}")
    print(f"{'LASER-style loop':22}{t_ref:9.2f}{pairs / t_ref:10.0f}")
    print(f"{'midalign (batched)':22}{t_ours:9.3f}{pairs / t_ours:10.0f}")
    print(
        f"speed-up: {t_ref / t_ours:.1f}×   identical predictions: {same.mean() * 100:.3f} % "
        f"({(~same).sum()} differ)   mean accuracy {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
