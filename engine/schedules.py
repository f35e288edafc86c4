"""Learning-rate schedules, keyed by the names used in configs.

A schedule gives the learning rate of epoch ``e`` (0-based) out of ``total`` epochs from the
optimizer's base rate ``lr``:

- ``constant``: lr
- ``step``: lr * gamma ** floor(e / step_size)
- ``exponential``: lr * gamma ** e
- ``cosine``: min_lr + (lr - min_lr) * (1 + cos(pi * e / total)) / 2

``lr`` may also be a float64 array of several optimizers' base rates (stacked training): each
element goes through the same operations as a float would, so gets the same value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from engine._checks import check_choice
from engine.limits import check_limit

Rate = TypeVar("Rate", float, np.ndarray)
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule; ``lr_at(lr, epoch, total)`` gives the rate for one epoch."""

    name: str = "constant"
    step_size: int = 10
    gamma: float = 0.5
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check_choice("schedule.name", self.name, dict.fromkeys(SCHEDULE_NAMES))
        check_limit("schedule.step_size", self.step_size)
        check_limit("schedule.gamma", self.gamma)
        check_limit("schedule.min_lr", self.min_lr)

    def lr_at(self, lr: Rate, epoch: int, total: int) -> Rate:
        """Learning rate of 0-based ``epoch`` out of ``total`` for base rate ``lr`` (a float, or
        an array of base rates)."""
        if self.name == "step":
            return lr * self.gamma ** (epoch // self.step_size)
        if self.name == "exponential":
            return lr * self.gamma**epoch
        if self.name == "cosine":
            return self.min_lr + (lr - self.min_lr) * (1.0 + math.cos(math.pi * epoch / total)) / 2.0
        return lr
