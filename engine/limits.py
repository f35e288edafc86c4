"""The allowed values of every numeric setting the engine takes, in one table.

The engine checks its arguments against ``LIMITS`` and the runner's config validation reads the
same table, so a range is written down once: ``LIMITS["momentum"]`` is what ``Momentum`` accepts
and what ``optimizer.momentum`` may be set to.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """Numbers from ``low`` to ``high``; an end is excluded when ``*_open`` is set (an infinite
    end always is). ``integer`` allows whole numbers only."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def allows(self, value: object) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
        above = number > self.low if self.low_open else number >= self.low
        below = number < self.high if self.high_open or math.isinf(self.high) else number <= self.high
        return above and below

    def describe(self) -> str:
        """What is allowed, in words: ``it must lie in [0.0, 1.0)``, ``it must be an integer >= 1``."""
        if math.isinf(self.high):
            if self.integer:
                return f"it must be an integer >= {int(self.low) + (1 if self.low_open else 0)}"
            if self.low_open and self.low == 0:
                return "it must be a finite number > 0"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or math.isinf(self.high) else "]"
        return f"it must lie in {left}{float(self.low)}, {float(self.high)}{right}"


POSITIVE = Limit(0.0, low_open=True)
NON_NEGATIVE = Limit(0.0)
COUNT = Limit(1, integer=True)
FRACTION = Limit(0.0, 1.0, high_open=True)

LIMITS: dict[str, Limit] = {
    "lr": POSITIVE,
    "momentum": FRACTION,
    "beta1": FRACTION,
    "beta2": FRACTION,
    "eps": POSITIVE,
    "init_std": POSITIVE,
    "schedule.step_size": COUNT,
    # gamma = 0 would zero the learning rate after the first step: nothing would train.
    "schedule.gamma": Limit(0.0, 1.0, low_open=True),
    "schedule.min_lr": NON_NEGATIVE,
    "epochs": COUNT,
    "batch_size": COUNT,
    "early_stopping.patience": COUNT,
    "early_stopping.min_delta": NON_NEGATIVE,
    "saturation_patience": Limit(0, integer=True),
    "divergence_factor": Limit(0.0),
}


def check_limit(argument: str, value: object, name: str | None = None) -> None:
    """Raise ValueError unless ``value`` is allowed by ``LIMITS[name or argument]``; the message
    names ``argument``, the value and what is allowed."""
    limit = LIMITS[name or argument]
    if not limit.allows(value):
        raise ValueError(f"{argument}={value!r} is not allowed: {limit.describe()}")
