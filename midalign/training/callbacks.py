"""What a `midalign train` run reports while it trains, and how it stops: Trainer callbacks.

log.jsonl (:class:`JsonlLog`, read back by :func:`read_log`), the printed log lines
(:class:`PrintLog`, or above the progress bars: :class:`ProgressLog`), TensorBoard event files
(:func:`tensorboard_log`), and a clean stop on SIGINT/SIGTERM (:class:`StopOnSignal`).
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, TrainerCallback, TrainerState

from midalign.errors import InputError
from midalign.files import write_text_atomic

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
TENSORBOARD = "tensorboard"  # event files of report_to tensorboard


class JsonlLog(TrainerCallback):
    """One JSON line per logging event: step, epoch and what the Trainer logged (losses, lr,
    eval losses). ``learning_rate`` is also written as ``lr``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer API
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        if "learning_rate" in row:
            row["lr"] = row["learning_rate"]
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's log.jsonl (none before its first log event)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be redone)."""
    rows = [row for row in read_log(path) if row["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def log_line(state: TrainerState, logs: dict[str, Any]) -> str:
    """A log event as one line, numbers at 4 significant digits: ``step 10/200: loss 2.345,
    learning_rate 0.0005, ...`` (the Trainer's own printers show the dict, numbers as strings).
    log.jsonl keeps the full numbers."""
    shown = (
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in logs.items()
        if k != "total_flos"
    )
    return f"step {state.global_step}/{state.max_steps}: " + ", ".join(shown)


class PrintLog(TrainerCallback):
    """Without a progress bar: each log event as a line on stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer API
        if state.is_world_process_zero and logs:
            print(log_line(state, logs), flush=True)


class ProgressLog(ProgressCallback):
    """The Trainer's progress bars, each log event written above them as a line."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer API
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(log_line(state, logs))


def tensorboard_log(folder: Path) -> TrainerCallback:
    """transformers' TensorBoard logger writing into ``folder`` (``<out>/tensorboard``): the
    same rows as log.jsonl, as scalars ``train/task_loss``, ``eval/align_acc``, …"""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise InputError(
            "report_to tensorboard needs the tensorboard package: "
            "pip install 'midalign[tensorboard]'"
        ) from e
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(SummaryWriter(log_dir=str(folder)))


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the current optimizer step, save a checkpoint, stop. A second
    signal interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "%s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name
        )

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer API
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
