"""The layer ablation read from its steps: each system against SFT, paired by seed.

For every system of recipes/ablations/layer.yaml with finished steps (here and in
../cpu_normalize/steps, whose SFT and middle-layer steps the ablation shares), per seed: the task
score (35-language average and groups) and the retrieval of the SIB-200 dev probe at the
system's own alignment layer (4, 9 or 18), with the raw and
the standardised probe, by language group. Then system − SFT, seed by seed, mean ± 95 % CI
(Student t over the seeds both have). Writes per_seed.csv (every number) and results.md.

    python docs/results/ablation_layer/compare.py
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
STEP_DIRS = [HERE / "steps", HERE.parent / "cpu_normalize" / "steps"]
GROUPS = {
    "supervised": ["arb", "eng", "spa", "rus", "zho"],
    "aligned": ["cym", "jpn", "jav", "swh", "tgl"],
    "other": ["deu", "hin", "tha", "kor"],
}
SYSTEMS = [  # (system, loss, alignment layer)
    ("bottom (4) raw tau 0.1", "raw τ 0.1 (paper)", 4),
    ("alternate raw tau 0.1", "raw τ 0.1 (paper)", 9),
    ("top (18) raw tau 0.1", "raw τ 0.1 (paper)", 18),
    ("bottom (4) standardize(base)", "standardize(base)", 4),
    ("alternate standardize(base) tau 0.1", "standardize(base)", 9),
    ("top (18) standardize(base)", "standardize(base)", 18),
]
PROBES = {"none": "raw", "standardize": "std"}


def steps() -> dict[tuple[str, str, int], Path]:
    """(kind, system, seed) -> step folder, for every finished step."""
    found = {}
    for root in STEP_DIRS:
        for done in root.glob("*/done.json"):
            name = json.loads(done.read_text())["step"]  # e.g. "eval-SFT-seed2"
            kind, rest = name.split("-", 1)
            if "-seed" not in rest:  # the data and the base model's probe
                continue
            system, seed = rest.rsplit("-seed", 1)
            if kind == "probe":
                normalize = json.loads((done.parent / "results.json").read_text())["normalize"]
                kind = f"probe-{PROBES[normalize]}"
            found[kind, system, int(seed)] = done.parent
    return found


def retrieval(folder: Path, layer: int) -> dict[str, float]:
    """Mean retrieval (as source and target) of each group's languages at ``layer``."""
    both = json.loads((folder / "results.json").read_text())["per_language"][str(layer)]["both"]
    return {
        group: statistics.mean(v for k, v in both.items() if k.split("_")[0] in langs)
        for group, langs in GROUPS.items()
    }


def row(found: dict, system: str, seed: int, layer: int) -> dict | None:
    """Every number of one system and seed, or None while a step is missing."""
    keys = [(kind, system, seed) for kind in ("eval", "probe-raw", "probe-std")]
    if not all(k in found for k in keys):
        return None
    task = json.loads((found[keys[0]] / "done.json").read_text())["result"]
    out = {"system": system, "seed": seed, "layer": layer, "task_average": task["average"]}
    out.update({f"task_{g}": v for g, v in task["groups"].items()})
    for kind in ("probe-raw", "probe-std"):
        for group, value in retrieval(found[kind, system, seed], layer).items():
            out[f"{kind.split('-')[1]}_{group}"] = value
    return out


def paired(values: list[float]) -> str:
    """mean ± 95 % CI (×100) and the values seed by seed."""
    n = len(values)
    mean = statistics.mean(values)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else 0
    each = ", ".join(f"{100 * v:+.1f}" for v in values)
    return f"{100 * mean:+.1f} ± {100 * half:.1f} ({each})" if n > 1 else f"{100 * mean:+.1f}"


def main() -> None:
    found = steps()
    seeds = sorted({seed for kind, system, seed in found if system == "SFT"})
    rows, table = [], []
    for system, loss, layer in SYSTEMS:
        ours = {s: row(found, system, s, layer) for s in seeds}
        ours = {s: r for s, r in ours.items() if r}
        if not ours:
            continue
        sft = {s: row(found, "SFT", s, ours[s]["layer"]) for s in ours}
        rows += [
            *ours.values(),
            *({**r, "system": f"SFT at layer {r['layer']}"} for r in sft.values()),
        ]
        diff = {
            k: [ours[s][k] - sft[s][k] for s in ours]
            for k in ours[next(iter(ours))]
            if k not in ("system", "seed", "layer")
        }
        table.append(
            f"| {loss} | {layer} | {', '.join(map(str, ours))} | "
            f"{paired(diff['raw_aligned'])} | {paired(diff['std_aligned'])} | "
            f"{paired(diff['std_other'])} | {paired(diff['task_average'])} |"
        )
    with (HERE / "per_seed.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = (
        "System − SFT, paired by seed (×100): mean ± 95 % CI (Student t), seed by seed in "
        "brackets. Retrieval at the system's own alignment layer (SFT at the same layer), "
        "SIB-200 dev probe, mean of each group's languages as source and target.\n\n"
        "| loss | layer | seeds | aligned, raw probe | aligned, standardised probe | "
        "other (de/hi/th/ko), standardised | task, 35-language average |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(table) + "\n"
    )
    (HERE / "results.md").write_text(text)
    print(text)
    plot_layers(found, seeds)


def plot_layers(found: dict, seeds: list[int]) -> None:
    """layers.png: the aligned languages' retrieval gain over SFT at every probed layer, mean
    over the seeds each system has (the paper's Figure 4 as a difference), raw and standardised
    probe side by side; a marker at each system's own layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colours = {4: "tab:blue", 9: "tab:green", 18: "tab:red"}
    for system, loss, layer in SYSTEMS:
        have = [
            s for s in seeds if all((k, system, s) in found for k in ("probe-raw", "probe-std"))
        ]
        if not have:
            continue
        for ax, kind in zip(axes, ("probe-raw", "probe-std"), strict=True):
            per_seed = []
            for s in have:
                results = json.loads((found[kind, system, s] / "results.json").read_text())
                layers = sorted(map(int, results["per_language"]))
                per_seed.append(
                    [
                        retrieval(found[kind, system, s], n)["aligned"]
                        - retrieval(found[kind, "SFT", s], n)["aligned"]
                        for n in layers
                    ]
                )
            gain = [100 * statistics.mean(col) for col in zip(*per_seed, strict=True)]
            style = "-" if loss.startswith("raw") else "--"
            ax.plot(
                layers, gain, style, color=colours[layer], label=f"{system} ({len(have)} seeds)"
            )
            ax.plot([layer], [gain[layers.index(layer)]], "o", color=colours[layer])
    for ax, title in zip(axes, ("raw probe", "standardised probe"), strict=True):
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(f"aligned languages (cy/ja/jv/sw/tl), {title}")
        ax.set_xlabel("layer")
        ax.set_ylabel("retrieval − SFT (×100)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "layers.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
