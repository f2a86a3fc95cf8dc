"""Settings of a `midalign train` config that cannot work, refused before any model is loaded.

An error names the option that set the value, or in a recipe the field's path.
:func:`validate` checks a whole :class:`midalign.training.config.TrainConfig` (``midalign train``, a
recipe's train step): each section's own rules (:func:`midalign.sections.check`), then the
rules across sections.
"""

from __future__ import annotations

from midalign.errors import InputError
from midalign.sections import check
from midalign.training.config import TrainConfig, option_names


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
