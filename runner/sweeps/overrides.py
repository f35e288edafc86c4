"""Reading a sweep's command-line overrides."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from runner.core.validation import clean_value


def swept_values(overrides: list[str]) -> dict[str, list[Any] | str]:
    """``{key: [values]}`` for each sweep override (``key=a,b``, ``range(...)``, ``choice(...)``);
    a search space that cannot be listed (``interval(...)``, Optuna's) stays its text."""
    swept: dict[str, list[Any] | str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            continue
        key = override.get_key_element()
        try:
            swept[key] = [clean_value(value) for value in override.sweep_iterator()]
        except Exception:  # interval() and other continuous spaces have no iterator
            swept[key] = (override.input_line or "").partition("=")[2]
    return swept
