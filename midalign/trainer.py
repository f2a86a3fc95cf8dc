"""`midalign train`'s Trainer: the alignment schedules on ``transformers.Trainer``.

:class:`AlignmentTrainer` is ``transformers.Trainer`` with :class:`midalign.alignment.
AlignmentMixin`, which holds the schedules (``alternate``, ``alternate-steps``, ``joint``,
``task``, ``align``), the loss scaling and the multi-process rules (see that module). What a
``midalign train`` run adds is here: its task loss (the response tokens' cross-entropy with
logits only at them), checkpoints that carry the alignment stream position and a completion
marker (:mod:`midalign.checkpoints`), and the refusal of a learning-rate schedule that is 0
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

from midalign.align_setup import AlignSetup, check_pairs_trainer, pairs_setup
from midalign.alignment import STREAM_FILE, AlignmentMixin, TrainingDiverged
from midalign.checkpoints import COMPLETE_FILE, TRAINER_STATE, best_relative, last_checkpoint
from midalign.config import AlignConfig
from midalign.config_checks import no_learning, no_learning_message
from midalign.data.pairs import Pairs, as_pairs
from midalign.errors import InputError
from midalign.files import follow_umask, write_json, write_text_atomic
from midalign.forward import response_loss


class AlignmentTrainer(AlignmentMixin, Trainer):
    """A ``Trainer`` whose step is one of the schedules (:mod:`midalign.alignment`), with
    midalign's task loss, checkpoints and evaluation."""

    def __init__(
        self,
        *args: Any,
        schedule: str,
        align: AlignSetup | None,
        align_tokenizer: PreTrainedTokenizerBase | None = None,
        has_task_dev: bool = False,
        keep_checkpoints: int | None = None,
        checkpoint_files: Sequence[Path] = (),
        seeded_order: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.init_alignment(schedule, align, align_tokenizer, has_task_dev)
        self.seeded_order = seeded_order  # optim.data_order: seeded
        self.keep_checkpoints = keep_checkpoints  # besides the best; rotated after each save
        self.checkpoint_files = list(checkpoint_files)  # copied into every checkpoint

    @classmethod
    def from_pairs(
        cls,
        model: torch.nn.Module,
        args: TrainingArguments,
        processing_class: PreTrainedTokenizerBase,
        *,
        align: AlignConfig,
        align_pairs: Pairs | Iterable[Mapping[str, str]],
        align_eval_pairs: Pairs | Iterable[Mapping[str, str]] | None = None,
        align_max_length: int = 128,
        **kwargs: Any,
    ) -> AlignmentTrainer:
        """The alignment loss added to your own ``Trainer`` training: your ``model`` (with its
        LoRA adapter), ``args`` and tokenised task data, plus the ``align`` section of a
        ``midalign train`` config and translation pairs (:func:`midalign.data.pairs.as_pairs`).

        ``kwargs`` are the ``Trainer``'s: ``train_dataset`` rows hold ``input_ids`` and
        ``labels`` (-100 where no loss), padded by default by ``DataCollatorForSeq2Seq``;
        ``eval_dataset`` adds the dev task loss to evaluations, ``align_eval_pairs`` the dev
        alignment loss and top-1 accuracy (``eval_align_loss``, ``eval_align_acc``). As with
        :class:`midalign.trl.AlignmentSFTTrainer`: ``args.gradient_accumulation_steps`` counts
        task micro-batches (under ``alternate`` each brings one alignment micro-batch), the
        schedules are ``alternate``, ``joint`` and ``task``, the stream's seed is ``args.seed``,
        and ``layers: auto`` and ``stats: base`` measure ``model`` with its adapter disabled.
        """
        check_pairs_trainer(align, "AlignmentTrainer.from_pairs")
        setup = pairs_setup(
            align,
            model,
            processing_class,
            as_pairs(align_pairs),
            as_pairs(align_eval_pairs) if align_eval_pairs is not None else {},
            args,
            align_max_length,
        )
        has_task_dev = kwargs.get("eval_dataset") is not None
        if not has_task_dev and setup.dev_batches:  # evaluations measure the alignment only
            kwargs["eval_dataset"] = setup.dev_batches
        kwargs.setdefault(
            "data_collator",
            DataCollatorForSeq2Seq(processing_class, padding=True, label_pad_token_id=-100),
        )
        return cls(
            model=model,
            args=args,
            processing_class=processing_class,
            schedule=align.schedule,
            align=setup,
            align_tokenizer=processing_class,
            has_task_dev=has_task_dev,
            **kwargs,
        )

    def task_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal-LM cross-entropy over the response tokens of this micro-batch (mean), with
        logits only at those tokens (:func:`midalign.forward.response_loss`), under the run's
        mixed precision (:meth:`autocast`; the cross-entropy in float32)."""
        with self.autocast():
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            return response_loss(model, ids, mask, labels)

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
        (:func:`midalign.config_checks.no_learning`). ``validate`` refuses that when --max-steps is
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
