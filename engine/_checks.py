"""Argument checks shared by the engine: every failure is a ValueError that names the
argument, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def check_choice(argument: str, value: object, table: Mapping[str, object]) -> None:
    """Raise unless ``value`` is a key of ``table``."""
    if not isinstance(value, str) or value not in table:
        allowed = ", ".join(sorted(table))
        raise ValueError(f"{argument}={value!r} is not one of: {allowed}")


def as_finite_2d(argument: str, values: object, dtype: np.dtype) -> np.ndarray:
    """Return ``values`` as a C-contiguous 2-D array of ``dtype``; raise on empty or non-finite data.

    A 1-D array is taken as one column, so ``y`` may be given as shape ``(n,)``.
    """
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{argument} must be numeric: {error}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{argument} has shape {array.shape}: it must be 2-D (n_samples, n_columns)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{argument} has shape {array.shape}: it must hold at least one sample and one column")
    finite = np.isfinite(array)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise ValueError(
            f"{argument} holds {array[row, column]} at row {row}, column {column}: all values must be finite"
        )
    return np.ascontiguousarray(array)
