"""Two shorthands people type that Hydra's typed config would refuse, read as they are meant.

- A whole-number key given in scientific or decimal notation, ``trainer.epochs=1e3`` or
  ``trainer.epochs=2000.0``, is that whole number (``1000``). A value with a fraction
  (``trainer.epochs=1.5``) is left for the config's own error.
- A list-of-integers key given one integer, ``model.hidden=4``, is a one-element list
  (``[4]``, one hidden layer of 4 units); in a sweep, ``model.hidden=4,8`` is ``[4],[8]``.

Only plain values (and comma-separated sweeps of them) of keys the schema types so are read
this way; everything else reaches Hydra as typed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from functools import cache

from runner.core.schema import DATASET_SCHEMAS, OPTIMIZER_SCHEMAS, ExperimentConfig

_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2})(?P<key>[A-Za-z_][\w.]*)=(?P<value>[^\s\[\]{}()'\"]+)$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@cache
def typed_keys() -> tuple[frozenset[str], frozenset[str]]:
    """The dotted keys the schema types as an integer, and as a list of integers."""
    integers: set[str] = set()
    integer_lists: set[str] = set()

    def walk(schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for field in dataclasses.fields(schema):
            key, kind = f"{prefix}{field.name}", hints[field.name]
            arguments = [a for a in typing.get_args(kind) if a is not type(None)]
            if kind is int or (typing.get_origin(kind) in (typing.Union, types.UnionType) and arguments == [int]):
                integers.add(key)
            elif typing.get_origin(kind) is list and arguments == [int]:
                integer_lists.add(key)
            elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
                walk(kind, key + ".")

    walk(ExperimentConfig, "")
    for optimizer_schema in OPTIMIZER_SCHEMAS.values():
        walk(optimizer_schema, "optimizer.")
    for dataset_schema in DATASET_SCHEMAS.values():
        walk(dataset_schema, "dataset.")
    return frozenset(integers), frozenset(integer_lists)


def expand(arguments: list[str]) -> list[str]:
    """``arguments`` with the shorthands above written out."""
    integers, integer_lists = typed_keys()
    expanded = []
    for argument in arguments:
        match = _OVERRIDE.match(argument)
        if match and match["key"] in integers | integer_lists:
            parts = match["value"].split(",")
            wholes = [whole for part in parts if (whole := _whole(part)) is not None]
            if match["key"] in integers and len(wholes) == len(parts):
                argument = f"{match['prefix']}{match['key']}={','.join(wholes)}"
            elif match["key"] in integer_lists and all(part.isdigit() for part in parts):
                argument = f"{match['prefix']}{match['key']}={','.join(f'[{part}]' for part in parts)}"
        expanded.append(argument)
    return expanded


def _whole(text: str) -> str | None:
    """``text`` as a whole number's digits when it is one written as a number (``1e3``)."""
    if not _NUMBER.match(text):
        return None
    if text.lstrip("+-").isdigit():
        return text
    value = float(text)
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else None
