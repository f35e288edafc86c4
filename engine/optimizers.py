"""Gradient-descent optimizers, keyed by the names used in configs.

An optimizer owns the learning rate and its schedule (the network never reads them) and
updates the flat parameter vector ``w`` in place from the flat gradient ``g`` (see
``engine.network``: one vector for all layers). With ``lr`` the scheduled rate:

- ``gd``:       w <- w - lr g
- ``momentum``: v <- mu v - lr g;  w <- w + v
- ``nesterov``: v <- mu v + g;     w <- w - lr (g + mu v)   (the form used by PyTorch's SGD)
- ``adam``:     m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2;
                w <- w - lr m_hat / (sqrt(s_hat) + eps), m_hat = m / (1 - b1^t), s_hat = s / (1 - b2^t)

``StackedOptimizer`` steps the parameters of networks stacked on a leading axis
(``engine.stacked``), each member with its own optimizer's settings, by the same ``step`` code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from engine._checks import check_choice
from engine.limits import check_limit
from engine.schedules import Schedule


class Optimizer:
    """Base class: holds the base learning rate, its schedule and the rate of the current epoch."""

    # The settings besides ``lr`` that ``step`` combines with arrays (stacked: as columns of the
    # members' values), and the state it carries from one update to the next.
    columns: ClassVar[tuple[str, ...]] = ()
    carried: ClassVar[tuple[str, ...]] = ()

    def __init__(self, lr: float, schedule: Schedule | None = None) -> None:
        check_limit("lr", lr)
        self.base_lr = float(lr)
        self.schedule = schedule or Schedule()
        self.lr = self.base_lr

    def reset(self, n_params: int | tuple[int, ...], dtype: np.dtype) -> None:
        """Allocate zeroed state for ``n_params`` parameters (called once before training); a
        shape ``(M, n_params)`` for stacked members."""
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

    columns = ("momentum",)
    carried = ("_velocity",)

    def __init__(self, lr: float, momentum: float = 0.9, schedule: Schedule | None = None) -> None:
        super().__init__(lr, schedule)
        check_limit("momentum", momentum)
        self.momentum = float(momentum)

    def reset(self, n_params: int | tuple[int, ...], dtype: np.dtype) -> None:
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

    columns = ("beta1", "decay1", "beta2", "decay2")
    carried = ("_first_moment", "_second_moment", "_t")

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
        # 1 - b1 and 1 - b2 in float64, rounded to the parameters' type where step uses them.
        self.decay1, self.decay2 = 1.0 - self.beta1, 1.0 - self.beta2

    def reset(self, n_params: int | tuple[int, ...], dtype: np.dtype) -> None:
        super().reset(n_params, dtype)
        self._first_moment = np.zeros(n_params, dtype)
        self._second_moment = np.zeros(n_params, dtype)
        self._t = 0

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        self._t += 1
        m, s, buffer = self._first_moment, self._second_moment, self._buffer
        m *= self.beta1
        np.multiply(grads, self.decay1, out=buffer)
        m += buffer
        s *= self.beta2
        np.multiply(grads, grads, out=buffer)
        buffer *= self.decay2
        s += buffer
        eps_term, scale = self.step_scalars(self.lr, self._t)
        np.sqrt(s, out=buffer)
        buffer += eps_term
        np.divide(m, buffer, out=buffer)
        buffer *= scale
        params += buffer

    def step_scalars(self, lr: Any, t: int) -> tuple[Any, Any]:
        """The two scalars of update ``t`` at rate ``lr``: ``eps * c2`` and ``-lr * c2 / c1``.

        m_hat / (sqrt(s_hat) + eps) with both bias corrections folded into scalars, which saves
        the two passes over the parameters that m_hat and s_hat would take:
        = m * c2 / c1 / (sqrt(s) + eps * c2), c1 = 1 - b1^t, c2 = sqrt(1 - b2^t) (equal in exact
        arithmetic; rounded differently). Floats here; columns for stacked members.
        """
        correction1 = 1.0 - self.beta1**t
        correction2 = math.sqrt(1.0 - self.beta2**t)
        return self.eps * correction2, -lr * correction2 / correction1


class _StackedAdam(Adam):
    """Adam's ``step`` over stacked members, with each member's two step scalars from its own
    ``Adam.step_scalars`` at its own float rate ``member_lrs`` (the powers b^t Python's, as
    alone), as columns in the parameters' dtype. The ``lr`` it is given, the rates already rounded
    to that dtype, is not used."""

    def __init__(self, members: Sequence[Adam], dtype: np.dtype) -> None:
        first = members[0]
        super().__init__(first.base_lr, first.beta1, first.beta2, first.eps, first.schedule)
        self.members, self.dtype = list(members), dtype
        self.member_lrs = [member.base_lr for member in members]

    def step_scalars(self, lr: Any, t: int) -> tuple[np.ndarray, np.ndarray]:
        scalars = [member.step_scalars(rate, t) for member, rate in zip(self.members, self.member_lrs)]
        columns = np.array(scalars, np.float64).astype(self.dtype)
        return columns[:, 0:1], columns[:, 1:2]


class StackedOptimizer:
    """The optimizers of ``M`` stacked members (``engine.stacked``) as one: ``step`` updates
    parameters of shape ``(M, n_params)`` by the members' class's own ``step``, each setting of
    ``columns`` (and the learning rate) an ``(M, 1)`` column of the members' values in the
    parameters' dtype, which is the value each member's step rounds its float to alone.

    The members must be of one class (``optimizers[i]`` in the refusal is ``members[i]``); their
    settings, schedules included, may differ. Their own objects are left as they are: the state
    lives here, and ``select`` carries it over to the members that stay.
    """

    def __init__(self, members: Sequence[Optimizer], n_params: int, dtype: np.dtype) -> None:
        self.members, self.n_params, self.dtype = list(members), n_params, dtype
        first = self.members[0]
        for index, member in enumerate(self.members):
            if not isinstance(member, Optimizer):
                raise ValueError(f"optimizers[{index}]={member!r} is not allowed: it must be an engine Optimizer")
            if type(member) is not type(first):
                raise ValueError(
                    f"optimizers[{index}] is {type(member).__name__} but optimizers[0] is {type(first).__name__}: "
                    "the optimizers of a stack must be of one kind (their settings may differ)"
                )
        adams = [member for member in self.members if isinstance(member, Adam)]
        self.inner: Optimizer = _StackedAdam(adams, dtype) if adams else copy.copy(first)
        for name in first.columns:
            setattr(self.inner, name, self._column([getattr(member, name) for member in self.members]))
        self.inner.reset((len(self.members), n_params), dtype)
        self.base_lrs = np.array([member.base_lr for member in self.members])
        # Members with equal schedules (usually all) get their rates from one call of lr_at.
        groups: dict[Schedule, list[int]] = {}
        for index, member in enumerate(self.members):
            groups.setdefault(member.schedule, []).append(index)
        self.schedules = [(schedule, np.array(indices)) for schedule, indices in groups.items()]

    def _column(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.array(values, np.float64).astype(self.dtype)[:, None]

    def start_epoch(self, epoch: int, total: int) -> np.ndarray:
        """Set and return each member's learning rate of 0-based ``epoch``, shape ``(M,)``."""
        lrs = np.empty(len(self.members))
        for schedule, indices in self.schedules:
            lrs[indices] = schedule.lr_at(self.base_lrs[indices], epoch, total)
        self.inner.lr = self._column(lrs)  # type: ignore[assignment]  # the members' rates as a column
        if isinstance(self.inner, _StackedAdam):
            self.inner.member_lrs = lrs.tolist()
        return lrs

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Update ``params`` ``(M, n_params)`` in place from ``grads`` of that shape."""
        self.inner.step(params, grads)

    def select(self, keep: np.ndarray) -> StackedOptimizer:
        """The optimizer of the members at positions ``keep``, with their state."""
        kept = StackedOptimizer([self.members[index] for index in keep], self.n_params, self.dtype)
        for name in self.inner.carried:
            value = getattr(self.inner, name)
            setattr(kept.inner, name, value[keep] if isinstance(value, np.ndarray) else value)
        return kept


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
