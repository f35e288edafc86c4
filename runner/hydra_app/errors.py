"""Hydra's composition errors as one line that names the key or option, the bad value and what is
allowed, with the closest valid name for a typo (bprun reports them itself: exit 2, no traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from runner.core.validation import KEY_LIMITS


def is_config_error(error: BaseException) -> bool:
    """Whether ``error`` is Hydra (or OmegaConf) refusing the command line or the config."""
    return isinstance(error, (HydraException, OmegaConfBaseException))


def describe(error: BaseException) -> str:
    """One line for a composition error (see the module docstring)."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = list(error.options or [])
        if group and options:
            return f"{group}={option}: no such option{_closest(option, options)}; choose one of {', '.join(options)}"
        return f"no config {error.missing_cfg_file!r}"
    if isinstance(error, ConfigCompositionException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        key = cause.full_key or str(cause.key)
        parent = cause.parent_node
        keys = sorted(str(name) for name in parent if name != "hydra") if isinstance(parent, DictConfig) else []
        owner = key.rpartition(".")[0]
        where = f"the keys of {owner}" if owner else "the top-level keys"
        return f"{key}: no such key{_closest(key.rpartition('.')[2], keys, owner)}; {where} are {', '.join(keys)}"
    if isinstance(error, ConfigCompositionException) and isinstance(cause, ValidationError):
        override = str(error).partition("override ")[2].strip() or cause.full_key
        limit = KEY_LIMITS.get(str(cause.full_key))
        allowed = f"; {limit.describe()}" if limit is not None else ""
        return f"{override} is not allowed: {str(cause.msg).splitlines()[0]}{allowed}"
    if isinstance(error, OverrideParseException):
        return f"cannot read an override: {str(error).splitlines()[0]} (see Hydra's override syntax)"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _closest(name: str, candidates: Iterable[str], owner: str = "") -> str:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not found:
        return ""
    return f" (did you mean {owner + '.' if owner else ''}{found[0]}?)"
