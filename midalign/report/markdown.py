"""A recipe run's report: report.md (Table 2 of the paper at the recipe's scale, paired
differences, dev alignment, retrieval before and after, retrieval vs transfer) and the folder
``<out>/report/`` that holds it with results.json and the plots.
"""

from __future__ import annotations

from pathlib import Path

from midalign.experiments.recipe import Recipe
from midalign.files import atomic_output_dir, write_json, write_text_atomic
from midalign.report.stats import summarize_run


def _cell(stat: dict | None, scale: float) -> str:
    if stat is None:
        return "–"
    text = f"{stat['mean'] * scale:.1f}"
    return text + (f" ± {stat['ci95'] * scale:.1f}" if stat["ci95"] is not None else "")


def _table(head: str, columns: list[str], rows: dict[str, dict], scale: float) -> list[str]:
    """A Markdown table: one row per key of ``rows``, its stats (mean ± CI) per column."""
    return [
        f"| {head} | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(
            f"| {name} | " + " | ".join(_cell(cols.get(c), scale) for c in columns) + " |"
            for name, cols in rows.items()
        ),
    ]


def report_markdown(recipe: Recipe, summary: dict, groups: dict[str, list[str]]) -> str:
    """Table 2 of the paper, at this recipe's scale, plus retrieval and correlation."""
    metric = summary["metric"] or "score"
    scale = 1.0 if metric in ("bleu", "chrf") else 100.0
    table = summary["table"]
    lines = [
        f"# {recipe.name}",
        "",
        f"Model `{recipe.model}`, task `{recipe.task.name}` ({metric}"
        + (", ×100" if scale == 100 else "")
        + f"), seeds {', '.join(map(str, recipe.seeds))}: mean ± 95 % CI over seeds "
        "(Student t; no interval with one seed).",
        "",
    ]
    if table:
        keys = [k for k in next(iter(table.values())) if k not in groups and k != "average"]
        lines += _table("system", [*groups, "average", *keys], table, scale)
        lines += [
            "",
            "Groups: " + "; ".join(f"{g} = {', '.join(m)}" for g, m in groups.items()),
            "",
        ]
    paired = summary.get("paired")
    if paired and paired["systems"]:
        columns = [*groups, "average"]
        lines += [
            f"## Paired differences against {paired['reference']}",
            "",
            f"System − {paired['reference']} seed by seed, mean ± 95 % CI of the differences "
            "(an interval that excludes 0 is a difference these seeds show).",
            "",
            *_table("system", columns, paired["systems"], scale),
            "",
        ]
    dev = summary.get("dev_alignment")
    if dev:
        lines += [
            "## Dev alignment pairs at the end of training",
            "",
            "In-batch top-1 accuracy x → y of the held-out alignment pairs (τ-free) and their "
            "InfoNCE, at each run's last evaluation; mean ± 95 % CI over seeds.",
            "",
            "| system | step | dev top-1 ×100 | dev InfoNCE |",
            "|---|---|---|---|",
            *(
                f"| {name} | {d['step']} | {_cell(d['acc'], 100)} | {_cell(d['loss'], 1)} |"
                for name, d in dev.items()
            ),
            "",
        ]
    retrieval = summary.get("retrieval")
    if retrieval:
        from midalign.probe.retrieval import NORMALIZED_STATES

        langs = list(retrieval["base"])
        normalize = retrieval["normalize"]
        lines += [
            f"## Retrieval at layer {retrieval['layer']} (xsim accuracy ×100, before → after)",
            "",
            f"Scored on {NORMALIZED_STATES[normalize]} pooled states (`probe.normalize: "
            f"{normalize}`"
            + (
                ", as LASER and the paper score them)."
                if normalize == "none"
                else ", with each layer's statistics over all sentences of all languages)."
            ),
            "",
            "| system | mean over even layers | " + " | ".join(langs) + " |",
            "|---|---|" + "---|" * len(langs),
            "| base | "
            + _cell(
                {"mean": retrieval["base_aggregate"], "ci95": None}
                if retrieval["base_aggregate"] is not None
                else None,
                100,
            )
            + " | "
            + " | ".join(f"{retrieval['base'][g] * 100:.1f}" for g in langs)
            + " |",
        ]
        for name, per in retrieval["systems"].items():
            agg = retrieval["systems_aggregate"][name]
            lines.append(
                f"| {name} | {_cell(agg, 100)} | "
                + " | ".join(_cell(per[g], 100) for g in langs)
                + " |"
            )
        lines.append("")
        evens = retrieval["base_aggregate"] is not None  # no even layer probed: no column
        columns = [*retrieval["base_groups"], *(["even layers"] if evens else [])]
        rows = {
            "base": {
                **{g: {"mean": v, "ci95": None} for g, v in retrieval["base_groups"].items()},
                "even layers": {"mean": retrieval["base_aggregate"], "ci95": None},
            },
            **retrieval["systems_groups"],
        }
        lines += [
            f"By group: the mean over the group's languages at layer {retrieval['layer']}"
            + (", and the mean over even layers and all languages." if evens else "."),
            "",
            *_table("system", columns, rows, 100),
            "",
        ]
        if retrieval.get("paired"):
            lines += [
                f"Paired differences against {summary['paired']['reference']} (×100, same seed):",
                "",
                *_table("system", columns, retrieval["paired"], 100),
                "",
            ]
    if summary.get("items"):
        from midalign.report.items import markdown

        lines += markdown(summary["items"])
    corr = summary.get("correlation")
    if corr:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines += [
            "## Retrieval vs transfer (paper, Figure 1(b))",
            "",
            f"Base-model retrieval at layer {corr['layer']} against `{corr['system']}` scores "
            f"over {corr['n']} languages: Pearson r = {fmt(corr['pearson'])}, "
            f"Spearman ρ = {fmt(corr['spearman'])}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def write_report(recipe: Recipe, outcome: dict, groups: dict[str, list[str]], out: Path) -> dict:
    """``out/report/``: report.md, results.json and the plots, replaced as a whole."""
    # matplotlib only now: importing this module must not switch a notebook's backend to Agg
    from midalign.report.items import analyse
    from midalign.report.plots import plot_run

    summary = summarize_run(recipe, outcome, groups)
    items = analyse(outcome, groups, Path(out) / "steps")
    if items is not None:
        summary["items"] = items
    with atomic_output_dir(Path(out) / "report", overwrite=True) as tmp:
        write_json(tmp / "results.json", {"recipe": recipe.name, **summary, "raw": outcome})
        write_text_atomic(tmp / "report.md", report_markdown(recipe, summary, groups))
        plot_run(summary, tmp, title=f"{recipe.name}: {recipe.task.name}")
    return summary
