"""Look at what the pilot measured before trusting its numbers: the labels of the test
sentences, what each system answers (does any label never come?), a few raw rows with their
label log-probabilities, and the accuracy by group of each eval step.

    python docs/results/cpu_transfer/look.py runs/cpu_transfer \
        > docs/results/cpu_transfer/pilot/look.md
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import yaml

GROUPS = yaml.safe_load(Path("recipes/cpu_transfer.yaml").read_text())["task"]["groups"]


def main(out: Path) -> None:
    from midalign.languages import parse_langs

    groups = {g: parse_langs(",".join(codes)) for g, codes in GROUPS.items()}
    print(f"# What the pilot measured (`{out}`)\n")
    for step in sorted((out / "steps").glob("eval-*")):
        if not (step / "done.json").is_file():
            continue
        rows = [json.loads(x) for x in (step / "predictions.jsonl").read_text().splitlines()]
        ids = {r["id"] for r in rows}
        print(f"## {step.name}\n")
        print(
            f"{len(rows)} answers, {len(ids)} sentences, {len({r['key'] for r in rows})} languages"
        )
        refs = Counter(r["reference"] for r in rows if r["key"] == "eng_Latn")
        print(f"- reference labels (a language's {sum(refs.values())} sentences): {dict(refs)}")
        answers = Counter(r["parsed"] for r in rows)
        print(f"- answers over all languages: {dict(answers.most_common())}")
        for name, langs in groups.items():
            chosen = [r for r in rows if r["key"] in langs]
            acc = sum(r["parsed"] == r["reference"] for r in chosen) / len(chosen)
            print(f"- accuracy {name}: {acc * 100:.1f} ({len(chosen)} answers)")
        print(
            "\nThree rows (language, reference, answer, the two best labels' log-probabilities):\n"
        )
        for r in rows[:: len(rows) // 3][:3]:
            best = sorted(r["loglik"].items(), key=lambda kv: -kv[1])[:2]
            shown = ", ".join(f"{k} {v:.2f}" for k, v in best)
            print(f"- {r['key']} id {r['id']}: {r['reference']} → {r['parsed']} ({shown})")
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
