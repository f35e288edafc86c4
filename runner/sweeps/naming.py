"""Names that tell a sweep's runs apart in the MLflow UI's narrow name column, which shows
about 17 characters of a name.

A job's run is named as any run, ``<data set>-<optimizer>-lr<lr>-h<hidden>``, after each swept
key that varies in its sweep and is not in that name already: ``seed1-xor-gd-lr0.4-h8``. The
parent's name puts the swept keys first and the count after: ``seed x epochs sweep (6 jobs)``.
What tells runs apart comes first, so that it survives when the UI cuts a name short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Already part of every run's name (``runner.core.training.default_run_name``).
IN_EVERY_NAME = {"dataset", "dataset.name", "optimizer", "optimizer.name", "optimizer.lr", "model.hidden"}


def short_labels(keys: Iterable[str]) -> dict[str, str]:
    """Each key's last component (``trainer.epochs`` -> ``epochs``), or the whole key where two
    keys share a last component."""
    keys = list(keys)
    last = [key.rsplit(".", 1)[-1].lstrip("+~") for key in keys]
    return {key: label if last.count(label) == 1 else key.lstrip("+~") for key, label in zip(keys, last)}


def parent_name(swept_keys: Iterable[str], jobs: int | None) -> str:
    labels = " x ".join(short_labels(swept_keys).values())
    count = f" ({jobs} job{'' if jobs == 1 else 's'})" if jobs else ""
    return f"{labels} sweep{count}" if labels else f"sweep{count}"


def job_name(base: str, values: Mapping[str, Any], digits: int = 15) -> str:
    """``seed1-activation_tanh-<base>`` for the values ``{key: value}`` of a job's swept keys
    (those already in every run's name left out), floats to ``digits`` significant digits."""
    prefix = job_prefix(values, digits)
    return f"{prefix}-{base}" if prefix else base


def job_prefix(values: Mapping[str, Any], digits: int = 15) -> str:
    """``seed1-activation_tanh`` for the values ``{key: value}`` of a job's swept keys (those
    already in every run's name left out)."""
    shown = {key: value for key, value in values.items() if key.lstrip("+~") not in IN_EVERY_NAME}
    parts = []
    for key, label in short_labels(shown).items():
        text = _text(shown[key], digits)
        parts.append(f"{label}{text}" if text[:1].isdigit() or text[:1] == "-" else f"{label}_{text}")
    return "-".join(parts)


def _text(value: Any, digits: int = 15) -> str:
    if isinstance(value, float):
        return format(value, f".{digits}g")
    if isinstance(value, (list, tuple)):
        return "x".join(_text(item, digits) for item in value) or "none"
    return str(value)
