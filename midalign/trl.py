"""Middle-layer alignment in TRL's ``SFTTrainer`` (``pip install 'midalign[trl]'``).

:class:`AlignmentSFTTrainer` is ``SFTTrainer`` with
:class:`midalign.training.alignment.AlignmentMixin`: the same schedules, alignment loss, stream of
pairs and logging as ``midalign train``, set by the same ``align`` section
(:class:`midalign.training.config.AlignConfig`, checked by :func:`midalign.sections.check`). What
differs is the trainer around them:

- The task loss is ``SFTTrainer``'s own (its fused LM head, ``loss_type``, completion-only and
  assistant-only labels, its entropy and token-accuracy metrics), taken as a mean over each
  micro-batch's own tokens, as ``midalign train`` takes it (``SFTTrainer`` alone divides by the
  tokens of the whole optimizer step).
- ``gradient_accumulation_steps`` of the ``SFTConfig`` counts task micro-batches, as it does
  everywhere in midalign: under ``alternate`` each brings one alignment micro-batch, so one
  optimizer step sees 2·G micro-batches, as a ``midalign train`` run with the same G.
- Schedules ``alternate``, ``joint`` and ``task``. ``alternate-steps`` and ``align`` write the
  alternation into the Trainer's data loader, which ``SFTTrainer`` builds its own way: use
  ``midalign train`` for them.
- The stream's seed is ``args.seed``; the pair data's ``max_length`` is ``align_max_length``.
- ``layers: auto`` and ``stats: base`` measure the model with its adapter disabled: the base
  model, as ``midalign train`` measures it before attaching LoRA.
- A checkpoint holds the stream position (``align_stream.json``), and a resumed run goes on
  from it.

:func:`sft_config` is ``SFTConfig`` with bf16 mixed precision only where the hardware has it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from midalign.data.pairs import Pairs
from midalign.files import write_json
from midalign.modeling.dtypes import resolve_bf16
from midalign.training.align_setup import check_pairs_trainer, pairs_setup
from midalign.training.alignment import STREAM_FILE, AlignmentMixin
from midalign.training.config import AlignConfig


def sft_config(*, bf16: str | bool = "auto", **kwargs: Any) -> SFTConfig:
    """TRL's ``SFTConfig`` with ``bf16`` resolved as ``midalign train`` resolves ``optim.bf16``
    (:func:`midalign.modeling.dtypes.resolve_bf16`): ``auto`` is bf16 mixed precision where bf16
    matmuls are native (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16) and float32 elsewhere.
    TRL's own default, ``True``, stops with an error on a machine without a GPU, and on a CPU
    without native bf16 it would be emulated, many times slower than float32. On a CPU with bf16 on,
    ``use_cpu`` is set too (transformers asks for it before it autocasts on a CPU). Every other
    argument is ``SFTConfig``'s."""
    on, _ = resolve_bf16(bf16)
    if on and not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    return SFTConfig(bf16=on, **kwargs)


class AlignmentSFTTrainer(AlignmentMixin, SFTTrainer):
    """``SFTTrainer`` whose step adds middle-layer alignment (module docstring), built as
    :class:`midalign.training.trainer.AlignmentTrainer` is.

    ``align``: the ``align`` section of a ``midalign train`` config. ``align_pairs``: the
    translation pairs (:func:`midalign.data.pairs.as_pairs`); ``align_eval_pairs``: held-out
    pairs whose alignment loss and in-batch top-1 accuracy every evaluation adds
    (``eval_align_loss``, ``eval_align_acc``). Every other argument is ``SFTTrainer``'s.
    """

    def __init__(
        self,
        *args: Any,
        align: AlignConfig | None = None,
        align_pairs: Pairs | Iterable[Mapping[str, str]] | None = None,
        align_eval_pairs: Pairs | Iterable[Mapping[str, str]] | None = None,
        align_max_length: int = 128,
        **kwargs: Any,
    ) -> None:
        if align is not None:
            check_pairs_trainer(align, "SFTTrainer", align_pairs is not None)
        super().__init__(*args, **kwargs)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        setup = None
        if align is not None and align.schedule != "task":
            setup = pairs_setup(
                align,
                self.model,
                tokenizer,
                align_pairs,
                align_eval_pairs,
                self.args,
                align_max_length,
            )
        schedule = align.schedule if align is not None else "task"
        self.init_alignment(schedule, setup, tokenizer, has_task_dev=True)

    def task_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``SFTTrainer``'s loss of one micro-batch, a mean over its own tokens (no
        ``num_items_in_batch``), under the run's mixed precision (:meth:`autocast`: the model's
        own forward has it, but not under several processes, whose engine's forward the
        mixin swaps)."""
        with self.autocast():
            return self.compute_loss(model, dict(inputs))

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.maybe_activation_offload_context:  # as SFTTrainer's own step
            return super().training_step(*args, **kwargs)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """``SFTTrainer``'s checkpoint and the alignment stream position."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = Path(self._get_output_dir(trial)) / name
            write_json(folder / STREAM_FILE, self.stream_state())

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; a resumed run draws the alignment micro-batches from where the
        checkpoint left the stream."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint and (Path(checkpoint) / STREAM_FILE).is_file():
            self.restore_stream(json.loads((Path(checkpoint) / STREAM_FILE).read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
