"""`midalign train`: LoRA fine-tuning with middle-layer contrastive alignment on an unmodified
``Trainer`` (SPEC §2).

:class:`AlignmentTrainer` is ``transformers.Trainer`` with :class:`midalign.alignment.
AlignmentMixin`, which holds the schedules (``alternate``, ``alternate-steps``, ``joint``,
``task``, ``align``), the loss scaling and the multi-process rules (see that module). What a
``midalign train`` run adds is here: its task loss (the response tokens' cross-entropy with
logits only at them), checkpoints that carry the alignment stream position and a completion
marker, the refusal of a learning-rate schedule that is 0 throughout, log.jsonl, the plots,
and stopping on a signal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
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
from transformers.trainer_utils import SchedulerType, rotate_checkpoints

from midalign.align_stats import STATS_FILE, base_stats, load_stats, save_stats
from midalign.alignment import (
    STREAM_FILE,
    AlignmentMixin,
    AlignSetup,
    TrainingDiverged,
    align_setup,
)
from midalign.config import TrainConfig, no_learning, no_learning_message
from midalign.data.instructions import load_task_dataset, read_instructions
from midalign.data.pairs import (
    AlignBatches,
    AlignStream,
    Pairs,
    load_pairs,
    split_dev,
)
from midalign.data.steps import StepsDataset, collate_steps
from midalign.errors import InputError
from midalign.files import follow_umask, write_json, write_text_atomic
from midalign.losses import Stats
from midalign.model_card import training_card, write_card
from midalign.models import (
    load_model,
    peft_quietly,
    response_loss,
)
from midalign.probe import special_token_ids

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"  # in a checkpoint: the Trainer's state
COMPLETE_FILE = "midalign_complete"  # written last: a checkpoint without it is ignored
LOG_FILE = "log.jsonl"
TENSORBOARD = "tensorboard"  # event files of report_to tensorboard
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


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
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.init_alignment(schedule, align, align_tokenizer, has_task_dev)
        self.keep_checkpoints = keep_checkpoints  # besides the best; rotated after each save
        self.checkpoint_files = list(checkpoint_files)  # copied into every checkpoint

    def task_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal-LM cross-entropy over the response tokens of this micro-batch (mean), with
        logits only at those tokens (:func:`midalign.models.response_loss`)."""
        return response_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])

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
        align, auto_retrieval = align_setup(
            c.align, model, tokenizer, pairs, dev_pairs, c.optim.seed, c.data.align_max_length
        )
        layers = align.layers
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
