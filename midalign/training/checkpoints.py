"""The checkpoints of a `midalign train` run: what marks one complete and how the newest is found.

A run keeps its Trainer checkpoints in ``<out>/checkpoints/checkpoint-N``. The trainer
(:class:`midalign.training.trainer.AlignmentTrainer`) writes :data:`COMPLETE_FILE` last, so a
checkpoint without it (a kill mid-save) is never resumed from; it names the best checkpoint relative
to the run folder, so a run can be moved or resumed from another working directory. This module is
light (no transformers) so that `--resume` and the runner find checkpoints without it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from midalign.files import write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"  # in a checkpoint: the Trainer's state
COMPLETE_FILE = "midalign_complete"  # written last: a checkpoint without it is ignored


def best_relative(state_file: Path) -> None:
    """Name the best checkpoint in a checkpoint's trainer_state.json relative to the run folder
    (``checkpoints/checkpoint-N``): the Trainer writes the path it was given, which a run
    moved, or resumed from another working directory, would no longer find."""
    state = json.loads(state_file.read_text(encoding="utf-8"))
    best = state.get("best_model_checkpoint")
    if best is not None:
        state["best_model_checkpoint"] = f"{CHECKPOINTS}/{Path(best).name}"
        write_text_atomic(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def best_absolute(checkpoint: Path, run_dir: Path) -> None:
    """Before a resume, name the best checkpoint in ``checkpoint``'s trainer_state.json by its
    absolute path in this run's folder. The Trainer checks that path from the working directory
    as it loads the state, and forgets a best checkpoint it cannot find (the final adapter is
    then the last one, not the best). Any form is read by its folder name: relative to the run
    (as saved), absolute (an earlier resume, perhaps elsewhere), or relative to the working
    directory of an older run. The next checkpoint saved names it relative again."""
    state_file = checkpoint / TRAINER_STATE
    state = json.loads(state_file.read_text(encoding="utf-8"))
    best = state.get("best_model_checkpoint")
    if best is None:
        return
    found = Path(run_dir).absolute() / CHECKPOINTS / Path(best).name
    if found.is_dir() and str(found) != best:
        state["best_model_checkpoint"] = str(found)
        write_text_atomic(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (incomplete ones, from a kill mid-save, are
    skipped with a warning)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for path in reversed(found):
        if (path / COMPLETE_FILE).is_file():
            return path
        log.warning("%s is incomplete (interrupted while saving); skipping it", path)
    return None
