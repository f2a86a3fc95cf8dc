"""A training run's folder, as `midalign train` and a recipe's training steps both keep it.

Made afresh (or replaced) with its config.yaml, reopened at its last complete checkpoint, or
removed when a start failed before its first checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from midalign.data.reading import read_json
from midalign.errors import InputError
from midalign.files import MARKER, check_output_dir, mark_output_dir, write_text_atomic
from midalign.training.config import TrainConfig, from_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RESULT_FILE = "train_result.json"  # written by `midalign train` when a run stops or finishes


def process_state() -> Any:
    """accelerate's view of this process (rank, world size); one process without a launcher.
    The same state the Trainer's arguments set up (CPU when there is no GPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def write_config(folder: Path, config: TrainConfig) -> None:
    """The run's settings as ``folder/config.yaml``, what a resume compares against."""
    write_text_atomic(Path(folder) / CONFIG_FILE, config.to_yaml())


def read_config(out: Path) -> TrainConfig:
    """The config.yaml a run in ``out`` was started with (for ``--resume``)."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"--resume: {path} not found (not a midalign train run)")
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))


def create(out: Path, config: TrainConfig, overwrite: bool) -> None:
    """A new run in ``out``: checked (an existing run is replaced only with ``overwrite``), then
    made empty, marked as midalign's and given its config.yaml. Under `accelerate launch` every
    process runs this: all check ``out`` before the main process replaces it, and all wait
    until it has."""
    out = Path(out)
    state = process_state()
    if not overwrite:
        refuse_unfinished(out)
    check_output_dir(out, overwrite)
    state.wait_for_everyone()
    if state.is_main_process:
        if out.exists():
            shutil.rmtree(out)
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise InputError(f"--out: cannot create {out} ({e.strerror})") from None
        mark_output_dir(out)
        write_config(out, config)
    state.wait_for_everyone()


def refuse_unfinished(out: Path) -> None:
    """A run of ours in ``out`` with a checkpoint and no finished result (killed, stopped by a
    signal, or failed) is continued with ``--resume``; ``--overwrite`` would discard its
    checkpoints, so the error names ``--resume`` first."""
    from midalign.training.checkpoints import last_checkpoint

    out = Path(out)
    if not (out / MARKER).is_file():
        return
    result = out / RESULT_FILE
    if result.is_file() and read_json(result, "--out").get("interrupted") is False:
        return
    checkpoint = last_checkpoint(out)
    if checkpoint is not None:
        raise InputError(
            f"--out: {out} holds an unfinished run (last complete checkpoint: {checkpoint.name}); "
            f"continue it with `midalign train --out {out} --resume`, or pass --overwrite to "
            "discard its checkpoints and start over"
        )


def resume_point(out: Path, required: bool) -> Path | None:
    """The last complete checkpoint of the run in ``out``. Without one, a ``required`` resume
    (``--resume``) is an error; otherwise the run starts over, its log included."""
    from midalign.training.callbacks import LOG_FILE
    from midalign.training.checkpoints import last_checkpoint

    checkpoint = last_checkpoint(out)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    elif required:
        raise InputError(
            f"--resume: no complete checkpoint in {out}/checkpoints; start over with --overwrite"
        )
    else:
        (Path(out) / LOG_FILE).unlink(missing_ok=True)
    return checkpoint


def discard_unstarted(out: Path) -> None:
    """After a new run failed: without a checkpoint it holds nothing worth keeping, so the main
    process removes it, leaving no stale run behind."""
    from midalign.training.checkpoints import last_checkpoint

    if last_checkpoint(out) is None and process_state().is_main_process:
        shutil.rmtree(out, ignore_errors=True)
