"""Whether a learning-rate schedule trains at all: the check a `midalign train` config makes
before any model is loaded (:meth:`midalign.training.config.OptimConfig.check`) and the trainer
makes again once the step count of an epoch-bounded run is known."""

from __future__ import annotations

import math


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
