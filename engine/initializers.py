"""Weight initializers, keyed by the names used in configs.

Each draws a ``(fan_in, fan_out)`` float64 matrix from the ``np.random.Generator`` it is given
(never the global NumPy RNG); biases start at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine._checks import check_choice
from engine.limits import check_limit

Initializer = Callable[[np.random.Generator, int, int, float], np.ndarray]


def xavier_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, std: float) -> np.ndarray:
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def xavier_normal(rng: np.random.Generator, fan_in: int, fan_out: int, std: float) -> np.ndarray:
    """N(0, s^2) with s = sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def he_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, std: float) -> np.ndarray:
    """U(-l, l) with l = sqrt(6 / fan_in) (He et al. 2015, for ReLU layers)."""
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def he_normal(rng: np.random.Generator, fan_in: int, fan_out: int, std: float) -> np.ndarray:
    """N(0, s^2) with s = sqrt(2 / fan_in)."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def normal(rng: np.random.Generator, fan_in: int, fan_out: int, std: float) -> np.ndarray:
    """N(0, std^2) with the given ``std``."""
    return rng.normal(0.0, std, size=(fan_in, fan_out))


INITIALIZERS: dict[str, Initializer] = {
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "normal": normal,
}


def get_initializer(name: str, std: float = 0.01, argument: str = "init") -> Initializer:
    """Return the initializer for ``name``; raise ValueError listing the valid names."""
    check_choice(argument, name, INITIALIZERS)
    check_limit("init_std", std)
    return INITIALIZERS[name]
