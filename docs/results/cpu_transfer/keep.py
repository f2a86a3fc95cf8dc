"""Copy the finished steps of a cpu_transfer run folder into docs/results/cpu_transfer/steps/.

A session's run folder (runs/, not in git) is lost when the session ends; what a later session
needs to go on and what a reader needs to check the numbers is kept here: every file of a
finished step (its done.json exists) except the adapter weights and the training checkpoints
(tens of MB each; a training step is retrained to the same hash, docs/results/cpu_transfer/
README.md), with predictions.jsonl gzipped. Steps already kept are left as they are.

    python docs/results/cpu_transfer/keep.py [RUN_DIR]   # default runs/cpu_transfer
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEFT_OUT = {"checkpoints", "adapter_model.safetensors"}


def keep(step: Path, into: Path) -> None:
    tmp = into.with_name(into.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(step.rglob("*")):
        relative = path.relative_to(step)
        if path.is_dir() or LEFT_OUT & set(relative.parts):
            continue
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "predictions.jsonl":
            with path.open("rb") as src, gzip.open(target.with_suffix(".jsonl.gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy2(path, target)
    tmp.rename(into)  # whole or not at all


def main(argv: list[str]) -> int:
    run = Path(argv[0]) if argv else Path("runs/cpu_transfer")
    steps = run / "steps"
    if not steps.is_dir():
        print(f"{steps}: no such folder", file=sys.stderr)
        return 2
    kept = HERE / "steps"
    pilot = {p.name for p in (HERE / "pilot" / "steps").iterdir()}
    kept.mkdir(exist_ok=True)
    new = []
    for step in sorted(steps.iterdir()):
        into = kept / step.name
        if (step / "done.json").is_file() and step.name not in pilot and not into.exists():
            keep(step, into)
            new.append(step.name)
    print("\n".join(f"kept {name}" for name in new) or "nothing new to keep")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
