"""`midalign train`'s Trainer: the alignment schedules on ``transformers.Trainer``.

:class:`AlignmentTrainer` is ``transformers.Trainer`` with :class:`midalign.training.alignment.
AlignmentMixin`, which holds the schedules (``alternate``, ``alternate-steps``, ``joint``,
``task``, ``align``), the loss scaling and the multi-process rules (see that module). What a
``midalign train`` run adds is here: its task loss (the response tokens' cross-entropy with
logits only at them), checkpoints that carry the alignment stream position and a completion
marker (:mod:`midalign.training.checkpoints`), and the refusal of a learning-rate schedule that is 0
throughout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import SchedulerType, rotate_checkpoints

from midalign.data.pairs import Pairs
from midalign.errors import InputError
from midalign.files import follow_umask, write_json, write_text_atomic
from midalign.modeling.forward import response_loss
from midalign.training.align_setup import AlignSetup, check_pairs_trainer, pairs_setup
from midalign.training.alignment import STREAM_FILE, AlignmentMixin, TrainingDiverged
from midalign.training.checkpoints import (
    COMPLETE_FILE,
    TRAINER_STATE,
    best_relative,
    last_checkpoint,
)
from midalign.training.config import AlignConfig
from midalign.training.warmup import no_learning, no_learning_message


class AlignmentTrainer(AlignmentMixin, Trainer):
    """``transformers.Trainer`` whose step adds middle-layer alignment
    (:mod:`midalign.training.alignment`), with midalign's task loss, checkpoints and evaluation.

    Built as ``Trainer`` is, plus the alignment: ``AlignmentTrainer(model=..., args=...,
    train_dataset=..., processing_class=tokenizer, align=AlignConfig(...), align_pairs=...)``,
    as :class:`midalign.trl.AlignmentSFTTrainer` is built on ``SFTTrainer``.

    - ``align``: the ``align`` section of a ``midalign train`` config
      (:class:`midalign.training.config.AlignConfig`), checked as ``midalign train`` checks it;
      None trains the task alone.
      Schedules ``alternate``, ``joint`` and ``task``.
    - ``align_pairs``: translation pairs (:func:`midalign.data.pairs.as_pairs`);
      ``align_eval_pairs``: held-out pairs whose alignment loss and in-batch top-1 accuracy
      every evaluation adds (``eval_align_loss``, ``eval_align_acc``); ``align_max_length``:
      the pairs' token limit.
    - ``args.gradient_accumulation_steps`` counts task micro-batches, as everywhere in midalign
      (:attr:`midalign.training.config.OptimConfig.gradient_accumulation_steps`): under
      ``alternate`` each brings one alignment micro-batch. The stream's seed is ``args.seed``;
      ``layers: auto`` and ``stats: base`` measure ``model`` with its adapter disabled.
    - The task loss is midalign's, not the model's: the response tokens' cross-entropy
      (labels -100 elsewhere), logits only at them (:meth:`task_loss`). ``train_dataset`` rows
      hold ``input_ids`` and ``labels``, padded by ``DataCollatorForSeq2Seq`` unless a
      ``data_collator`` is given; ``eval_dataset`` adds the dev task loss to evaluations.

    Every other argument is ``Trainer``'s.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        align: AlignConfig | None = None,
        align_pairs: Pairs | Iterable[Mapping[str, str]] | None = None,
        align_eval_pairs: Pairs | Iterable[Mapping[str, str]] | None = None,
        align_max_length: int = 128,
        **kwargs: Any,
    ) -> None:
        setup = None
        tokenizer = kwargs.get("processing_class")
        has_task_dev = kwargs.get("eval_dataset") is not None
        if align is not None:
            check_pairs_trainer(align, "AlignmentTrainer", align_pairs is not None)
            if align.schedule != "task" and (model is None or tokenizer is None):
                raise ValueError("the alignment loss needs model= and processing_class=")
            if args is None:  # as Trainer's own default, made here: the pairs need its seed
                args = TrainingArguments(output_dir="tmp_trainer")
            if align.schedule != "task":
                setup = pairs_setup(
                    align, model, tokenizer, align_pairs, align_eval_pairs, args, align_max_length
                )
                if not has_task_dev and setup.dev_batches:  # evaluations: the alignment only
                    kwargs["eval_dataset"] = setup.dev_batches
        if tokenizer is not None and not trainer_args:
            kwargs.setdefault(
                "data_collator",
                DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            )
        super().__init__(model, args, *trainer_args, **kwargs)
        schedule = align.schedule if align is not None else "task"
        self.init_alignment(schedule, setup, tokenizer, has_task_dev)
        self.keep_checkpoints: int | None = None  # besides the best; rotated after each save
        self.checkpoint_files: list[Path] = []  # copied into every checkpoint
        self.cli = False  # messages name midalign train's options (for_run), else the API's

    @classmethod
    def for_run(
        cls,
        setup: AlignSetup | None,
        schedule: str,
        *,
        align_tokenizer: PreTrainedTokenizerBase,
        has_task_dev: bool,
        keep_checkpoints: int | None,
        checkpoint_files: Sequence[Path],
        seeded_order: bool,
        **kwargs: Any,
    ) -> AlignmentTrainer:
        """``midalign train``'s trainer: its alignment setup built from the whole config
        (:func:`midalign.training.align_setup.prepare_alignment`, which the ``align`` schedule and
        ``alternate-steps`` need too: they feed the Trainer's loader), ``optim.keep_checkpoints``,
        the files every checkpoint carries, and ``optim.data_order: seeded``. ``kwargs`` are
        ``Trainer``'s."""
        trainer = cls(**kwargs)
        trainer.init_alignment(schedule, setup, align_tokenizer, has_task_dev)
        trainer.cli = True
        trainer.seeded_order = seeded_order
        trainer.keep_checkpoints = keep_checkpoints
        trainer.checkpoint_files = list(checkpoint_files)
        return trainer

    def task_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal-LM cross-entropy over the response tokens of this micro-batch (mean), with
        logits only at those tokens (:func:`midalign.modeling.forward.response_loss`), under the
        run's mixed precision (:meth:`autocast`; the cross-entropy in float32)."""
        with self.autocast():
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            return response_loss(model, ids, mask, labels)

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a run that diverged; ``midalign train``'s names its last complete
        checkpoint and its options."""
        if not self.cli:
            return super()._diverged(what)
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

    # ------------------------------------------------------------------ schedule and checkpoints

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """The Trainer's scheduler, unless the learning rate would be 0 at every step
        (:func:`midalign.training.config_checks.no_learning`). ``validate`` refuses that when
        --max-steps is given; a run counted in epochs has its steps known only here."""
        args = self.args
        schedule = SchedulerType(args.lr_scheduler_type).value
        if no_learning(schedule, args.warmup_steps, num_training_steps):
            steps, epochs, warmup = (
                ("--max-steps", "--epochs", "--warmup-ratio")
                if self.cli
                else ("args.max_steps", "args.num_train_epochs", "args.warmup_steps")
            )
            counted = (
                f"{steps} {args.max_steps}"
                if args.max_steps > 0
                else f"{epochs} {args.num_train_epochs:g}"
            )
            raise InputError(
                no_learning_message(
                    schedule, args.warmup_steps, num_training_steps, warmup, counted
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
            write_json(folder / STREAM_FILE, self.stream_state())
            for path in self.checkpoint_files:
                shutil.copyfile(path, folder / path.name)
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            best_relative(folder / TRAINER_STATE)
            follow_umask(folder)
            write_text_atomic(folder / COMPLETE_FILE, f"{self.state.global_step}\n")
            rotate_checkpoints(
                self._get_output_dir(trial),
                save_total_limit=self.keep_checkpoints,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
