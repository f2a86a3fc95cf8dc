"""One probe run end to end, and the files `midalign probe` writes.

Parallel text and a model in, retrieval per layer and pair (with the raw states' anisotropy)
out.

:func:`run_probe` is what `midalign probe` and a recipe's probe step share: read the corpus,
check it, load the model, embed every side in one pass (:mod:`midalign.probe.embeddings`), score all
pairs, summarise. Its callers choose what to keep: the command writes results.json, one CSV per
layer, plots and, on request, the embeddings (:func:`write_probe`); a recipe step keeps the
summary.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from midalign.data import load_parallel
from midalign.data.corpus import ParallelCorpus
from midalign.data.reading import parse_json, read_text
from midalign.errors import InputError
from midalign.files import write_json
from midalign.languages import parse_langs
from midalign.modeling.compiled import check_mode
from midalign.modeling.dtypes import dtype_name, resolve_dtype
from midalign.modeling.layers import num_layers, parse_layers
from midalign.modeling.loading import load_model
from midalign.modeling.placement import Placement
from midalign.probe.embeddings import (
    MAX_TOKENS,
    Probe,
    check_characters,
    check_languages,
    default_batch_tokens,
    probe_model,
)
from midalign.probe.retrieval import check_options

log = logging.getLogger(__name__)


@dataclass
class ProbeRun(Probe):
    """What :func:`run_probe` computed: the probe, and how the run made it."""

    report_layer: int | None  # ``report_layer`` resolved, one of ``layers``
    dtype: str  # the dtype the model ran in
    dtype_reason: str
    batch_tokens: int


def run_probe(
    model: str,
    adapter: str | None,
    data: str,
    langs: str | None,
    *,
    split: str = "dev",
    max_sentences: int | None = None,
    layers: str = "all",
    report_layer: str | None = None,
    pool: str = "mean",
    margin: str = "ratio",
    normalize: str = "none",
    k: int = 4,
    batch_tokens: int | None = None,
    max_tokens: int = MAX_TOKENS,
    dtype: str = "auto",
    placement: Placement | None = None,
    groups: dict[str, list[str]] | None = None,
    progress: bool = True,
    option: str = "--",
    compile: str = "auto",
) -> ProbeRun:
    """Retrieval of every ordered language pair of ``data`` at ``layers`` (plus
    ``report_layer``), for ``model`` with ``adapter``. ``langs`` None: each file's suffix for
    ``parallel:`` files, the ``demo`` preset otherwise. The corpus, the groups and the options
    are checked before the model loads; an error names the option as ``option`` + its name
    (``--layers``, or ``probe.layers`` in a recipe)."""
    if langs is None:
        codes = [] if data.startswith("parallel:") else parse_langs("demo")
    else:
        codes = parse_langs(langs, f"{option}langs")
    corpus = load_parallel(data, codes, split, max_sentences, unique=True, option=f"{option}langs")
    check_languages(corpus, f"{option}langs" + (f" {langs}" if langs is not None else ""))
    check_groups(groups or {}, corpus.languages)
    check_characters(corpus, max_tokens)
    check_options(min(len(t) for t in corpus.texts.values()), k, margin)
    check_mode(compile, f"{option}compile")
    resolved, dtype_reason = resolve_dtype(dtype)
    lm, tokenizer = load_model(model, adapter, dtype_name(resolved), placement=placement)
    if batch_tokens is None:
        batch_tokens = default_batch_tokens(lm)
    n_layers = num_layers(lm)
    chosen = parse_layers(layers, n_layers, f"{option}layers")
    extra = None
    if report_layer is not None:
        extra = parse_layers(report_layer, n_layers, f"{option}report_layer")[0]
        chosen = sorted({*chosen, extra})  # e.g. even layers + an odd middle (L = 18 → 9)
    log.info(
        "%d sides, %d pairs, %d sentences per side, layers %s",
        len(corpus.texts),
        len(corpus.pairs),
        len(next(iter(corpus.texts.values()))),
        chosen,
    )
    probe = probe_model(
        lm,
        tokenizer,
        corpus,
        chosen,
        pool=pool,
        margin=margin,
        normalize=normalize,
        k=k,
        batch_tokens=batch_tokens,
        max_tokens=max_tokens,
        groups=groups,
        progress=progress,
        compile=compile,
    )
    return ProbeRun(
        **{f.name: getattr(probe, f.name) for f in fields(Probe)},
        report_layer=extra,
        dtype=dtype_name(resolved),
        dtype_reason=dtype_reason,
        batch_tokens=batch_tokens,
    )


def check_groups(groups: dict[str, list[str]], probed: list[str]) -> None:
    """Every member of every ``--group`` must be probed (its mean would otherwise leave it out
    without a word): refused here, before the model loads, not after the embedding."""
    for name, members in groups.items():
        absent = [lang for lang in members if lang not in probed]
        if absent:
            raise InputError(
                f"--group {name}: {', '.join(absent)} not among the probed languages "
                f"({', '.join(probed)})"
            )


def write_probe(
    folder: Path,
    run: ProbeRun,
    results: dict,
    model: str,
    normalize: str,
    save_embeddings: bool = False,
) -> None:
    """``results`` as results.json, then pairs_layer<l>.csv, the plots and, with
    ``save_embeddings``, embeddings/ of ``run`` into ``folder``."""
    # matplotlib only now: importing this module must not switch a notebook's backend to Agg
    from midalign.report.plots import plot_probe

    write_json(folder / "results.json", results)
    _write_pair_csvs(folder, run.acc, run.layers, run.corpus)
    summary = {**run.summary, "anisotropy": run.anisotropy}
    plot_probe(folder, summary, run.layers, run.num_layers, run.corpus, model, normalize)
    if save_embeddings:
        _save_embeddings(folder / "embeddings", run.embeddings, run.layers, run.corpus)


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
