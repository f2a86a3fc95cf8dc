"""Settings of a `midalign train` config that cannot work, refused before any model is loaded.

An error names the option that set the value, or in a recipe the field's path.
:func:`validate` checks a whole :class:`midalign.config.TrainConfig` (``midalign train``, a
recipe's train step): each section's own rules (:func:`midalign.sections.check`), then the
rules across sections. :func:`no_learning` also serves the trainer, once the step count of an
epoch-bounded run is known.
"""

from __future__ import annotations

import math

from midalign.config import TrainConfig, option_names
from midalign.errors import InputError
from midalign.sections import check


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


def validate(config: TrainConfig, where: str | None = None) -> None:
    """Reject values that cannot work before any model is loaded, naming the option; with
    ``where`` (a recipe's ``recipe.yaml: system NAME``), naming the field by its path in the
    recipe instead: ``recipe.yaml: system NAME: train.align.temperature must be positive``.
    Each section's own rules first (:func:`midalign.sections.check`), then the machine's
    (float16 weights on a CPU), then those across sections."""
    import torch

    options = option_names()

    def name(key: str) -> str:
        return options[key][0] if where is None else f"train.{key}"

    def error(message: str) -> InputError:
        return InputError(message if where is None else f"{where}: {message}")

    check(config, name, error)
    if config.model.dtype == "float16" and not torch.cuda.is_available():  # the CPU trains
        raise error(
            f"{name('model.dtype')} float16 is refused on a CPU (no CUDA device here): its "
            "activations overflow to NaN before any update (Gemma 3 270M's loss is NaN at the "
            "first step); use float32 (the default) or bfloat16"
        )
    a, o, d = config.align, config.optim, config.data
    if a.schedule != "align" and not d.task_data:
        raise error(f"{name('data.task_data')} is required by the {a.schedule} schedule")
    if a.schedule != "task":
        if not d.align_data:
            raise error(f"{name('data.align_data')} is required by the {a.schedule} schedule")
        if not d.align_langs:
            raise error(f"{name('data.align_langs')}: give at least one language")
    if a.schedule == "align" and o.max_steps <= 0:
        raise error(f"{name('optim.max_steps')} must be given (> 0) for the align schedule")
    if a.schedule == "align" and d.dev_data:
        raise error(
            f"{name('data.dev_data')}: the align schedule trains no task, so it has no dev task "
            f"loss; its evaluations use held-out alignment pairs ({name('data.align_dev_pairs')})"
            ": leave the dev data out"
        )
    if o.metric_for_best_model == "task_loss" and a.schedule == "align":
        raise error(
            f"{name('optim.metric_for_best_model')} task_loss: the align schedule has no task"
        )
    if o.metric_for_best_model == "align_loss" and a.schedule == "task":
        raise error(
            f"{name('optim.metric_for_best_model')} align_loss: the task schedule has no alignment"
        )
