"""bf16 mixed precision vs float32 training, the same short run and seeds in both: loss curves
side by side, and bf16 − fp32 paired by seed against the seed-to-seed spread.

Reads <runs>/{fp32,bf16}-seed<S>/log.jsonl (``midalign train``'s log, written by run.sh) and
writes curves.png, results.json and the Markdown table printed, next to this script:
    .venv/bin/python docs/results/bf16_training/compare.py runs/bf16_curves
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from midalign.report.stats import mean_ci  # noqa: E402

HERE = Path(__file__).parent
TRAIN_KEYS = ("task_loss", "align_loss")
EVAL_KEYS = ("eval_task_loss", "eval_align_loss", "eval_align_acc")


def read_runs(folder: Path) -> dict[str, dict[int, list[dict]]]:
    """precision -> seed -> log rows."""
    runs: dict[str, dict[int, list[dict]]] = {"fp32": {}, "bf16": {}}
    for log in sorted(folder.glob("*-seed*/log.jsonl")):
        precision, _, seed = log.parent.name.partition("-seed")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        runs[precision][int(seed)] = rows
    return runs


def series(rows: list[dict], key: str) -> dict[int, float]:
    """step -> value of ``key`` in the rows that have it."""
    return {row["step"]: row[key] for row in rows if key in row}


def compare(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """Per key and step: fp32 and bf16 mean ± CI over seeds, bf16 − fp32 paired by seed, and
    the seed-to-seed standard deviation of fp32 (the yardstick of 'agree')."""
    seeds = sorted(set(runs["fp32"]) & set(runs["bf16"]))
    out: dict[str, dict] = {"seeds": seeds, "keys": {}}
    for key in (*TRAIN_KEYS, *EVAL_KEYS):
        per = {p: {s: series(runs[p][s], key) for s in seeds} for p in ("fp32", "bf16")}
        steps = sorted(set.intersection(*(set(per[p][s]) for p in per for s in seeds)))
        rows = {}
        for step in steps:
            fp32 = [per["fp32"][s][step] for s in seeds]
            bf16 = [per["bf16"][s][step] for s in seeds]
            m = sum(fp32) / len(fp32)
            spread = math.sqrt(sum((v - m) ** 2 for v in fp32) / (len(fp32) - 1))
            diff = mean_ci([b - f for b, f in zip(bf16, fp32, strict=True)])
            rows[step] = {
                "fp32": mean_ci(fp32),
                "bf16": mean_ci(bf16),
                "bf16_minus_fp32": diff,
                "fp32_seed_sd": spread,
                "within_spread": abs(diff["mean"]) <= spread,
            }
        out["keys"][key] = rows
    return out


def plot(runs: dict[str, dict[int, list[dict]]], path: Path) -> None:
    keys = (*TRAIN_KEYS, "eval_align_acc")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    colours = {"fp32": "tab:blue", "bf16": "tab:orange"}
    for ax, key in zip(axes, keys, strict=True):
        for precision, by_seed in runs.items():
            for i, (_, rows) in enumerate(sorted(by_seed.items())):
                s = series(rows, key)
                label = precision if i == 0 else None
                ax.plot(
                    list(s),
                    list(s.values()),
                    color=colours[precision],
                    alpha=0.7,
                    marker="o",
                    markersize=3,
                    label=label,
                )
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.legend()
    fig.suptitle("bf16 mixed precision vs float32, one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = [
        "| key | step | fp32 | bf16 | bf16 − fp32 (paired) | fp32 seed sd | within |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda s: f"{s['mean']:.4f} ± {s['ci95']:.4f}"  # noqa: E731
    for key, rows in result["keys"].items():
        for step, r in rows.items():
            lines.append(
                f"| {key} | {step} | {fmt(r['fp32'])} | {fmt(r['bf16'])} | "
                f"{fmt(r['bf16_minus_fp32'])} | {r['fp32_seed_sd']:.4f} | "
                f"{'yes' if r['within_spread'] else 'no'} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    runs = read_runs(Path(argv[0]))
    result = compare(runs)
    plot(runs, HERE / "curves.png")
    (HERE / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
