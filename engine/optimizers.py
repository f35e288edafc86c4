"""Gradient-descent optimizers, keyed by the names used in configs.

An optimizer owns the learning rate and its schedule (the network never reads them) and
updates the flat parameter vector ``w`` in place from the flat gradient ``g`` (see
``engine.network``: one vector for all layers). With ``lr`` the scheduled rate:

- ``gd``:       w <- w - lr g
- ``momentum``: v <- mu v - lr g;  w <- w + v
- ``nesterov``: v <- mu v + g;     w <- w - lr (g + mu v)   (the form used by PyTorch's SGD)
- ``adam``:     m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2;
                w <- w - lr m_hat / (sqrt(s_hat) + eps), m_hat = m / (1 - b1^t), s_hat = s / (1 - b2^t)
"""

from __future__ import annotations

import math

import numpy as np

from engine._checks import check_choice
from engine.limits import check_limit
from engine.schedules import Schedule


class Optimizer:
    """Base class: holds the base learning rate, its schedule and the rate of the current epoch."""

    def __init__(self, lr: float, schedule: Schedule | None = None) -> None:
        check_limit("lr", lr)
        self.base_lr = float(lr)
        self.schedule = schedule or Schedule()
        self.lr = self.base_lr

    def reset(self, n_params: int, dtype: np.dtype) -> None:
        """Allocate zeroed state for ``n_params`` parameters (called once before training)."""
        self._buffer = np.zeros(n_params, dtype)

    def start_epoch(self, epoch: int, total: int) -> float:
        """Set and return the learning rate of 0-based ``epoch`` out of ``total``."""
        self.lr = self.schedule.lr_at(self.base_lr, epoch, total)
        return self.lr

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update ``params`` in place from ``grads`` (both flat, same length)."""
        raise NotImplementedError


class GradientDescent(Optimizer):
    """Plain gradient descent: w <- w - lr g."""

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        np.multiply(grads, -self.lr, out=self._buffer)
        params += self._buffer


class Momentum(Optimizer):
    """Classical momentum: v <- mu v - lr g; w <- w + v."""

    def __init__(self, lr: float, momentum: float = 0.9, schedule: Schedule | None = None) -> None:
        super().__init__(lr, schedule)
        check_limit("momentum", momentum)
        self.momentum = float(momentum)

    def reset(self, n_params: int, dtype: np.dtype) -> None:
        super().reset(n_params, dtype)
        self._velocity = np.zeros(n_params, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self._velocity *= self.momentum
        np.multiply(grads, self.lr, out=self._buffer)
        self._velocity -= self._buffer
        params += self._velocity


class Nesterov(Momentum):
    """Nesterov momentum: v <- mu v + g; w <- w - lr (g + mu v)."""

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self._velocity *= self.momentum
        self._velocity += grads
        np.multiply(self._velocity, self.momentum, out=self._buffer)
        self._buffer += grads
        self._buffer *= -self.lr
        params += self._buffer


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``t`` counts updates, not epochs."""

    def __init__(
        self,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__(lr, schedule)
        check_limit("beta1", beta1)
        check_limit("beta2", beta2)
        check_limit("eps", eps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def reset(self, n_params: int, dtype: np.dtype) -> None:
        super().reset(n_params, dtype)
        self._first_moment = np.zeros(n_params, dtype)
        self._second_moment = np.zeros(n_params, dtype)
        self._t = 0

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self._t += 1
        m, s, buffer = self._first_moment, self._second_moment, self._buffer
        m *= self.beta1
        np.multiply(grads, 1.0 - self.beta1, out=buffer)
        m += buffer
        s *= self.beta2
        np.multiply(grads, grads, out=buffer)
        buffer *= 1.0 - self.beta2
        s += buffer
        # m_hat / (sqrt(s_hat) + eps) with both bias corrections folded into scalars, which saves
        # the two passes over the parameters that m_hat and s_hat would take:
        # = m * c2 / c1 / (sqrt(s) + eps * c2), c1 = 1 - b1^t, c2 = sqrt(1 - b2^t) (equal in exact
        # arithmetic; rounded differently).
        correction1 = 1.0 - self.beta1**self._t
        correction2 = math.sqrt(1.0 - self.beta2**self._t)
        np.sqrt(s, out=buffer)
        buffer += self.eps * correction2
        np.divide(m, buffer, out=buffer)
        buffer *= -self.lr * correction2 / correction1
        params += buffer


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "gd": GradientDescent,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
}


def make_optimizer(name: str, lr: float, schedule: Schedule | None = None, **options: float) -> Optimizer:
    """Build optimizer ``name`` with base rate ``lr``; ``options`` are its own keys
    (``momentum`` for momentum/nesterov; ``beta1``, ``beta2``, ``eps`` for adam)."""
    check_choice("optimizer", name, OPTIMIZERS)
    try:
        return OPTIMIZERS[name](lr, schedule=schedule, **options)
    except TypeError as error:
        raise ValueError(f"optimizer={name!r} got an option it does not take: {error}") from None
