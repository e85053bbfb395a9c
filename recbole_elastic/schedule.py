"""Learning-rate warmup and decay for any RecBole model trained through the plugin's trainers.

Two config keys, both off by default (RecBole's constant ``learning_rate``, no scheduler at all):

* ``warmup_steps`` (int >= 0): optimizer steps over which the learning rate rises linearly from 0;
* ``lr_schedule`` (``constant``, ``linear`` or ``cosine``): after the warmup, keep the learning rate, or decay it
  linearly or along a half cosine to 0 at the end of the run, ``epochs * batches per epoch`` optimizer steps.

Optimizer step ``t`` (0-based, counted over the whole run) uses ``learning_rate * lr_factor(t)``, with ``W`` =
``warmup_steps`` and ``T`` the run's total steps (the convention of Hugging Face's schedules):

* ``t < W``: ``t / W``;
* then ``constant``: 1; ``linear``: ``max(0, (T - t) / max(1, T - W))``; ``cosine``:
  ``(1 + cos(pi * p)) / 2`` with ``p = min(1, (t - W) / max(1, T - W))``.

Each of the trainer's torch optimizers (RecBole's, and :class:`~recbole_elastic.optim.LazyAdam` for the interest
memory's sparse values) gets a ``torch.optim.lr_scheduler.LambdaLR`` with that factor, stepped by a step post-hook
on the same optimizer: one schedule step per optimizer step, whoever calls ``step`` (RecBole's loop, its
``GradScaler``, a DDP rank). A resumed run starts the schedule at ``start_epoch * batches per epoch``: the steps
its checkpoint's epochs took.
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.hooks import RemovableHandle

from recbole_elastic.errors import ConfigError
from recbole_elastic.optim import OptimizerLike, SparseAwareOptimizer

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LearningRateSchedule:
    """The learning-rate factor of each optimizer step; see the module docstring."""

    warmup_steps: int = 0
    decay: str = "constant"

    @property
    def is_constant(self) -> bool:
        """True for RecBole's behaviour: no warmup, no decay (no scheduler is built)."""
        return self.warmup_steps == 0 and self.decay == "constant"

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The multiplier of the learning rate at 0-based optimizer ``step`` of a run of ``total_steps``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        decay_steps = max(1, total_steps - self.warmup_steps)
        if self.decay == "linear":
            return max(0.0, (total_steps - step) / decay_steps)
        if self.decay == "cosine":
            progress = min(1.0, (step - self.warmup_steps) / decay_steps)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def learning_rate_schedule(config) -> LearningRateSchedule:
    """The schedule ``config`` asks for (absent keys: the defaults); :class:`ConfigError` for a bad value."""
    # A RecBole Config answers None for a key it lacks; a plain dict (a config being assembled) has no entry.
    warmup_steps = config["warmup_steps"] if "warmup_steps" in config else None
    decay = config["lr_schedule"] if "lr_schedule" in config else None
    warmup_steps = 0 if warmup_steps is None else warmup_steps
    decay = "constant" if decay is None else decay
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ConfigError(
            f"warmup_steps = {warmup_steps!r} is invalid: it must be an integer >= 0 (optimizer steps of linear "
            "warmup; 0 for none). Set it in your config file or on the command line (--warmup_steps=...)."
        )
    if decay not in LR_SCHEDULES:
        raise ConfigError(
            f"lr_schedule = {decay!r} is invalid: it must be one of {list(LR_SCHEDULES)}. Set it in your config "
            "file or on the command line (--lr_schedule=...)."
        )
    return LearningRateSchedule(warmup_steps, decay)


def torch_optimizers(optimizer: OptimizerLike) -> List[torch.optim.Optimizer]:
    """The torch optimizers a trainer's optimizer steps: itself, or a :class:`SparseAwareOptimizer`'s two."""
    if isinstance(optimizer, SparseAwareOptimizer):
        return [optimizer.dense, optimizer.sparse]
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    raise TypeError(f"A learning-rate schedule needs a torch optimizer, not {type(optimizer).__name__}")


def attach_schedule(
    optimizer: OptimizerLike, schedule: LearningRateSchedule, total_steps: int, first_step: int = 0
) -> List[RemovableHandle]:
    """Make every optimizer step of ``optimizer`` follow ``schedule`` from step ``first_step`` on.

    Sets the learning rate of the next step (``first_step``) now, and after each step the one of the step after;
    each param group's base rate is its ``initial_lr`` (set by the first schedule, kept in checkpoints), else its
    ``lr``. Returns the hooks' handles: removing them stops the schedule (the rates stay where they are).
    """
    handles = []
    for torch_optimizer in torch_optimizers(optimizer):
        scheduler = LambdaLR(torch_optimizer, lambda step: schedule.lr_factor(first_step + step, total_steps))
        handles.append(torch_optimizer.register_step_post_hook(lambda *_, scheduler=scheduler: scheduler.step()))
    return handles
