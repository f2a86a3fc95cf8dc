"""LoRA fine-tuning with middle-layer contrastive alignment on an unmodified ``Trainer`` (SPEC §2).

The Trainer keeps what it does well: optimiser, scheduler, gradient accumulation, logging,
evaluation, checkpoints, early stopping and resume. :class:`AlignmentTrainer` changes one
thing, what a ``training_step`` does with the task micro-batch it is handed:

- ``alternate``: one alignment micro-batch forward/backward, then the task micro-batch the
  Trainer handed over. With G micro-batches per optimizer step (counted over both kinds, as the
  paper's code does) the Trainer accumulates G/2 task batches, so a step sees align, task,
  align, task, … and every task batch is used (the reference code dropped half of each stream).
  The order within a pair does not change the accumulated gradient; alignment goes first so
  that the backward that syncs gradients across processes is a task backward, which reaches
  every LoRA parameter. This is what the authors' code does: its trainer flips the objective at
  every micro-batch, inside one optimizer step.
- ``alternate-steps``: the paper's text, "we optimize either the task-specific objective or the
  alignment objective in each training step": whole optimizer steps of G alignment micro-batches
  and of G task micro-batches in turn (alignment first), each with the full effective batch.
  The Trainer's loader carries the alternation (:mod:`midalign.data.steps`), so epochs, the
  last step of an epoch and resume count both kinds of step.
- ``joint``: one backward of task + λ·align per micro-batch.
- ``task``: plain SFT. ``align``: alignment only; the Trainer's "dataset" is then the first
  max_steps·G micro-batches of the alignment stream.

Every micro-batch loss is a mean over its own tokens (task) or pairs (alignment), and is divided
by the number of micro-batches in the step, so the accumulated gradient is exactly the mean over
micro-batches. The Trainer's own division by its accumulation count is not used (this class
calls ``accelerator.backward`` itself); the accelerator is built with num_steps = 1 and does not
scale either.

The alignment micro-batch is B pairs as one batch of 2B rows through
:func:`midalign.models.pooled_states`: the forward stops after the alignment layer (no later
layers, no final norm, no lm_head: at layer L the residual stream before the norm, as in the
paper's code), and LoRA gradients flow through it. ``align.normalize`` centres or standardises
the pooled states before the cosine (:mod:`midalign.losses`), with the current batch's statistics
or the base model's (:mod:`midalign.align_stats`, computed once before LoRA is attached).

Several processes (``accelerate launch``): every forward, task or alignment, runs as the
forward of the engine's wrapper (DDP, FSDP, DeepSpeed; :meth:`AlignmentTrainer.forward`), so
the engine sees each graph it must reduce. Only the last backward of an optimizer step syncs:
the first backward of an ``alternate`` pair only accumulates (:meth:`AlignmentTrainer.
accumulate_only`). Task micro-batches are split over ranks by the Trainer's data loader, and
alignment micro-batches by :class:`~midalign.data.pairs.AlignStream`, so W processes with
batch b and B pairs take the optimizer steps one process takes with W·b and W·B, up to float
error, when micro-batches hold equal numbers of response tokens (each rank's task loss is a
mean over its own tokens, and the ranks' gradients are averaged).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import EvalLoopOutput, SchedulerType, rotate_checkpoints

from midalign.align_stats import STATS_FILE, base_stats, load_stats, save_stats
from midalign.config import TrainConfig, no_learning, no_learning_message
from midalign.data.instructions import load_task_dataset, read_instructions
from midalign.data.pairs import (
    AlignBatches,
    AlignStream,
    Pairs,
    encode_pairs,
    load_pairs,
    split_dev,
)
from midalign.data.steps import ALIGN_STEP, AlternatingSteps, StepsDataset, collate_steps
from midalign.errors import InputError
from midalign.io import follow_umask, write_json, write_text_atomic
from midalign.losses import Stats, info_nce, top1_accuracy
from midalign.model_card import training_card, write_card
from midalign.models import (
    load_model,
    num_layers,
    parse_layers,
    peft_quietly,
    pooled_states,
    response_loss,
)
from midalign.probe import extract_embeddings, special_token_ids
from midalign.retrieval import pair_accuracy

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STREAM_FILE = "align_stream.json"  # in a checkpoint: the alignment stream position
TRAINER_STATE = "trainer_state.json"  # in a checkpoint: the Trainer's state
COMPLETE_FILE = "midalign_complete"  # written last: a checkpoint without it is ignored
LOG_FILE = "log.jsonl"
TENSORBOARD = "tensorboard"  # event files of report_to tensorboard
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class TrainingDiverged(InputError):
    """The loss or the LoRA weights became NaN or infinite. An InputError because the fix is
    an option (a lower learning rate) or the data; the CLI reports it in one line."""


@dataclass
class AlignSetup:
    """Everything the alignment loss needs besides the model."""

    stream: AlignStream
    layers: list[int]
    temperature: float = 0.1
    symmetric: bool = False
    gather: bool = False
    pool: str = "mean"
    normalize: str = "none"
    stats: Stats | None = None  # the base model's (μ, σ) [n_layers, d]; None: the batch's
    weight: float = 1.0
    max_length: int = 128
    special_ids: list[int] = field(default_factory=list)
    dev_batches: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def states(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Stats | None]:
        """Pooled alignment-layer states (before the final norm) of a 2B-row batch, x rows
        first: x and y, each [n_layers, B, d], and the constant statistics on their device."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pooled = pooled_states(
            model, ids, mask, self.layers, self.pool, self.special_ids, final_norm=False
        )  # [n_layers, 2B, d]
        b = ids.shape[0] // 2
        if self.stats is None:
            return pooled[:, :b], pooled[:, b:], None
        mean, std = (t.to(pooled.device) for t in self.stats)
        return pooled[:, :b], pooled[:, b:], (mean, std)


class AlignmentTrainer(Trainer):
    """A ``Trainer`` whose step is one of the four schedules (module docstring)."""

    def __init__(
        self,
        *args: Any,
        schedule: str,
        align: AlignSetup | None,
        align_tokenizer: PreTrainedTokenizerBase | None = None,
        has_task_dev: bool = False,
        keep_checkpoints: int | None = None,
        checkpoint_files: Sequence[Path] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.keep_checkpoints = keep_checkpoints  # besides the best; rotated after each save
        self.checkpoint_files = list(checkpoint_files)  # copied into every checkpoint
        if schedule != "task" and align is None:
            raise ValueError(f"the {schedule} schedule needs alignment data")
        self.schedule = schedule
        self.align = align
        self.align_tokenizer = align_tokenizer
        self.has_task_dev = has_task_dev
        self.align_position = 0  # alignment micro-batches drawn so far = the stream position
        self._sums: dict[str, list[float]] = {"task_loss": [0.0, 0], "align_loss": [0.0, 0]}

    # ------------------------------------------------------------------ losses

    def wrapped_forward(self, model: torch.nn.Module, fn: Callable[..., Any], **inputs: Any) -> Any:
        """``fn(**inputs)`` (which calls the unwrapped model) run as the forward of ``model``,
        the engine's wrapper when there is one: DDP prepares its gradient reduction from what a
        forward returns (and, with ``find_unused_parameters``, finds the parameters an
        early-exit forward never reached), FSDP gathers sharded weights around it, DeepSpeed
        hooks it. The wrapper's inner module lends it its ``forward`` for this one call."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.NO:
            return fn(**inputs)
        # DDP, FSDP1 and DeepSpeed wrap the model (`.module`); FSDP2 hooks the model itself
        inner = getattr(model, "module", model)
        own = inner.__dict__.get("forward")  # e.g. accelerate's mixed-precision forward
        inner.forward = fn
        try:
            return model(**inputs)
        finally:
            if own is None:
                del inner.forward
            else:
                inner.forward = own

    @contextmanager
    def accumulate_only(self, model: torch.nn.Module) -> Iterator[None]:
        """Backward passes inside add to the local gradients: no cross-rank sync (DDP, FSDP:
        ``no_sync``), no optimizer step (DeepSpeed steps at an accumulation boundary)."""
        state = self.accelerator.gradient_state
        sync = state.sync_gradients
        state._set_sync_gradients(False)
        try:
            with self.accelerator.no_sync(model):
                yield
        finally:
            state._set_sync_gradients(sync)

    def task_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal-LM cross-entropy over the response tokens of this micro-batch (mean), with
        logits only at those tokens (:func:`midalign.models.response_loss`)."""
        return response_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])

    def align_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """InfoNCE over the pooled alignment-layer states of a 2B-row batch (x rows first),
        normalised as configured."""
        a = self.align
        x, y, stats = a.states(model, inputs)
        return info_nce(x, y, a.temperature, a.symmetric, a.gather, a.normalize, stats)

    def next_align_batch(self) -> dict[str, torch.Tensor]:
        """The stream's next micro-batch, tokenised and on the model's device."""
        _, pairs = self.align.stream.batch(self.align_position)
        self.align_position += 1
        batch = encode_pairs(self.align_tokenizer, pairs, self.align.max_length)
        return self._prepare_inputs(batch)

    def _record(self, name: str, loss: torch.Tensor) -> None:
        """Add a micro-batch loss to the logged sums; a NaN/inf loss stops training here,
        before its backward and the optimizer step, so no checkpoint holds what follows."""
        value = loss.item()
        if not math.isfinite(value):
            step = self.state.global_step + 1
            raise self._diverged(f"the {name.replace('_', ' ')} became {value} at step {step}")
        self._sums[name][0] += value
        self._sums[name][1] += 1

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a run that diverged, naming its last complete checkpoint."""
        good = last_checkpoint(Path(self.args.output_dir).parent)
        kept = (
            f"the last good checkpoint is {good} (its adapter loads as it is)"
            if good is not None
            else "no checkpoint was saved before it"
        )
        return TrainingDiverged(
            f"training diverged: {what}; {kept}. Lower --learning-rate (or check the data) "
            "and train again with --overwrite"
        )

    def _backward(self, loss: torch.Tensor) -> None:
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # the loss is already divided by the micro-batches of the step (module docstring);
            # DeepSpeed would divide it again by its accumulation count
            self.accelerator.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    # ------------------------------------------------------------------ the step

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """The Trainer's own sampler; under ``alternate-steps`` that sampler's task order inside
        :class:`~midalign.data.steps.AlternatingSteps`, which adds the alignment steps."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(dataset, StepsDataset):
            return super()._get_train_sampler(train_dataset)
        return AlternatingSteps(
            super()._get_train_sampler(dataset.task),
            len(dataset.task),
            self._train_batch_size,
            self.args.gradient_accumulation_steps,
            self.args.world_size,
        )

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One call per batch of the Trainer's dataloader; returns the scaled loss it added."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        inner = self.model
        # Task-loader batches in this optimizer step (fewer in an epoch's last step).
        n = self.current_gradient_accumulation_steps

        def task(**batch: torch.Tensor) -> torch.Tensor:
            return self.task_loss(inner, batch)

        def align(**batch: torch.Tensor) -> torch.Tensor:
            return self.align_loss(inner, batch)

        if self.schedule == "alternate-steps" and ALIGN_STEP in inputs:
            # a micro-batch of an alignment step: the marker stands for the stream's next batch
            loss = self.wrapped_forward(model, align, **self.next_align_batch())
            self._record("align_loss", loss)
            scaled = loss / n
            self._backward(scaled)
        elif self.schedule in ("task", "alternate-steps"):
            loss = self.wrapped_forward(model, task, **inputs)
            self._record("task_loss", loss)
            scaled = loss / n
            self._backward(scaled)
        elif self.schedule == "align":
            loss = self.wrapped_forward(model, align, **inputs)
            self.align_position += 1
            self._record("align_loss", loss)
            scaled = loss / n
            self._backward(scaled)
        elif self.schedule == "joint":  # one forward of both, one backward

            def both(**batches: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                return task(**batches["task"]), align(**batches["align"])

            task_l, align_l = self.wrapped_forward(
                model, both, task=inputs, align=self.next_align_batch()
            )
            self._record("task_loss", task_l)
            self._record("align_loss", align_l)
            scaled = (task_l + self.align.weight * align_l) / n
            self._backward(scaled)
        else:  # alternate: 2n micro-batches in this step, n of each kind (module docstring)
            with self.accumulate_only(model):
                align_l = self.wrapped_forward(model, align, **self.next_align_batch())
                self._record("align_loss", align_l)
                self._backward(align_l / (2 * n))
            task_l = self.wrapped_forward(model, task, **inputs)
            self._record("task_loss", task_l)
            self._backward(task_l / (2 * n))
            scaled = (task_l + align_l) / (2 * n)
        return scaled.detach()

    # ------------------------------------------------------------------ logging and eval

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry the task and alignment losses since the last log."""
        if "loss" in logs:  # every rank logs at the same step: the sums can be reduced
            sums = torch.tensor(
                [v for pair in self._sums.values() for v in pair], dtype=torch.float64
            )
            sums = self.accelerator.reduce(sums.to(self.accelerator.device), "sum").cpu()
            for i, name in enumerate(self._sums):
                total, count = sums[2 * i].item(), sums[2 * i + 1].item()
                if count:
                    logs[name] = total / count
            self._sums = {name: [0.0, 0] for name in self._sums}
        super().log(logs, start_time)

    @torch.no_grad()
    def dev_alignment(self) -> tuple[float, float]:
        """On the fixed held-out batches (model in eval mode): the mean alignment loss, and the
        in-batch top-1 accuracy x → y (:func:`midalign.losses.top1_accuracy`: the share of all
        held-out x, averaged over the alignment layers), which unlike the loss does not depend
        on τ. Every rank holds every dev batch, so nothing is gathered: gathering would repeat
        each batch W times as false negatives."""
        a, model = self.align, self.model
        was_training = model.training
        model.eval()
        losses, correct, rows = [], 0.0, 0
        for batch in a.dev_batches:
            x, y, stats = a.states(model, self._prepare_inputs(batch))
            losses.append(
                info_nce(x, y, a.temperature, a.symmetric, False, a.normalize, stats).item()
            )
            correct += top1_accuracy(x, y, a.normalize, stats).item() * x.shape[-2]
            rows += x.shape[-2]
        model.train(was_training)
        return sum(losses) / len(losses), correct / rows

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """The dev task loss of one batch through :meth:`task_loss`: logits only at response
        tokens, as in training (the Trainer's own step computes all of them, ~40 s per
        evaluation on Gemma 3 270M). Only the loss is needed: ``prediction_loss_only``."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.task_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The Trainer's dev task loss (as ``eval_task_loss``) plus the dev alignment loss and
        top-1 accuracy (``eval_align_loss``, ``eval_align_acc``)."""
        if self.has_task_dev:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            output.metrics[f"{metric_key_prefix}_task_loss"] = output.metrics[
                f"{metric_key_prefix}_loss"
            ]
        else:
            output = EvalLoopOutput(predictions=None, label_ids=None, metrics={}, num_samples=0)
        if self.align is not None and self.align.dev_batches:
            loss, acc = self.dev_alignment()
            output.metrics[f"{metric_key_prefix}_align_loss"] = loss
            output.metrics[f"{metric_key_prefix}_align_acc"] = acc
        return output

    # ------------------------------------------------------------------ schedule and checkpoints

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """The Trainer's scheduler, unless the learning rate would be 0 at every step
        (:func:`midalign.config.no_learning`). ``validate`` refuses that when --max-steps is
        given; a run counted in epochs has its steps known only here."""
        args = self.args
        schedule = SchedulerType(args.lr_scheduler_type).value
        if no_learning(schedule, args.warmup_steps, num_training_steps):
            counted = (
                f"--max-steps {args.max_steps}"
                if args.max_steps > 0
                else f"--epochs {args.num_train_epochs:g}"
            )
            raise InputError(
                no_learning_message(
                    schedule, args.warmup_steps, num_training_steps, "--warmup-ratio", counted
                )
            )
        return super().create_scheduler(num_training_steps, optimizer)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus the alignment stream position; a completion marker is
        written last, and old checkpoints are rotated only after it, so an interrupted save
        never leaves the run without a usable checkpoint. Weights that became NaN or
        infinite (a finite loss with an overflowing gradient) are never saved."""
        step = self.state.global_step
        trainable = [p.detach() for p in model.parameters() if p.requires_grad]
        if not all(torch.isfinite(p).all() for p in trainable):
            raise self._diverged(f"the LoRA weights became NaN or infinite at step {step}")
        folder = Path(self._get_output_dir(trial)) / f"checkpoint-{step}"
        if self.args.should_save:  # the main process (the others only add their RNG states)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / COMPLETE_FILE).unlink(missing_ok=True)
            write_json(folder / STREAM_FILE, {"align_position": self.align_position})
            for path in self.checkpoint_files:
                shutil.copyfile(path, folder / path.name)
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            _best_relative(folder / TRAINER_STATE)
            follow_umask(folder)
            write_text_atomic(folder / COMPLETE_FILE, f"{self.state.global_step}\n")
            rotate_checkpoints(
                self._get_output_dir(trial),
                save_total_limit=self.keep_checkpoints,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )


def _best_relative(state_file: Path) -> None:
    """Name the best checkpoint in a checkpoint's trainer_state.json relative to the run folder
    (``checkpoints/checkpoint-N``): the Trainer writes the path it was given, which a run
    moved, or resumed from another working directory, would no longer find."""
    state = json.loads(state_file.read_text(encoding="utf-8"))
    best = state.get("best_model_checkpoint")
    if best is not None:
        state["best_model_checkpoint"] = f"{CHECKPOINTS}/{Path(best).name}"
        write_text_atomic(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _best_absolute(checkpoint: Path, run_dir: Path) -> None:
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


# ---------------------------------------------------------------------- callbacks


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


# ---------------------------------------------------------------------- setup


def choose_auto_layer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    per_lang: int,
    pool: str,
) -> tuple[int, dict[str, float]]:
    """The layer (1..L) where the base model retrieves the alignment pairs best: mean xsim
    accuracy over languages and both directions, on up to ``per_lang`` pairs per language."""
    n_layers = num_layers(model)
    layers = list(range(1, n_layers + 1))
    emb, sides = {}, []
    for lang, items in pairs.items():
        sample = items[:per_lang]
        for side, texts in (("x", [x for x, _ in sample]), ("y", [y for _, y in sample])):
            emb[f"{lang}:{side}"] = extract_embeddings(
                model, tokenizer, texts, layers, pool, progress=False
            )
        sides += [(f"{lang}:x", f"{lang}:y"), (f"{lang}:y", f"{lang}:x")]
    smallest = min(len(v) for v in pairs.values())
    margin = "ratio" if min(smallest, per_lang) > 4 else "cosine"
    acc = pair_accuracy(emb, sides, k=4, margin=margin).mean(dim=1)  # [L]
    by_layer = {str(layer): float(a) for layer, a in zip(layers, acc, strict=True)}
    best = layers[int(acc.argmax())]
    return best, by_layer


def resolve_layers(
    spec: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    per_lang: int,
    pool: str,
) -> tuple[list[int], dict[str, float] | None]:
    """``middle`` → L // 2; ``auto`` → probed peak; integers → themselves (1..L)."""
    n_layers = num_layers(model)
    if spec == "auto":
        layer, by_layer = choose_auto_layer(model, tokenizer, pairs, per_lang, pool)
        log.info(
            "--align-layers auto: layer %d (mean retrieval %.3f; by layer %s)",
            layer,
            by_layer[str(layer)],
            ", ".join(f"{k}: {v:.2f}" for k, v in by_layer.items()),
        )
        return [layer], by_layer
    layers = parse_layers(spec, n_layers, "--align-layers")
    if 0 in layers:
        raise InputError(
            "--align-layers: layer 0 is the embedding output, which LoRA does not change; "
            f"use 1 to {n_layers}"
        )
    return layers, None


def _dev_batches(
    dev: Pairs, tokenizer: PreTrainedTokenizerBase, batch_pairs: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Held-out pairs in chunks of B per language (a last chunk of one pair joins the previous)."""
    batches = []
    for items in dev.values():
        starts = list(range(0, len(items), batch_pairs))
        if len(items) - starts[-1] < 2 and len(starts) > 1:
            starts.pop()
        bounds = [*starts[1:], len(items)]
        for start, end in zip(starts, bounds, strict=True):
            batches.append(encode_pairs(tokenizer, items[start:end], max_length))
    return batches


def _base_stats(
    c: TrainConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    layers: list[int],
    special: list[int],
    resume_from: Path | None,
) -> Stats:
    """The base model's (μ, σ) for ``align.stats: base``: loaded from the checkpoint a run
    resumes from (or its run directory), computed otherwise (:mod:`midalign.align_stats`)."""
    if resume_from is not None:
        for path in (resume_from / STATS_FILE, resume_from.parent.parent / STATS_FILE):
            if path.is_file():
                log.info("alignment statistics from %s", path)
                return load_stats(path, layers)
        log.warning("no %s to resume with: computing the statistics again", STATS_FILE)
    log.info(
        "alignment statistics of the base model: layers %s, up to %d pairs per language",
        layers,
        c.align.stats_pairs,
    )
    return base_stats(
        model,
        tokenizer,
        pairs,
        layers,
        c.align.pool,
        special,
        c.data.align_max_length,
        c.align.stats_pairs,
        c.optim.seed,
    )


def _broadcast(stats: Stats, device: torch.device) -> Stats:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats
    out = []
    for t in stats:
        t = t.to(device)
        dist.broadcast(t, src=0)
        out.append(t.cpu())
    return out[0], out[1]


@dataclass
class TrainResult:
    interrupted: bool
    global_step: int
    best_checkpoint: str | None  # relative to the run folder: checkpoints/checkpoint-N
    best_metric: float | None
    align_layers: list[int]
    auto_layer_retrieval: dict[str, float] | None
    train_examples: int
    align_pairs: dict[str, int]
    log_history: list[dict[str, Any]]


def train(
    config: TrainConfig,
    out: Path,
    resume_from: Path | None = None,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Run (or continue) one training run in ``out``; the caller has checked ``out`` and
    written ``config.yaml``. Writes checkpoints, log.jsonl, the best adapter and the plot.
    ``callbacks`` are extra Trainer callbacks (e.g. a custom logger)."""
    out = Path(out)
    c = config
    schedule = c.align.schedule
    model, tokenizer = load_model(c.model.name, dtype=c.model.dtype)
    tokenizer.padding_side = "right"
    special = special_token_ids(tokenizer)

    train_set = dev_set = None
    if schedule != "align":
        train_set = load_task_dataset(c.data.task_data, tokenizer, c.data.max_length)
    if c.data.dev_data:
        dev_set = load_task_dataset(c.data.dev_data, tokenizer, c.data.max_length)

    align = None
    pair_counts: dict[str, int] = {}
    auto_retrieval = None
    layers: list[int] = []
    if schedule != "task" or (c.data.align_data and c.data.align_langs):
        # a task-only run with alignment data still logs the dev alignment loss
        pairs = load_pairs(
            c.data.align_data, c.data.align_langs, c.data.align_split, c.data.align_max_pairs
        )
        pairs, dev_pairs = split_dev(pairs, c.data.align_dev_pairs, c.optim.seed)
        pair_counts = {lang: len(items) for lang, items in pairs.items()}
        layers, auto_retrieval = resolve_layers(
            c.align.layers, model, tokenizer, pairs, c.align.auto_pairs, c.align.pool
        )
        align = AlignSetup(
            stream=AlignStream(pairs, c.align.batch_pairs, c.optim.seed),
            layers=layers,
            temperature=c.align.temperature,
            symmetric=c.align.symmetric,
            gather=c.align.gather_negatives,
            pool=c.align.pool,
            normalize=c.align.normalize,
            weight=c.align.weight,
            max_length=c.data.align_max_length,
            special_ids=special,
            dev_batches=_dev_batches(
                dev_pairs, tokenizer, c.align.batch_pairs, c.data.align_max_length
            ),
        )
        log.info(
            "alignment: layers %s, pairs per language %s, %d dev batches",
            layers,
            pair_counts,
            len(align.dev_batches),
        )
        if c.align.normalize != "none" and c.align.stats == "base":  # before LoRA is attached
            align.stats = _base_stats(c, model, tokenizer, pairs, layers, special, resume_from)

    from peft import LoraConfig, get_peft_model

    set_seed(c.optim.seed)
    with peft_quietly():
        model = get_peft_model(
            model,
            LoraConfig(
                r=c.lora.r,
                lora_alpha=c.lora.alpha,
                lora_dropout=c.lora.dropout,
                target_modules=c.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )

    ga = c.optim.gradient_accumulation_steps
    trainer_ga = ga // 2 if schedule == "alternate" else ga  # alternate-steps: G of one kind
    has_eval = dev_set is not None or (align is not None and bool(align.dev_batches))
    metric = c.optim.metric_for_best_model
    if metric == "auto":
        metric = "align_loss" if schedule == "align" or dev_set is None else "task_loss"
    if has_eval and metric == "task_loss" and dev_set is None:
        raise InputError("--metric-for-best-model task_loss needs --dev-data")
    if has_eval and metric == "align_loss" and (align is None or not align.dev_batches):
        raise InputError("--metric-for-best-model align_loss needs held-out alignment pairs")
    args = TrainingArguments(
        # absolute: the Trainer keeps this path in its state (the best checkpoint's)
        output_dir=str(out.absolute() / CHECKPOINTS),
        per_device_train_batch_size=1 if schedule == "align" else c.optim.batch_size,
        per_device_eval_batch_size=c.optim.batch_size,
        gradient_accumulation_steps=trainer_ga,
        num_train_epochs=1 if schedule == "align" else c.optim.epochs,
        max_steps=c.optim.max_steps,
        learning_rate=c.optim.learning_rate,
        lr_scheduler_type=c.optim.lr_scheduler,
        warmup_steps=c.optim.warmup_ratio,
        weight_decay=c.optim.weight_decay,
        max_grad_norm=c.optim.max_grad_norm,
        logging_steps=c.optim.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=c.optim.eval_steps,
        save_strategy="steps",
        save_steps=c.optim.save_steps,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=False if has_eval else None,
        seed=c.optim.seed,
        # tensorboard is ours to set up (below): transformers would write into checkpoints/
        report_to=[r for r in c.optim.report_to if r != "tensorboard"] or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,
        train_sampling_strategy="sequential" if schedule == "align" else "group_by_length",
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        # DDP: an alignment forward stops at the alignment layer, so the LoRA weights above it
        # get no gradient. Under `alternate` and `joint` the syncing backward is a task one,
        # which reaches every weight; under `align` and in the alignment steps of
        # `alternate-steps` it is not, and DDP must look for the unused weights (a graph walk
        # per forward) or it waits for their gradients forever.
        ddp_find_unused_parameters=schedule in ("align", "alternate-steps"),
    )
    if align is not None and args.world_size > 1:  # each rank trains on its slice
        align.stream = AlignStream(
            pairs, c.align.batch_pairs, c.optim.seed, args.process_index, args.world_size
        )
    checkpoint_files = []
    if align is not None and align.stats is not None:
        if args.world_size > 1:  # every rank computed them; all use rank 0's, bit for bit
            align.stats = _broadcast(align.stats, args.device)
        if args.should_save:
            info = {
                "model": c.model.name,
                "pool": c.align.pool,
                "final_norm": "false",
                "pairs_per_language": str(c.align.stats_pairs),
            }
            save_stats(out / STATS_FILE, align.stats, layers, info)
        checkpoint_files.append(out / STATS_FILE)
    task_set = train_set
    if schedule == "align":
        train_set = AlignBatches(
            align.stream, c.optim.max_steps * ga, tokenizer, c.data.align_max_length
        )
    stopper = StopOnSignal()
    all_callbacks: list[TrainerCallback] = [JsonlLog(out / LOG_FILE), *callbacks, stopper]
    if "tensorboard" in c.optim.report_to and args.process_index == 0:
        all_callbacks.append(_tensorboard(out / TENSORBOARD))
    if has_eval and c.optim.early_stopping_patience > 0:
        all_callbacks.append(EarlyStoppingCallback(c.optim.early_stopping_patience))
    collator = (
        (lambda items: items[0])
        if schedule == "align"
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    if schedule == "alternate-steps":
        train_set, collator = StepsDataset(task_set), collate_steps(collator)
    trainer = AlignmentTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev_set if dev_set is not None else (align.dev_batches if has_eval else None),
        data_collator=collator,
        callbacks=all_callbacks,
        schedule=schedule,
        align=align,
        align_tokenizer=tokenizer,
        has_task_dev=dev_set is not None,
        keep_checkpoints=c.optim.keep_checkpoints,
        checkpoint_files=checkpoint_files,
    )
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)
    trainer.add_callback(ProgressLog() if progress else PrintLog())
    if resume_from is not None:
        position = json.loads((resume_from / STREAM_FILE).read_text())["align_position"]
        trainer.align_position = position
        with args.main_process_first(desc="resolving the best checkpoint"):
            _best_absolute(resume_from, out)
        if args.should_save:
            _truncate_log(out / LOG_FILE, int(resume_from.name.split("-")[-1]))
    stopper.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    interrupted = stopper.received is not None
    if not interrupted and args.should_save:
        save_adapter(trainer.model, out)
        plot_training_curves(read_log(out / LOG_FILE), out / "training_curves.png")
        task_langs = sorted(
            {e.lang for e in read_instructions(Path(c.data.task_data)) if e.lang}
            if c.data.task_data and schedule != "align"
            else set()
        )
        card = training_card(
            c,
            layers,
            task_langs,
            pair_counts,
            len(task_set) if schedule != "align" else 0,
            trainer.state.global_step,
        )
        write_card(out, card)
    result = TrainResult(
        interrupted=interrupted,
        global_step=trainer.state.global_step,
        best_checkpoint=(
            f"{CHECKPOINTS}/{Path(trainer.state.best_model_checkpoint).name}"
            if trainer.state.best_model_checkpoint
            else None
        ),
        best_metric=trainer.state.best_metric,
        align_layers=layers,
        auto_layer_retrieval=auto_retrieval,
        train_examples=len(task_set) if schedule != "align" else 0,
        align_pairs=pair_counts,
        log_history=trainer.state.log_history,
    )
    return result


def _tensorboard(folder: Path) -> TrainerCallback:
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


def save_adapter(model: torch.nn.Module, out: Path) -> None:
    """The (best) adapter as plain PEFT files in ``out``, each moved in by an atomic rename."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=out))
    try:
        model.save_pretrained(tmp)
        follow_umask(tmp)
        for name in ADAPTER_FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be redone)."""
    rows = [row for row in read_log(path) if row["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def plot_training_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Task and alignment losses (train and dev), the dev in-batch top-1 accuracy (right axis)
    and the learning rate against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = ("task_loss", "align_loss", "eval_task_loss", "eval_align_loss")
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name in series:
        points = [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]
        if points:
            style = "o--" if name.startswith("eval") else "-"
            ax_loss.plot(*zip(*points, strict=True), style, label=name, markersize=4)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    acc = [(r["step"], r["eval_align_acc"]) for r in rows if "eval_align_acc" in r]
    if acc:
        ax_acc = ax_loss.twinx()
        ax_acc.plot(*zip(*acc, strict=True), "s:", color="black", markersize=4)
        ax_acc.set_ylim(0, 1)
        ax_acc.set_ylabel("dev top-1 x → y (in batch)")
        handles += ax_acc.get_lines()
        labels += ["eval_align_acc"]
    ax_loss.legend(handles, labels)
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        ax_lr.plot(*zip(*lr, strict=True), color="gray")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
