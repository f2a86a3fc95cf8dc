"""The Trainer's data for the ``alternate-steps`` schedule: whole optimizer steps per objective.

The Trainer counts epochs, optimizer steps, the last (shorter) step of an epoch and the batches
to skip on resume from the length and order of its data loader. So the alternation is written
into that loader: its sampler yields, per epoch, one alignment step's worth of marker indices,
then one task step's worth of task indices, and so on, ending with the epoch's last task step::

    [A·G] [T·G] [A·G] [T·G] … [A·G] [T·r]        (per process; r ≤ G task batches)

A marker batch carries no data (``ALIGN_STEP``): the training step draws the next alignment
micro-batch from the stream, as the other schedules do. Every task batch of an epoch is used
once; an epoch takes 2·⌈n / G⌉ optimizer steps for n task batches. With W processes the loader
deals batches to ranks in turn, so the groups hold W·G batches, and the epoch's task indices are
padded (cycling from its first ones, as accelerate does to even out batches) to full batches
for every rank: accelerate's own padding would take marker indices from the epoch's start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

ALIGN_STEP = "midalign_align_step"  # the key of a marker batch


class StepsDataset(Dataset):
    """The task examples, and one index past their end (``len(task)``) that stands for an
    alignment micro-batch. Its length is the task's, which the Trainer reports as the number
    of examples."""

    def __init__(self, task: Dataset) -> None:
        self.task = task

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, i: int) -> Any:
        return {ALIGN_STEP: True} if i == len(self.task) else self.task[i]


def collate_steps(collate: Callable[[list], Any]) -> Callable[[list], Any]:
    """``collate`` for task examples; a batch of markers becomes ``{ALIGN_STEP: tensor(1)}``."""

    def collate_fn(items: list) -> Any:
        if isinstance(items[0], dict) and ALIGN_STEP in items[0]:
            return {ALIGN_STEP: torch.ones(1)}
        return collate(items)

    return collate_fn


class AlternatingSteps(Sampler[int]):
    """Indices of a :class:`StepsDataset`: the task sampler's order, in groups of one optimizer
    step each, every task group preceded by an alignment group (module docstring)."""

    def __init__(
        self,
        task_sampler: Sampler[int],
        n_task: int,
        batch_size: int,
        accumulation: int,
        world: int = 1,
    ) -> None:
        self.task_sampler = task_sampler
        self.marker = n_task
        self.batch_size = batch_size
        self.world = world
        self.group = world * accumulation * batch_size  # indices per optimizer step, all ranks

    # accelerate seeds and synchronises the task sampler's generator through its wrapper
    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.task_sampler, "generator", None)

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        self.task_sampler.generator = value

    def set_epoch(self, epoch: int) -> None:
        """The Trainer's epoch, passed on to a task sampler that orders by it."""
        if hasattr(self.task_sampler, "set_epoch"):
            self.task_sampler.set_epoch(epoch)

    def _task_length(self) -> int:
        n = len(self.task_sampler)
        if self.world == 1:
            return n
        full = self.world * self.batch_size
        return math.ceil(n / full) * full

    def __len__(self) -> int:
        n = self._task_length()
        return n + math.ceil(n / self.group) * self.group

    def __iter__(self) -> Iterator[int]:
        task = list(self.task_sampler)
        while len(task) < self._task_length():
            task += task[: self._task_length() - len(task)]
        for start in range(0, len(task), self.group):
            yield from [self.marker] * self.group
            yield from task[start : start + self.group]
