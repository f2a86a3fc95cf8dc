"""Every plot of the package, the ones people would rather look at than read: a probe's accuracy
by layer, language × layer heatmap, pair matrix at one layer and anisotropy by layer; an
evaluation's scores; a recipe run's scores, retrieval and retrieval-vs-transfer; a training run's
curves. Plain matplotlib (Agg), PNG files, no state between calls.

Importing this module selects the Agg backend, so its callers import it only when they plot:
importing midalign in a notebook leaves the notebook's backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from midalign.data.corpus import ParallelCorpus  # noqa: E402
from midalign.files import atomic_file  # noqa: E402
from midalign.probe.retrieval import NORMALIZED_STATES  # noqa: E402


def plot_accuracy_by_layer(
    layers: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    path: Path,
    title: str = "",
) -> None:
    """Mean retrieval accuracy over pairs per layer, ± one std (band) and min/max (dotted)."""
    x, m, s = np.asarray(layers), np.asarray(mean), np.asarray(std)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(x, m - s, m + s, alpha=0.25, label="± 1 std over pairs")
    ax.plot(x, low, ":", color="gray", linewidth=1, label="min / max over pairs")
    ax.plot(x, high, ":", color="gray", linewidth=1)
    ax.plot(x, m, "o-", label="mean over pairs")
    ax.set(
        xlabel="layer (0 = embeddings)", ylabel="retrieval accuracy", ylim=(0, 1.02), title=title
    )
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_language_heatmap(
    langs: Sequence[str], layers: Sequence[int], acc: np.ndarray, path: Path, title: str = ""
) -> None:
    """Per-language accuracy (as source and target) at each layer: rows = languages."""
    acc = np.asarray(acc, dtype=float)  # [n_langs, n_layers]
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(layers), 1.2 + 0.28 * len(langs)))
    image = ax.imshow(acc, aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(layers)), [str(x) for x in layers])
    ax.set_yticks(range(len(langs)), langs, fontsize=8)
    ax.set(xlabel="layer", title=title)
    fig.colorbar(image, ax=ax, label="retrieval accuracy")
    _save(fig, path)


def plot_pair_matrix(langs: Sequence[str], acc: np.ndarray, path: Path, title: str = "") -> None:
    """Accuracy of retrieving the column language from the row language (diagonal blank)."""
    acc = np.asarray(acc, dtype=float)  # [M, M], NaN where no pair was scored
    size = 2.0 + 0.32 * len(langs)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(np.ma.masked_invalid(acc), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=7)
    ax.set_yticks(range(len(langs)), langs, fontsize=7)
    ax.set(xlabel="target", ylabel="source", title=title)
    if len(langs) <= 12:
        for i in range(len(langs)):
            for j in range(len(langs)):
                if np.isfinite(acc[i, j]):
                    color = "white" if acc[i, j] < 0.5 else "black"
                    ax.text(
                        j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                    )
    fig.colorbar(image, ax=ax, label="retrieval accuracy")
    _save(fig, path)


def plot_anisotropy(layers: Sequence[int], diagnostics: dict[int, dict], path: Path) -> None:
    """Per-layer curves of :func:`midalign.probe.anisotropy.anisotropy`'s numbers on the raw states,
    each point of the top-dimensions curve labelled with its largest dimension."""
    x = np.asarray(layers)
    rows = [diagnostics[layer] for layer in layers]
    top = len(rows[0]["top_dims"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("mean_cosine", "mean cos of non-parallel pairs"),
        ("mean_norm_ratio", "‖mean‖ / E‖h‖"),
        ("top_pc_share", "top principal component's variance share"),
        ("top_dims_share", f"share of E‖h‖² in the top {top} dims"),
    ):
        ax.plot(x, [np.nan if r[key] is None else r[key] for r in rows], "o-", label=label)
    for layer, r in zip(x, rows, strict=True):
        ax.annotate(
            str(r["top_dims"][0]["dim"]),
            (layer, r["top_dims_share"]),
            fontsize=6,
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
        )
    low = min(0.0, *(r["mean_cosine"] for r in rows if r["mean_cosine"] is not None))
    ax.set(
        xlabel="layer (0 = embeddings)",
        ylim=(low, 1.05),
        title="anisotropy of the raw pooled states (numbers: the largest dimension)",
    )
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_probe(
    out: Path,
    summary: dict,
    layers: list[int],
    n_layers: int,
    corpus: ParallelCorpus,
    model: str,
    normalize: str,
) -> None:
    """A probe run's plots into ``out``: accuracy by layer, language × layer, the pair matrix at
    the middle and the best layer, the anisotropy of the raw states."""
    by_layer = [summary["per_layer"][layer] for layer in layers]
    name = _model_name(model)
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
        [[summary["per_language"][layer]["both"][lang] for layer in layers] for lang in langs]
    )
    plot_language_heatmap(
        langs, layers, heat, out / "language_by_layer.png", title=f"accuracy per language, {states}"
    )
    middle = min(layers, key=lambda layer: abs(layer - n_layers // 2))
    for layer in dict.fromkeys([middle, summary["best_layer"]]):
        matrix = np.array(summary["pair_matrix"][layer], dtype=float)
        title = f"layer {layer}" + (" (best)" if layer == summary["best_layer"] else " (middle)")
        title += f", {states}"
        plot_pair_matrix(langs, matrix, out / f"pair_matrix_layer{layer}.png", title=title)
    plot_anisotropy(layers, summary["anisotropy"], out / "anisotropy.png")


def _save(fig: plt.Figure, path: Path) -> None:
    """Write the figure whole or not at all (a temp file renamed), in the format of the suffix."""
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def _model_name(model: str) -> str:
    return "Gemma 3 270M" if model == "default" else Path(model).name


def plot_scores(results: dict[str, Any], path: Path, model: str, adapter: str | None) -> None:
    """One evaluation's score per language, its average as a dotted line."""
    metric, per = results["metric"], results["per_language"]
    keys = list(per)
    values = [per[k][metric] for k in keys]
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(keys), 4))
    ax.bar(range(len(keys)), values, color="tab:blue")
    ax.axhline(results["average"], color="gray", linestyle=":", label="average")
    ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=8)
    name = _model_name(model)
    name += f" + {Path(adapter).name}" if adapter else ""
    shot = ", zero-shot" if results["zero_shot"] else ""
    ax.set(ylabel=metric, title=f"{name}: {results['task']}{shot}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_grouped_bars(
    categories: Sequence[str],
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]],
    path: Path,
    ylabel: str,
    title: str = "",
) -> None:
    """One group of bars per category, one bar per series (mean, 95 % CI as error bars)."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(categories))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.35 * len(categories) * n), 4))
    for i, (name, (means, cis)) in enumerate(series.items()):
        err = [0.0 if c is None else c for c in cis]
        ax.bar(x + (i - (n - 1) / 2) * width, means, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(x, categories, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_correlation(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> None:
    """Scatter of per-language retrieval against downstream scores, with a least-squares line
    (the paper's Figure 1(b))."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(x, y)
    for xi, yi, label in zip(x, y, labels, strict=True):
        ax.annotate(label, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if len(x) >= 2 and np.std(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(min(x), max(x), 2)
        ax.plot(xs, slope * xs + intercept, "--", color="gray", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_run(summary: dict, folder: Path, title: str) -> None:
    """A recipe run's plots into ``folder`` from its :func:`midalign.report.stats.summarize_run`:
    scores.png (systems by group and language), retrieval.png (before and after) and
    correlation.png (base retrieval against transfer), each if the summary has its numbers."""
    table = summary["table"]
    if table:
        columns = [c for c in next(iter(table.values()))]
        plot_grouped_bars(
            columns,
            {
                name: ([cols[c]["mean"] for c in columns], [cols[c]["ci95"] for c in columns])
                for name, cols in table.items()
            },
            folder / "scores.png",
            ylabel=summary["metric"] or "score",
            title=title,
        )
    retrieval = summary.get("retrieval")
    if retrieval:
        langs = list(retrieval["base"])
        series = {"base": ([retrieval["base"][g] for g in langs], [None] * len(langs))}
        for name, per in retrieval["systems"].items():
            series[name] = ([per[g]["mean"] for g in langs], [per[g]["ci95"] for g in langs])
        plot_grouped_bars(
            langs,
            series,
            folder / "retrieval.png",
            ylabel="xsim retrieval accuracy",
            title=f"retrieval at layer {retrieval['layer']}, before and after, "
            f"{NORMALIZED_STATES[retrieval['normalize']]} states",
        )
    corr = summary.get("correlation")
    if corr and corr["points"]:
        labels = list(corr["points"])
        plot_correlation(
            [corr["points"][g][0] for g in labels],
            [corr["points"][g][1] for g in labels],
            labels,
            folder / "correlation.png",
            xlabel=f"base retrieval at layer {corr['layer']}",
            ylabel=f"{corr['system']} {summary['metric']}",
            title="retrieval vs transfer",
        )


def plot_training_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Task and alignment losses (train and dev), the dev in-batch top-1 accuracy (right axis)
    and the learning rate against the step."""
    series = ("task_loss", "align_loss", "eval_task_loss", "eval_align_loss")
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name in series:
        points = [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]
        if points:
            style = "o--" if name.startswith("eval") else "-"
            ax_loss.plot(*zip(*points, strict=True), style, label=name, markersize=4)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    acc = [(r["step"], r["eval_align_acc"]) for r in rows if "eval_align_acc" in r]
    if acc:
        ax_acc = ax_loss.twinx()
        ax_acc.plot(*zip(*acc, strict=True), "s:", color="black", markersize=4)
        ax_acc.set_ylim(0, 1)
        ax_acc.set_ylabel("dev top-1 x → y (in batch)")
        handles += ax_acc.get_lines()
        labels += ["eval_align_acc"]
    ax_loss.legend(handles, labels)
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        ax_lr.plot(*zip(*lr, strict=True), color="gray")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    _save(fig, path)
