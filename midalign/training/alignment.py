"""The alignment objective inside any ``Trainer``'s step: the schedules (docs/design.md §2).

The Trainer keeps what it does well: optimiser, scheduler, gradient accumulation, logging,
evaluation, checkpoints, early stopping and resume. :class:`AlignmentMixin` changes one
thing, what a ``training_step`` does with the task micro-batch it is handed, for any
``Trainer`` class it is mixed into: ``transformers.Trainer`` for ``midalign train``
(:class:`midalign.training.trainer.AlignmentTrainer`), TRL's ``SFTTrainer`` for
:class:`midalign.trl.AlignmentSFTTrainer`. The trainer supplies the task loss of a
micro-batch (:meth:`AlignmentMixin.task_loss`); the schedules, the alignment loss and its
logging are this module's, one implementation for both:

- ``alternate``: one alignment micro-batch forward/backward, then the task micro-batch the
  Trainer handed over. ``gradient_accumulation_steps`` G means what it means to the Trainer, in
  ``midalign train``, :class:`midalign.training.trainer.AlignmentTrainer` and TRL's trainer alike:
  the task micro-batches of an optimizer step, so a step sees align, task, align, task, … (2G
  micro-batches) and its task side is SFT's with the same G. Each loss is divided by the 2G
  micro-batches, as the paper's code divides by its accumulation count (which counts both kinds: its
  4 is G = 2 here), or by G with ``align.matched``. The order within a pair does not change the
  accumulated gradient; alignment goes first so that the backward that syncs gradients across
  processes is a task backward, which reaches every LoRA parameter. This is what the authors' code
  does: its trainer flips the objective at every micro-batch, inside one optimizer step.
- ``alternate-steps``: the paper's text, "we optimize either the task-specific objective or the
  alignment objective in each training step": whole optimizer steps of G alignment micro-batches
  and of G task micro-batches in turn (alignment first), each with the full effective batch.
  The Trainer's loader carries the alternation (:mod:`midalign.data.steps`), so epochs, the
  last step of an epoch and resume count both kinds of step.
- ``joint``: one backward of task + λ·align per micro-batch.
- ``task``: plain SFT. ``align``: alignment only; the Trainer's "dataset" is then the first
  max_steps·G micro-batches of the alignment stream.

- ``alternate`` with ``align.matched``: both losses divided by G, so the task gradient too is
  SFT's and the alignment gradient is added on top: a system − SFT difference measures the
  alignment loss alone (the issue "Answer the transfer question"). Without it each is halved,
  which under Adam changes little besides gradient clipping.

Every micro-batch loss is a mean over its own tokens (task) or pairs (alignment), and is divided
by the number of micro-batches in the step (of its kind, under matched ``alternate``), so the
accumulated gradient is exactly the mean over micro-batches.

What a run has seen (:attr:`AlignmentMixin.seen`: task examples and alignment pairs, this
process's times the processes) is counted as it trains and kept in every checkpoint, so that
the report can show that the systems it compares saw the same task data.

The Trainer's own division by its accumulation count is not used (the mixin calls
``accelerator.backward`` itself); the accelerator is built with num_steps = 1 and does not
scale either.

The alignment micro-batch is B pairs, 2B rows, through
:func:`midalign.modeling.forward.pooled_states` (on the CPU as length-sorted sub-batches where the
padding saved is worth a forward, :func:`midalign.modeling.forward.grouped_pooled_states`): the
forward stops after the alignment layer (no later layers, no final norm, no lm_head: at layer L the
residual stream before the norm, as in the paper's code), and LoRA gradients flow through it.
``align.normalize`` centres or standardises the pooled states before the cosine
(:mod:`midalign.training.losses`), with the current batch's statistics or the base model's
(:mod:`midalign.training.align_stats`, computed once before LoRA is attached).

Several processes (``accelerate launch``): every forward, task or alignment, runs as the
forward of the engine's wrapper (DDP, FSDP, DeepSpeed; :meth:`AlignmentMixin.wrapped_forward`), so
the engine sees each graph it must reduce. Only the last backward of an optimizer step syncs:
the first backward of an ``alternate`` pair only accumulates (:meth:`AlignmentMixin.
accumulate_only`). Task micro-batches are split over ranks by the Trainer's data loader, and
alignment micro-batches by :class:`~midalign.data.pairs.AlignStream`, so W processes with
batch b and B pairs take the optimizer steps one process takes with W·b and W·B, up to float
error, when micro-batches hold equal numbers of response tokens (each rank's task loss is a
mean over its own tokens, and the ranks' gradients are averaged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.trainer_utils import EvalLoopOutput

from midalign.data.pairs import encode_pairs
from midalign.data.steps import ALIGN_STEP, AlternatingSteps, StepsDataset
from midalign.errors import InputError
from midalign.training.align_setup import AlignSetup
from midalign.training.losses import Stats, info_nce, top1_accuracy

STREAM_FILE = "align_stream.json"  # in a checkpoint: the alignment stream position


class EpochSeeded(torch.utils.data.Sampler[int]):
    """``sampler`` (one with a ``generator``: the Trainer's length-grouped or random
    sampler) drawing from a generator of its own, seeded by ``seed``: epoch e's order is the
    (e+1)-th order it draws. Each epoch replays the generator from the seed through the
    epochs before it (the Trainer sets the epoch: ``set_epoch``), so an epoch's order depends
    on nothing else: not on what else drew from the global random stream, not on where a
    resumed run started."""

    def __init__(self, sampler: Any, seed: int) -> None:
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        self.sampler.generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # the earlier epochs' draws (a permutation each: cheap)
            for _ in self.sampler:
                pass
        return iter(self.sampler)


class TrainingDiverged(InputError):
    """The loss or the LoRA weights became NaN or infinite. An InputError because the fix is
    an option (a lower learning rate) or the data; the CLI reports it in one line."""


class AlignmentMixin:
    """The four schedules of a training step, for a ``Trainer`` class: mix it in first
    (``class T(AlignmentMixin, Trainer)``), call :meth:`init_alignment` after the Trainer's
    ``__init__`` and define :meth:`task_loss`."""

    def init_alignment(
        self,
        schedule: str,
        align: AlignSetup | None,
        tokenizer: PreTrainedTokenizerBase | None,
        has_task_dev: bool,
    ) -> None:
        """``tokenizer`` encodes the alignment pairs; ``has_task_dev``: evaluations include
        the Trainer's own dev task loss (otherwise only the dev alignment metrics)."""
        if schedule != "task" and align is None:
            raise ValueError(f"the {schedule} schedule needs alignment data")
        self.schedule = schedule
        self.align = align
        self.align_tokenizer = tokenizer
        self.has_task_dev = has_task_dev
        self.align_position = 0  # alignment micro-batches drawn so far = the stream position
        self.seen = {"task_examples": 0, "align_pairs": 0}  # over every process
        self.seeded_order = False  # the task order from a generator of its own (_seed_order)
        self._sums: dict[str, list[float]] = {"task_loss": [0.0, 0], "align_loss": [0.0, 0]}

    def stream_state(self) -> dict[str, int]:
        """What a checkpoint keeps of the alignment stream: its position, and what the run
        has seen so far."""
        return {"align_position": self.align_position, **self.seen}

    def restore_stream(self, saved: dict[str, int]) -> None:
        """The stream as a checkpoint left it (:meth:`stream_state`; checkpoints written before
        the counts existed restore the position only)."""
        self.align_position = saved["align_position"]
        self.seen = {k: saved.get(k, 0) for k in self.seen}

    def _count(self, name: str, rows: int) -> None:
        self.seen[name] += rows * self.accelerator.num_processes

    # ------------------------------------------------------------------ losses

    def wrapped_forward(self, model: torch.nn.Module, fn: Callable[..., Any], **inputs: Any) -> Any:
        """``fn(**inputs)`` (which calls the unwrapped model) run as the forward of ``model``,
        the engine's wrapper when there is one: DDP prepares its gradient reduction from what a
        forward returns (and, with ``find_unused_parameters``, finds the parameters an
        early-exit forward never reached), FSDP gathers sharded weights around it, DeepSpeed
        hooks it. The wrapper's inner module lends it its ``forward`` for this one call.

        A model sharded by FSDP2's ``fully_shard`` takes this path whatever accelerate reports
        (no engine for a model sharded outside its launcher, never FSDP on CPU): FSDP2
        all-gathers the root unit's weights (embeddings, final norm, lm_head, unless they are
        units of their own) only in the root module's forward, and ``fn`` calls the inner
        decoder stack."""
        from accelerate.utils import DistributedType
        from torch.distributed.fsdp import FSDPModule

        if self.accelerator.distributed_type == DistributedType.NO and not isinstance(
            model, FSDPModule
        ):
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
        """The task loss of one micro-batch: a mean over its own labelled tokens (module
        docstring), computed the trainer's way."""
        raise NotImplementedError

    def autocast(self) -> AbstractContextManager:
        """The run's mixed precision (bf16 autocast with ``args.bf16``, else nothing), for a
        forward that does not go through the model's ``forward``. The Trainer (accelerate)
        applies autocast by wrapping the model's ``forward``; the alignment forward (stopped
        at the alignment layer) and ``midalign train``'s task forward (logits only at the
        response) call the decoder themselves, so they enter it here. The pooling and the
        losses compute in float32 inside it too
        (:func:`midalign.modeling.forward.pooled_states`)."""
        return self.accelerator.autocast()

    def align_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """InfoNCE over the pooled alignment-layer states of a 2B-row batch (x rows first),
        normalised as configured; the forward under the run's mixed precision, InfoNCE in
        float32."""
        a = self.align
        with self.autocast():
            x, y, stats = a.states(model, inputs)
        return info_nce(x, y, a.temperature, a.symmetric, a.gather, a.normalize, stats)

    def next_align_batch(self) -> dict[str, torch.Tensor]:
        """The stream's next micro-batch, tokenised and on the model's device."""
        _, pairs = self.align.stream.batch(self.align_position)
        self.align_position += 1
        self._count("align_pairs", len(pairs))
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
        """The error for a run that diverged (``midalign train`` adds its last checkpoint)."""
        return TrainingDiverged(f"training diverged: {what}; lower the learning rate")

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
            return self._seed_order(super()._get_train_sampler(train_dataset))
        return AlternatingSteps(
            self._seed_order(super()._get_train_sampler(dataset.task)),
            len(dataset.task),
            self._train_batch_size,
            self.args.gradient_accumulation_steps,
            self.args.world_size,
        )

    def _seed_order(self, sampler: Any) -> Any:
        """With :attr:`seeded_order` (``optim.data_order: seeded``), a shuffling sampler draws
        each epoch's order from a generator seeded by the run's seed and the epoch
        (:class:`EpochSeeded`): the same for SFT and for a run whose alignment forwards draw
        dropout masks from the global stream, and the same after a resume."""
        if self.seeded_order and hasattr(sampler, "generator"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeeded(sampler, seed)
        return sampler

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

        if ALIGN_STEP not in inputs and self.schedule != "align":
            self._count("task_examples", inputs["input_ids"].shape[0])
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
            self._count("align_pairs", inputs["input_ids"].shape[0] // 2)
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
            per_kind = n if self.align.matched else 2 * n  # matched: each kind's mean, summed
            with self.accumulate_only(model):
                align_l = self.wrapped_forward(model, align, **self.next_align_batch())
                self._record("align_loss", align_l)
                self._backward(align_l / per_kind)
            task_l = self.wrapped_forward(model, task, **inputs)
            self._record("task_loss", task_l)
            self._backward(task_l / per_kind)
            scaled = (task_l + align_l) / per_kind
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
        in-batch top-1 accuracy x → y (:func:`midalign.training.losses.top1_accuracy`: the share of
        all held-out x, averaged over the alignment layers), which unlike the loss does not depend
        on τ. Every rank holds every dev batch, so nothing is gathered: gathering would repeat each
        batch W times as false negatives. The forward runs as the model's own (FSDP gathers its root
        weights there; :meth:`wrapped_forward`)."""
        a, model = self.align, self.model
        was_training = model.training
        model.eval()
        losses, correct, rows = [], 0.0, 0

        def states(**batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Stats | None]:
            with self.autocast():
                return a.states(model, batch)

        for batch in a.dev_batches:
            x, y, stats = self.wrapped_forward(model, states, **self._prepare_inputs(batch))
            losses.append(
                info_nce(x, y, a.temperature, a.symmetric, False, a.normalize, stats).item()
            )
            correct += top1_accuracy(x, y, a.normalize, stats).item() * x.shape[-2]
            rows += x.shape[-2]
        model.train(was_training)
        return sum(losses) / len(losses), correct / rows

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
