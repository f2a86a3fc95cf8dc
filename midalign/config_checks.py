"""Settings of a `midalign train` config that cannot work, refused before any model is loaded.

An error names the option that set the value, or in a recipe the field's path.
:func:`validate` checks a whole :class:`midalign.config.TrainConfig` (``midalign train``, a
recipe's train step); :func:`check_align` the ``align`` section alone, which
:class:`midalign.trl.AlignmentSFTTrainer` uses too; :func:`no_learning` also serves the
trainer, once the step count of an epoch-bounded run is known.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from midalign.config import (
    BF16,
    NORMALIZE,
    SCHEDULES,
    STATS,
    AlignConfig,
    TrainConfig,
    option_names,
)
from midalign.errors import InputError
from midalign.languages import to_flores


def no_learning(lr_scheduler: str, warmup_ratio: float, steps: int) -> bool:
    """Whether the learning rate is 0 at every one of ``steps`` optimizer steps, as the
    Trainer's scheduler gives it. A transformers warm-up starts at 0 (lr at step s, counted
    from 0, is peak · s / warmup), so the first step never moves the weights, and a one-step
    run with any warm-up (⌈1 · ratio⌉ = 1 step) trains nothing: every lora_B stays 0. A longer
    run has lr > 0 from its second step, since ⌈n · ratio⌉ < n. The scheduler is asked rather
    than a list kept of which schedules warm up (constant and reduce_lr_on_plateau do not)."""
    import torch
    from transformers import get_scheduler

    warmup = math.ceil(steps * warmup_ratio)  # TrainingArguments.get_warmup_steps, ratio < 1
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        scheduler = get_scheduler(lr_scheduler, optimizer, warmup, steps)
    except (ValueError, TypeError):  # a schedule that needs options midalign does not pass
        return False
    lambdas = getattr(scheduler, "lr_lambdas", None)
    return lambdas is not None and all(lambdas[0](step) == 0 for step in range(steps))


def no_learning_message(
    lr_scheduler: str, warmup_ratio: float, steps: int, warmup_name: str, steps_name: str
) -> str:
    """The refusal of a run that :func:`no_learning` finds, naming the options to change."""
    return (
        f"{warmup_name} {warmup_ratio:g} over {steps} optimizer step{'s' if steps > 1 else ''} "
        f"({steps_name}): the {lr_scheduler} schedule's learning rate is 0 throughout (its "
        f"warm-up starts at 0), so training would not change the adapter; set {warmup_name} 0 "
        "or train more steps"
    )


def check_align(
    a: AlignConfig,
    name: Callable[[str], str] = lambda key: key,
    error: Callable[[str], Exception] = InputError,
) -> None:
    """Reject ``align`` settings that cannot work, whichever trainer uses them (``midalign
    train``, :class:`midalign.trl.AlignmentSFTTrainer`). ``name`` shows a ``section.field`` key
    as its reader wrote it (an option, a recipe path, or the key itself)."""
    if a.schedule not in SCHEDULES:
        raise error(f"{name('align.schedule')} must be one of {', '.join(SCHEDULES)}")
    if not a.temperature > 0:  # NaN too
        raise error(f"{name('align.temperature')} must be positive, not {a.temperature}")
    if a.pool not in ("mean", "mean-all"):
        raise error(f"{name('align.pool')} must be mean or mean-all, not {a.pool!r}")
    if a.normalize not in NORMALIZE:
        raise error(
            f"{name('align.normalize')} must be one of {', '.join(NORMALIZE)}, not {a.normalize!r}"
        )
    if a.stats not in STATS:
        raise error(f"{name('align.stats')} must be batch or base, not {a.stats!r}")
    if a.stats_pairs < 1:
        raise error(f"{name('align.stats_pairs')} must be positive, not {a.stats_pairs}")
    if a.schedule != "task" and a.batch_pairs < 2:
        raise error(f"{name('align.batch_pairs')} must be at least 2 (in-batch negatives)")
    if not a.weight >= 0:
        raise error(f"{name('align.weight')} must be non-negative, not {a.weight}")


def validate(config: TrainConfig, where: str | None = None) -> None:
    """Reject values that cannot work before any model is loaded, naming the option; with
    ``where`` (a recipe's ``recipe.yaml: system NAME``), naming the field by its path in the
    recipe instead: ``recipe.yaml: system NAME: train.align.temperature must be positive``."""
    options = option_names()

    def name(key: str) -> str:
        return options[key][0] if where is None else f"train.{key}"

    def error(message: str) -> InputError:
        return InputError(message if where is None else f"{where}: {message}")

    a, o, d, lora = config.align, config.optim, config.data, config.lora
    check_align(a, name, error)
    if a.schedule != "align" and not d.task_data:
        raise error(f"{name('data.task_data')} is required by the {a.schedule} schedule")
    if a.schedule != "task":
        if not d.align_data:
            raise error(f"{name('data.align_data')} is required by the {a.schedule} schedule")
        if not d.align_langs:
            raise error(f"{name('data.align_langs')}: give at least one language")
    for lang in d.align_langs:
        try:
            to_flores(lang)
        except InputError as e:
            raise error(f"{name('data.align_langs')}: {e}") from None
    if a.schedule == "align" and o.max_steps <= 0:
        raise error(f"{name('optim.max_steps')} must be given (> 0) for the align schedule")
    if a.schedule == "alternate" and o.gradient_accumulation_steps % 2:
        raise error(
            f"{name('optim.gradient_accumulation_steps')} must be even for the alternate "
            "schedule (half task, half alignment micro-batches), "
            f"not {o.gradient_accumulation_steps}"
        )
    for key, value in (
        ("optim.batch_size", o.batch_size),
        ("optim.gradient_accumulation_steps", o.gradient_accumulation_steps),
        ("optim.eval_steps", o.eval_steps),
        ("optim.save_steps", o.save_steps),
        ("optim.logging_steps", o.logging_steps),
        ("lora.r", lora.r),
        ("data.max_length", d.max_length),
        ("data.align_max_length", d.align_max_length),
    ):
        if value < 1:
            raise error(f"{name(key)} must be positive, not {value}")
    if not o.learning_rate > 0:
        raise error(f"{name('optim.learning_rate')} must be positive")
    if not 0 <= o.warmup_ratio < 1:
        raise error(f"{name('optim.warmup_ratio')} must be in [0, 1)")
    if o.max_steps > 0 and no_learning(o.lr_scheduler, o.warmup_ratio, o.max_steps):
        raise error(
            no_learning_message(
                o.lr_scheduler,
                o.warmup_ratio,
                o.max_steps,
                name("optim.warmup_ratio"),
                f"{name('optim.max_steps')} {o.max_steps}",
            )
        )
    if not 0 <= lora.dropout < 1:
        raise error(f"{name('lora.dropout')} must be in [0, 1)")
    if o.save_steps % o.eval_steps:
        raise error(
            f"{name('optim.save_steps')} ({o.save_steps}) must be a multiple of "
            f"{name('optim.eval_steps')} ({o.eval_steps}): the best checkpoint is chosen at "
            "evaluations"
        )
    if str(o.bf16).lower() not in BF16:
        raise error(f"{name('optim.bf16')} must be auto, true or false, not {o.bf16!r}")
    if o.metric_for_best_model not in ("auto", "task_loss", "align_loss"):
        raise error(f"{name('optim.metric_for_best_model')} must be auto, task_loss or align_loss")
    if o.metric_for_best_model == "task_loss" and a.schedule == "align":
        raise error(
            f"{name('optim.metric_for_best_model')} task_loss: the align schedule has no task"
        )
    if o.metric_for_best_model == "align_loss" and a.schedule == "task":
        raise error(
            f"{name('optim.metric_for_best_model')} align_loss: the task schedule has no alignment"
        )
