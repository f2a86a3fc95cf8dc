"""The layer ablation read from its steps: each system against SFT, paired by seed.

For every system of recipes/ablations/layer.yaml with finished steps (here and in
../cpu_normalize/steps, whose SFT and middle-layer steps the ablation shares), per seed: the task
score (by language, the supervised and transfer means) and the retrieval of the SIB-200 dev probe
at the system's own alignment layer (4, 9 or 18), with the raw and the standardised probe, by
language group. Then system − SFT, seed by seed, mean ± 95 % CI (Student t over the seeds both
have), and the paper's Table 3 "transfer SD" (spread of the per-language changes) beside its
value between two SFT seeds. Writes per_seed.csv (every number), results.md and layers.png.

    python docs/results/ablation_layer/compare.py
"""

from __future__ import annotations

import csv
import functools
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
SUPERVISED = ["arb_Arab", "eng_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans"]


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
                normalize = probe_results(done.parent)["normalize"]
                kind = f"probe-{PROBES[normalize]}"
            found[kind, system, int(seed)] = done.parent
    return found


@functools.cache
def probe_results(folder: Path) -> dict:
    """A probe step's results.json, read once."""
    return json.loads((folder / "results.json").read_text())


def retrieval(folder: Path, layer: int) -> dict[str, float]:
    """Mean retrieval (as source and target) of each group's languages at ``layer``."""
    both = probe_results(folder)["per_language"][str(layer)]["both"]
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
    transfer = [v for lang, v in task["per_language"].items() if lang not in SUPERVISED]
    out["task_transfer"] = statistics.mean(transfer)  # the 30 transfer languages' mean
    out.update({f"lang_{k}": v for k, v in task["per_language"].items()})
    for kind in ("probe-raw", "probe-std"):
        folder, view = found[kind, system, seed], kind.split("-")[1]
        for group, value in retrieval(folder, layer).items():
            out[f"{view}_{group}"] = value
        layers = probe_results(folder)["per_language"]
        out[f"{view}_aligned_all_layers"] = statistics.mean(
            retrieval(folder, int(n))["aligned"] for n in layers
        )
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
        # Table 3's "transfer SD": the spread over the 30 transfer languages of each one's
        # change against SFT, per seed, then its mean over the seeds
        transfer = [k for k in diff if k.startswith("lang_") and k[5:] not in SUPERVISED]
        spread = statistics.mean(
            statistics.stdev(diff[k][i] for k in transfer) for i in range(len(ours))
        )
        table.append(
            f"| {loss} | {layer} | {', '.join(map(str, ours))} | "
            f"{paired(diff['raw_aligned'])} | {paired(diff['std_aligned'])} | "
            f"{paired(diff['std_other'])} | {paired(diff['std_aligned_all_layers'])} | "
            f"{paired(diff['task_supervised'])} | "
            f"{paired(diff['task_transfer'])} | {100 * spread:.1f} |"
        )
    with (HERE / "per_seed.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = (
        "System − SFT, paired by seed (×100): mean ± 95 % CI (Student t), seed by seed in "
        "brackets. Retrieval at the system's own alignment layer (SFT at the same layer), "
        "SIB-200 dev probe, mean of each group's languages as source and target.\n\n"
        "Task: SIB-200 topic accuracy on 24 test sentences a language; supervised = the 5 "
        "training languages, transfer = the other 30; transfer SD = the standard deviation over "
        "the 30 of each language's change against SFT (the paper's Table 3), mean over seeds.\n\n"
        "| loss | layer | seeds | aligned, raw probe | aligned, standardised probe | "
        "other (de/hi/th/ko), standardised | aligned, standardised, mean of all probed "
        "layers | task, supervised | task, transfer | transfer SD |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(table) + "\n\n"
        f"The transfer SD of no change at all: SFT of one seed against SFT of another, "
        f"{100 * sft_spread(found, seeds):.1f} (mean over the seed pairs).\n"
    )
    (HERE / "results.md").write_text(text)
    print(text)
    plot_layers(found, seeds)


def sft_spread(found: dict, seeds: list[int]) -> float:
    """The transfer SD between two SFT runs that differ only in the seed, mean over seed pairs:
    what the column reads when nothing but training noise changes."""
    sft = {s: row(found, "SFT", s, 9) for s in seeds}
    langs = [k for k in sft[seeds[0]] if k.startswith("lang_") and k[5:] not in SUPERVISED]
    return statistics.mean(
        statistics.stdev(sft[a][k] - sft[b][k] for k in langs)
        for i, a in enumerate(seeds)
        for b in seeds[i + 1 :]
    )


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
                results = probe_results(found[kind, system, s])
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
