"""Configs are plain data: the one rule for what would have Hydra instantiate an object.

Hydra turns any config node with a ``_target_`` key into an object (``hydra.callbacks`` and the
sweeper and launcher nodes, by itself; anything else, by whoever calls ``instantiate``), and
``_target_`` names arbitrary code. bprun refuses such a key wherever it comes from: the command
line (``runner.commands.bprun``), a ``hydra.callbacks`` entry (``runner.hydra_app.compat``), the
job's config (``runner.core.validation``). A value that merely contains the text (a run named
``my_target_run``) asks for nothing.

Standard library only: ``bprun`` checks its command line with it before it imports anything slow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

TARGET = "_target_"

# A dict key named _target_ inside an override's value: {_target_: x}, {a: 1, _target_: x}.
_TARGET_IN_VALUE = re.compile(r"[{,]\s*" + TARGET + r"\s*:")


def asks_for_instantiation(key: object) -> bool:
    """Whether a key (``foo._target_``, ``hydra.callbacks.x._target_``, or one component of a
    config node) names ``_target_``: its last dotted component is ``_target_``."""
    return str(key).rpartition(".")[2] == TARGET


def target_keys(node: Any, path: str = "") -> list[str]:
    """Full keys (``optimizer._target_``, ``a[0]._target_``) of every key of a plain container
    (dicts and lists, as ``OmegaConf.to_container`` makes them) that asks for instantiation."""
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            full = f"{path}.{key}" if path else str(key)
            if asks_for_instantiation(key):
                found.append(full)
            found.extend(target_keys(value, full))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            found.extend(target_keys(value, f"{path}[{index}]"))
    return found


def override_asks_for_instantiation(argument: str) -> bool:
    """Whether a command-line argument is an override (``key=value``, ``+key=value``,
    ``++key=value``) that sets a ``_target_``: through its key, or through a dict in its value.
    A deletion (``~key``) and anything that is not an override (a flag, a flag's value) ask for
    nothing."""
    if argument.startswith(("-", "~")) or "=" not in argument:
        return False
    key, _, value = argument.lstrip("+").partition("=")
    package = key.rpartition("@")[2]  # group@package=option puts the option at package
    return asks_for_instantiation(package) or bool(_TARGET_IN_VALUE.search(value))


def refused_overrides(arguments: Iterable[str]) -> list[str]:
    """The arguments of a command line that ask for instantiation."""
    return [argument for argument in arguments if override_asks_for_instantiation(argument)]


def refusal(found: Iterable[str]) -> str:
    """The one message for configs or overrides that ask for instantiation."""
    return f"refusing {', '.join(found)}: configs are plain data and are never instantiated; remove '_target_'"
