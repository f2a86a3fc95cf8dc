"""Size the cpu_transfer experiment from its pilot: the variance components of system − SFT
(seeds and sentences as crossed random effects) on each group, and the MDE (80 % power,
α 0.05) of designs with more seeds and more test sentences.

    python docs/results/cpu_transfer/plan.py runs/cpu_transfer/report/results.json \\
        > docs/results/cpu_transfer/pilot/plan.md

Reads the pilot report's answer-by-answer section (``items``, written by `midalign run`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from midalign.report.transfer import plan_mde, seeds_for_mde

ITEMS = (204, 944)  # the pilot's test sentences a language; the experiment's
SEEDS = (2, 3, 5, 8, 10)
TARGET = 0.03  # the aim: an MDE of the transfer-language average ≤ 3 points


def main(path: Path) -> None:
    items = json.loads(path.read_text())["items"]
    print(f"# Pilot variance components and planned MDE (from `{path}`)\n")
    print(
        "Each row: system − SFT on a group; σ² of seed, sentence and residual (×10⁴, on the "
        "scale of a proportion); the MDE (×100) of a design with S seeds and I sentences a "
        f"language, and the fewest seeds whose MDE is ≤ {TARGET * 100:.0f} points.\n"
    )
    head = [f"S={s}, I={i}" for i in ITEMS for s in SEEDS]
    print(
        "| system | group | σ² seed | σ² sentence | σ² residual | "
        + " | ".join(head)
        + " | seeds for ≤ 3 (I=944) |"
    )
    print("|---|---|---|---|---|" + "---|" * len(head) + "---|")
    for system, effects in items["effects"].items():
        for group, e in effects.items():
            c = e.get("components")
            if not c:
                continue
            mdes = [plan_mde(c, s, i) * 100 for i in ITEMS for s in SEEDS]
            need = seeds_for_mde(c, ITEMS[-1], TARGET)
            print(
                f"| {system} | {group} | {c['var_seed'] * 1e4:.2f} | {c['var_item'] * 1e4:.2f} "
                f"| {c['var_residual'] * 1e4:.2f} | "
                + " | ".join(f"{m:.1f}" for m in mdes)
                + f" | {need if need is not None else '> 50'} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
