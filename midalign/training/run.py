"""One `midalign train` run: LoRA fine-tuning with middle-layer contrastive alignment.

:func:`train` wires the parts in the order the numbers depend on: the task data, the alignment
pairs and everything measured on the base model (the auto layer, the base statistics), LoRA,
the Trainer's arguments, the per-process alignment stream, the Trainer
(:class:`midalign.training.trainer.AlignmentTrainer`) with its callbacks
(:mod:`midalign.training.callbacks`), training or resuming, and the run's outputs: the best adapter,
log.jsonl's plot and the model card. The method is docs/design.md §2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
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
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from midalign.data.instructions import TaskDataset, load_task_dataset, read_instructions
from midalign.data.pairs import AlignBatches
from midalign.data.steps import StepsDataset, collate_steps
from midalign.errors import InputError
from midalign.files import follow_umask
from midalign.modeling.compiled import compiled_layers
from midalign.modeling.dtypes import DTYPES, resolve_bf16
from midalign.modeling.loading import load_model, peft_quietly
from midalign.training.align_setup import AlignSetup, distribute_alignment, prepare_alignment
from midalign.training.alignment import STREAM_FILE
from midalign.training.callbacks import (
    LOG_FILE,
    TENSORBOARD,
    JsonlLog,
    PrintLog,
    ProgressLog,
    StopOnSignal,
    read_log,
    tensorboard_log,
    truncate_log,
)
from midalign.training.checkpoints import CHECKPOINTS, TRAINER_STATE, best_absolute
from midalign.training.config import TrainConfig
from midalign.training.model_card import training_card, write_card
from midalign.training.trainer import AlignmentTrainer

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class TrainResult:
    """What a run did; ``midalign train`` writes it (without the log) as train_result.json."""

    interrupted: bool
    global_step: int
    best_checkpoint: str | None  # relative to the run folder: checkpoints/checkpoint-N
    best_metric: float | None
    align_layers: list[int]
    auto_layer_retrieval: dict[str, float] | None
    train_examples: int
    align_pairs: dict[str, int]
    log_history: list[dict[str, Any]]
    bf16: bool = False  # bf16 mixed precision, as optim.bf16 resolved on this machine
    bf16_reason: str = ""
    # what the run saw: optimizer steps, task examples, alignment pairs; and what the adapter
    # it leaves saw (the best checkpoint's, when that is not the last)
    budget: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)  # midalign.modeling.compiled.Compiled


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
    model, tokenizer = load_model(c.model.name, dtype=c.model.dtype)
    tokenizer.padding_side = "right"
    task_set, dev_set = load_task_data(c, tokenizer)
    align, pair_counts, auto_retrieval = prepare_alignment(c, model, tokenizer, resume_from)
    model = attach_lora(c, model)
    bf16, bf16_reason = resolve_bf16(c.optim.bf16, DTYPES[c.model.dtype])
    log.info(
        "bf16 mixed precision %s (optim.bf16 %s: %s)",
        "on" if bf16 else "off",
        c.optim.bf16,
        bf16_reason,
    )
    args = training_arguments(c, out, dev_set, align, progress, bf16)
    checkpoint_files = distribute_alignment(c, align, args, out)
    stopper = StopOnSignal()
    trainer = make_trainer(
        c,
        model,
        tokenizer,
        args,
        task_set,
        dev_set,
        align,
        checkpoint_files,
        run_callbacks(c, out, args, has_eval(dev_set, align), callbacks, stopper),
        progress,
    )
    with compiled_layers(model, c.model.compile, train=True, autocast=trainer.autocast) as how:
        interrupted = fit(trainer, stopper, resume_from, out)
    layers = align.layers if align is not None else []
    examples = len(task_set) if c.align.schedule != "align" else 0
    if not interrupted and args.should_save:
        save_outputs(c, trainer, out, layers, pair_counts, examples)
    return TrainResult(
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
        train_examples=examples,
        align_pairs=pair_counts,
        log_history=trainer.state.log_history,
        bf16=bf16,
        bf16_reason=bf16_reason,
        budget=budget(trainer, out),
        compile=how.as_dict(),
    )


def budget(trainer: AlignmentTrainer, out: Path) -> dict[str, Any]:
    """The optimizer steps, task examples and alignment pairs a run saw, and those its adapter
    saw: the best checkpoint's (its stream file) when the run keeps the best, else the run's."""
    steps = trainer.state.global_step
    found: dict[str, Any] = {"optimizer_steps": steps, **trainer.seen}
    best = trainer.state.best_model_checkpoint
    adapter = dict(found)
    saved_at = out / CHECKPOINTS / Path(best).name / STREAM_FILE if best else None
    if saved_at is not None and Path(best).name != f"checkpoint-{steps}" and saved_at.is_file():
        saved = json.loads(saved_at.read_text())
        adapter = {
            "optimizer_steps": int(Path(best).name.split("-")[-1]),
            **{k: saved.get(k) for k in trainer.seen},
        }
    found["adapter"] = adapter
    return found


def load_task_data(
    c: TrainConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[TaskDataset | None, TaskDataset | None]:
    """The task examples and the dev examples, tokenised. The ``align`` schedule trains on
    pairs alone, so it reads no task data; dev data is optional under every schedule."""
    task_set = dev_set = None
    if c.align.schedule != "align":
        task_set = load_task_dataset(c.data.task_data, tokenizer, c.data.max_length)
    if c.data.dev_data:
        dev_set = load_task_dataset(c.data.dev_data, tokenizer, c.data.max_length)
    return task_set, dev_set


def attach_lora(c: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The model with fresh LoRA weights, initialised under the run's seed: a run and its
    repetition start from the same adapter."""
    from peft import LoraConfig, get_peft_model

    modules = dict(model.named_modules())
    for target in c.lora.target_modules:  # PEFT skips a name that matches nothing
        if not any(n == target or n.endswith(f".{target}") for n in modules):
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
            )
            raise InputError(
                f"lora.target_modules: {target!r} names no module of {type(model).__name__} "
                f"(its linear layers: {', '.join(linear)})"
            )
    set_seed(c.optim.seed)
    with peft_quietly():
        return get_peft_model(
            model,
            LoraConfig(
                r=c.lora.r,
                lora_alpha=c.lora.alpha,
                lora_dropout=c.lora.dropout,
                target_modules=c.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )


def has_eval(dev_set: TaskDataset | None, align: AlignSetup | None) -> bool:
    """Whether the run evaluates (and keeps its best checkpoint): it has dev task data or
    held-out alignment pairs."""
    return dev_set is not None or (align is not None and bool(align.dev_batches))


def training_arguments(
    c: TrainConfig,
    out: Path,
    dev_set: TaskDataset | None,
    align: AlignSetup | None,
    progress: bool,
    bf16: bool = False,
) -> TrainingArguments:
    """The Trainer's arguments for this config, in bf16 mixed precision if ``bf16`` (the
    resolved ``optim.bf16``). The ``align`` schedule's "dataset" is its micro-batches (batch
    size 1, one epoch); the Trainer accumulates ``optim.gradient_accumulation_steps`` of
    them a step, as it accumulates task micro-batches in every other schedule; the best
    checkpoint is judged by the dev loss there is (``metric_for_best_model: auto``)."""
    schedule = c.align.schedule
    evals = has_eval(dev_set, align)
    metric = c.optim.metric_for_best_model
    if metric == "auto":
        metric = "align_loss" if schedule == "align" or dev_set is None else "task_loss"
    if evals and metric == "task_loss" and dev_set is None:
        raise InputError("--metric-for-best-model task_loss needs --dev-data")
    if evals and metric == "align_loss" and (align is None or not align.dev_batches):
        raise InputError("--metric-for-best-model align_loss needs held-out alignment pairs")
    return TrainingArguments(
        # absolute: the Trainer keeps this path in its state (the best checkpoint's)
        output_dir=str(out.absolute() / CHECKPOINTS),
        per_device_train_batch_size=1 if schedule == "align" else c.optim.batch_size,
        per_device_eval_batch_size=c.optim.batch_size,
        gradient_accumulation_steps=c.optim.gradient_accumulation_steps,
        num_train_epochs=1 if schedule == "align" else c.optim.epochs,
        max_steps=c.optim.max_steps,
        learning_rate=c.optim.learning_rate,
        lr_scheduler_type=c.optim.lr_scheduler,
        warmup_steps=c.optim.warmup_ratio,
        weight_decay=c.optim.weight_decay,
        max_grad_norm=c.optim.max_grad_norm,
        logging_steps=c.optim.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evals else "no",
        eval_steps=c.optim.eval_steps,
        save_strategy="steps",
        save_steps=c.optim.save_steps,
        load_best_model_at_end=evals,
        metric_for_best_model=metric if evals else None,
        greater_is_better=False if evals else None,
        seed=c.optim.seed,
        # tensorboard is ours to set up (run_callbacks): transformers would write into checkpoints/
        report_to=[r for r in c.optim.report_to if r != "tensorboard"] or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,
        train_sampling_strategy="sequential" if schedule == "align" else "group_by_length",
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        # autocast around the task and alignment forwards (AlignmentMixin.autocast), on a CPU
        # too (transformers wants use_cpu for that)
        bf16=bf16,
        # DDP: an alignment forward stops at the alignment layer, so the LoRA weights above it
        # get no gradient. Under `alternate` and `joint` the syncing backward is a task one,
        # which reaches every weight; under `align` and in the alignment steps of
        # `alternate-steps` it is not, and DDP must look for the unused weights (a graph walk
        # per forward) or it waits for their gradients forever.
        ddp_find_unused_parameters=schedule in ("align", "alternate-steps"),
    )


def run_callbacks(
    c: TrainConfig,
    out: Path,
    args: TrainingArguments,
    evals: bool,
    extra: Sequence[TrainerCallback],
    stopper: StopOnSignal,
) -> list[TrainerCallback]:
    """log.jsonl, the caller's callbacks, the signal stop, then what the config asks for:
    TensorBoard (written by the main process only) and early stopping (which needs a dev
    metric)."""
    found: list[TrainerCallback] = [JsonlLog(out / LOG_FILE), *extra, stopper]
    if "tensorboard" in c.optim.report_to and args.process_index == 0:
        found.append(tensorboard_log(out / TENSORBOARD))
    if evals and c.optim.early_stopping_patience > 0:
        found.append(EarlyStoppingCallback(c.optim.early_stopping_patience))
    return found


def make_trainer(
    c: TrainConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    args: TrainingArguments,
    task_set: TaskDataset | None,
    dev_set: TaskDataset | None,
    align: AlignSetup | None,
    checkpoint_files: list[Path],
    callbacks: list[TrainerCallback],
    progress: bool,
) -> AlignmentTrainer:
    """The Trainer, fed what its schedule draws from its data loader: padded task batches;
    under ``align`` the alignment stream's micro-batches, one per "example"; under
    ``alternate-steps`` task batches with the alignment steps' markers between them. Its
    log events print as lines of :func:`midalign.training.callbacks.log_line`."""
    schedule = c.align.schedule
    evals = has_eval(dev_set, align)
    train_set = task_set
    if schedule == "align":
        ga = c.optim.gradient_accumulation_steps
        train_set = AlignBatches(
            align.stream, c.optim.max_steps * ga, tokenizer, c.data.align_max_length
        )
    collator = (
        (lambda items: items[0])
        if schedule == "align"
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    if schedule == "alternate-steps":
        train_set, collator = StepsDataset(task_set), collate_steps(collator)
    trainer = AlignmentTrainer.for_run(
        align,
        schedule,
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev_set if dev_set is not None else (align.dev_batches if evals else None),
        data_collator=collator,
        callbacks=callbacks,
        align_tokenizer=tokenizer,
        has_task_dev=dev_set is not None,
        keep_checkpoints=c.optim.keep_checkpoints,
        checkpoint_files=checkpoint_files,
        seeded_order=c.optim.data_order == "seeded",
    )
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)
    trainer.add_callback(ProgressLog() if progress else PrintLog())
    return trainer


def fit(
    trainer: AlignmentTrainer, stopper: StopOnSignal, resume_from: Path | None, out: Path
) -> bool:
    """Train, or go on from the checkpoint ``resume_from``: at its alignment stream position,
    with its best checkpoint found in this run folder wherever the run was before, and
    log.jsonl cut back to its step (the steps after it are redone). Returns whether a signal
    stopped the run (its checkpoint saved)."""
    args = trainer.args
    if resume_from is not None:
        trainer.restore_stream(json.loads((resume_from / STREAM_FILE).read_text()))
        with args.main_process_first(desc="resolving the best checkpoint"):
            best_absolute(resume_from, out)
        if args.should_save:
            truncate_log(out / LOG_FILE, int(resume_from.name.split("-")[-1]))
        # Killed after saving its last step but before its adapter: the Trainer, resumed there,
        # would train one step more than asked (its loop tests the limit only after a step). A
        # run by epochs resumes at an epoch boundary, which it does not re-enter.
        state = TrainerState.load_from_json(str(resume_from / TRAINER_STATE))
        if 0 < args.max_steps <= state.global_step:
            restore_finished(trainer, resume_from, state)
            return False
    stopper.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    return stopper.received is not None


def restore_finished(trainer: AlignmentTrainer, checkpoint: Path, state: TrainerState) -> None:
    """The end of training as ``trainer.train`` leaves it, from the run's last checkpoint: its
    ``state``, its adapter weights, or the best checkpoint's where the run keeps the best."""
    trainer.state = state
    trainer._load_from_checkpoint(str(checkpoint))  # the Trainer's own loader
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        trainer._load_best_model()
    log.info(
        "%s is the run's last step (%d): nothing left to train",
        checkpoint.name,
        trainer.state.global_step,
    )


def save_outputs(
    c: TrainConfig,
    trainer: AlignmentTrainer,
    out: Path,
    layers: list[int],
    pair_counts: dict[str, int],
    examples: int,
) -> None:
    """What a finished run leaves besides its checkpoints: the (best) adapter as plain PEFT
    files, the training curves of log.jsonl, and the model card that says how it was made."""
    # matplotlib only now: importing this module must not switch a notebook's backend to Agg
    from midalign.report.plots import plot_training_curves

    save_adapter(trainer.model, out)
    plot_training_curves(read_log(out / LOG_FILE), out / "training_curves.png")
    task_langs = sorted(
        {e.lang for e in read_instructions(Path(c.data.task_data)) if e.lang}
        if c.data.task_data and c.align.schedule != "align"
        else set()
    )
    steps = trainer.state.global_step
    card = training_card(c, layers, task_langs, pair_counts, examples, steps, trainer.args.bf16)
    write_card(out, card)


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
