"""A sweep's jobs composed from one Hydra composition per list of config-group overrides.

Hydra composes every job from scratch: the defaults list, each config file and schema, then the
overrides, which takes longer than a small network's training (``tests/benchmarks/README.md``).
Only a job's config-group overrides (``dataset=moons``, ``+experiment=x``, ``hydra/launcher=ray``)
change what the defaults list loads; its value overrides (``optimizer.lr=0.1``, ``+key=v``,
``++key=v``, ``~key``) are applied to the composed config afterwards, in order, and then Hydra
fills in the ``hydra.*`` fields that depend on the overrides.

``JobComposer.compose(overrides)`` returns what ``config_loader.load_sweep_config(master,
overrides)`` returns. Hydra's own ``load_sweep_config`` composes the job's group overrides alone,
once per distinct list of them; each job gets a deep copy of that config with its value overrides
applied and the ``hydra.*`` fields set as ``ConfigLoaderImpl._load_configuration_impl`` does, with
Hydra's and OmegaConf's public API only:

- ``hydra.overrides.hydra`` and ``hydra.overrides.task``: the master's Hydra overrides then the
  job's, each in its list, in order;
- ``hydra.job.override_dirname``: the job's non-Hydra overrides, sorted and joined by the job's
  ``hydra.job.config.override_dirname`` settings (read after the overrides, as Hydra reads them);
- ``hydra.job.env_set``: every variable of ``hydra.job.env_copy`` copied from the environment, now;
- ``hydra.runtime.cwd``: the working directory, now;
- the master's resolver cache (``OmegaConf.copy_cache``).

The rest that Hydra sets depends on the group overrides only and comes with the copy:
``hydra.runtime.choices``, ``version``, ``version_base``, ``config_sources``, ``hydra.job.name``,
``hydra.job.config_name``. A job whose overrides the copy cannot reproduce with certainty is
composed by Hydra, whole: a sweep value, a package (``key@package``) on a key that is not a
config group, a key that is not a plain dotted path, a dict given to a config group, a value
override of a field Hydra reads before or sets after applying the overrides (``HYDRA_SET_KEYS``,
and ``hydra.job.env_set`` where ``env_copy`` fills it), a text Hydra cannot parse (Hydra raises
its own error then). So is every job under a Hydra version this mirror is not checked against
(``MIRRORED_HYDRA_VERSIONS``; ``tests/test_composing.py`` compares both ways on every job).

Config files are read when a list of group overrides is first composed: a file edited while a
sweep runs reaches only the jobs whose list is composed after the edit. A composer serves one
sweep's master config, from one thread.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from textwrap import dedent
from typing import Any

import hydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, HydraException
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

# The Hydra versions whose composition this module mirrors, each checked by
# tests/test_composing.py; under any other, every job is composed by Hydra.
MIRRORED_HYDRA_VERSIONS = ("1.3.8",)

# Hydra fields that Hydra reads before it applies a job's overrides, or sets after applying them:
# a job that overrides one of them (or a node holding one) is composed by Hydra.
HYDRA_SET_KEYS = (
    "hydra.searchpath",
    "hydra.overrides",
    "hydra.runtime",
    "hydra.job.name",
    "hydra.job.config_name",
    "hydra.job.override_dirname",
    "hydra.job.env_copy",
)
# Filled from hydra.job.env_copy after the overrides: overridden by a job only while that is empty.
ENV_SET_KEY = "hydra.job.env_set"

# Distinct lists of group overrides kept composed: a grid over several groups cycles through all
# of its lists, and each composed config holds the whole Hydra node.
CACHED_GROUP_LISTS = 64

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_GROUP_PATH = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
# Names a config source never lists as a group, though they may be folders.
_UNLISTED = ("__pycache__", "__init__.py")


@dataclass
class ComposeCounts:
    """What a composer did: Hydra compositions of group lists, jobs copied from one, and jobs
    composed by Hydra whole."""

    group_lists: int = 0
    copied: int = 0
    by_hydra: int = 0


@dataclass
class _Plan:
    """A job's overrides as the copy takes them."""

    parsed: list[Override]  # the master's Hydra overrides then the job's, as Hydra parses them
    groups: list[Override]  # the job's config-group overrides, in order
    values: list[Override]  # the job's value overrides, in order


@dataclass
class _Composed:
    """One list of group overrides, composed by Hydra."""

    config: DictConfig
    hydra_prefix: int  # entries of hydra.overrides.hydra that the config itself holds
    task_prefix: int  # the same, of hydra.overrides.task


@dataclass
class _Master:
    """What ``load_sweep_config`` reads of the master config, with what depends on it."""

    config_name: str | None
    hydra_lines: tuple[str, ...]
    parsed: list[Override]
    subgroups: dict[str, frozenset[str] | None] = field(default_factory=dict)  # a group -> its groups
    composed: OrderedDict[tuple[str, ...], _Composed | None] = field(default_factory=OrderedDict)


class JobComposer:
    """``compose(overrides)`` is ``load_sweep_config(master_config, overrides)``, fast (see the
    module docstring). One per sweep: ``JobComposer(self.hydra_context, self.config)``."""

    def __init__(self, hydra_context: HydraContext, master_config: DictConfig) -> None:
        self.loader = hydra_context.config_loader
        self.master_config = master_config
        self.counts = ComposeCounts()
        self._parser = OverridesParser.create()
        self._mirrored = hydra.__version__ in MIRRORED_HYDRA_VERSIONS
        self._master: _Master | None = None

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        overrides = list(overrides)
        master = self._master_state()
        plan = self._plan(master, overrides)
        composed = self._composed(master, plan) if plan is not None else None
        if plan is None or composed is None or not self._env_set_copyable(composed, plan):
            self.counts.by_hydra += 1
            return self.loader.load_sweep_config(self.master_config, overrides)
        self.counts.copied += 1
        try:
            config = copy.deepcopy(composed.config)
            for override in plan.values:
                apply_value_override(config, override)
            self._set_hydra_fields(config, composed, plan)
        except OmegaConfBaseException as error:  # as Hydra's load_configuration reports it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from error
        OmegaConf.copy_cache(from_config=self.master_config, to_config=config)
        return config

    def _master_state(self) -> _Master:
        """What the master config gives every job; read again each time, since a sweeper owns the
        master and may change it."""
        hydra_lines = OmegaConf.to_container(self.master_config.hydra.overrides.hydra)
        assert isinstance(hydra_lines, list)
        config_name = self.master_config.hydra.job.config_name
        master = self._master
        if master is None or (master.config_name, master.hydra_lines) != (config_name, tuple(hydra_lines)):
            parsed = self._parser.parse_overrides(overrides=[str(line) for line in hydra_lines])
            master = self._master = _Master(config_name, tuple(str(line) for line in hydra_lines), parsed)
        return master

    def _plan(self, master: _Master, overrides: list[str]) -> _Plan | None:
        """The job's overrides split into group and value overrides; None where the copy could
        differ from Hydra's composition."""
        if not self._mirrored:
            return None
        try:
            parsed = self._parser.parse_overrides(overrides=overrides)
        except HydraException:  # Hydra raises its own error for the text
            return None
        groups, values = [], []
        for override in parsed:
            key = override.key_or_group
            if override.is_sweep_override():
                return None
            is_group = self._is_group(master, key)
            if is_group is None:
                return None
            if is_group:
                if isinstance(override.value(), dict):  # Hydra applies it as a value, in order
                    return None
                groups.append(override)
            elif override.package is not None or not _PLAIN_KEY.fullmatch(key) or _overlaps_any(key, HYDRA_SET_KEYS):
                return None
            else:
                values.append(override)
        return _Plan([*master.parsed, *parsed], groups, values)

    def _is_group(self, master: _Master, key: str) -> bool | None:
        """Whether Hydra reads ``key`` as a config group, as its repository's ``group_exists``
        does; None when a listing cannot tell."""
        parent, _, name = key.rpartition("/")
        if name in _UNLISTED or (parent and not _GROUP_PATH.fullmatch(key)):
            return None
        if parent not in master.subgroups:
            try:
                options = self.loader.get_group_options(
                    parent,
                    results_filter=ObjectType.GROUP,
                    config_name=master.config_name,
                    overrides=list(master.hydra_lines),
                )
                master.subgroups[parent] = frozenset(options)
            except (HydraException, OSError, ValueError):
                master.subgroups[parent] = None
        subgroups = master.subgroups[parent]
        return None if subgroups is None else name in subgroups

    def _composed(self, master: _Master, plan: _Plan) -> _Composed | None:
        """The job's group overrides composed by Hydra, once per distinct list; None when Hydra's
        lists of overrides in it are not as expected."""
        key = tuple(str(override.input_line) for override in plan.groups)
        if key in master.composed:
            master.composed.move_to_end(key)
            return master.composed[key]
        config = self.loader.load_sweep_config(self.master_config, list(key))
        self.counts.group_lists += 1
        appended = [*master.parsed, *plan.groups]
        hydra_prefix = _prefix(config.hydra.overrides.hydra, [o for o in appended if o.is_hydra_override()])
        task_prefix = _prefix(config.hydra.overrides.task, [o for o in appended if not o.is_hydra_override()])
        composed = None
        if hydra_prefix is not None and task_prefix is not None:
            composed = _Composed(config, hydra_prefix, task_prefix)
        master.composed[key] = composed
        if len(master.composed) > CACHED_GROUP_LISTS:
            master.composed.popitem(last=False)
        return composed

    @staticmethod
    def _env_set_copyable(composed: _Composed, plan: _Plan) -> bool:
        """Whether the copy's ``hydra.job.env_set`` is Hydra's before the overrides: it is unless
        ``env_copy`` filled it and the job overrides it."""
        if not len(composed.config.hydra.job.env_copy):
            return True
        return not any(_overlaps(override.key_or_group, ENV_SET_KEY) for override in plan.values)

    @staticmethod
    def _set_hydra_fields(config: DictConfig, composed: _Composed, plan: _Plan) -> None:
        """What Hydra sets after applying the overrides and what the group list alone does not
        determine (the module docstring)."""
        recorded = config.hydra.overrides
        del recorded.hydra[composed.hydra_prefix :]
        del recorded.task[composed.task_prefix :]
        task = []
        for override in plan.parsed:
            if override.is_hydra_override():
                recorded.hydra.append(override.input_line)
            else:
                recorded.task.append(override.input_line)
                task.append(override)
        job = config.hydra.job
        with open_dict(config.hydra):
            for name in job.env_copy:
                job.env_set[name] = os.environ[name]
        config.hydra.runtime.cwd = os.getcwd()
        settings = job.config.override_dirname
        job.override_dirname = override_dirname(task, settings.exclude_keys, settings.item_sep, settings.kv_sep)


def apply_value_override(config: DictConfig, override: Override) -> None:
    """Apply a value override (not a config group's) to ``config`` as Hydra does, with its errors."""
    key = override.key_or_group
    value = override.value()
    try:
        if override.is_delete():
            _delete(config, override, key, value)
        elif override.is_add():
            if OmegaConf.select(config, key, throw_on_missing=False) is None or isinstance(value, (dict, list)):
                OmegaConf.update(config, key, value, merge=True, force_add=True)
            else:
                line = str(override.input_line)
                raise ConfigCompositionException(
                    dedent(
                        f"""\
                        Could not append to config. An item is already at '{key}'.
                        Either remove + prefix: '{line[1:]}'
                        Or add a second + to add or override '{key}': '+{line}'
                        """
                    )
                )
        elif override.is_force_add():
            OmegaConf.update(config, key, value, merge=True, force_add=True)
        else:
            try:
                OmegaConf.update(config, key, value, merge=True)
            except (ConfigAttributeError, ConfigKeyError) as error:
                raise ConfigCompositionException(
                    f"Could not override '{key}'.\nTo append to your config use +{override.input_line}"
                ) from error
    except OmegaConfBaseException as error:
        raise ConfigCompositionException(f"Error merging override {override.input_line}").with_traceback(
            sys.exc_info()[2]
        ) from error


def _delete(config: DictConfig, override: Override, key: str, value: Any) -> None:
    found = OmegaConf.select(config, key, throw_on_missing=False)
    if found is None:
        raise ConfigCompositionException(f"Could not delete from config. '{key}' does not exist.")
    if value is not None and value != found:
        raise ConfigCompositionException(
            f"Could not delete from config. The value of '{key}' is {found} and not {value}."
        )
    parent, dot, name = key.rpartition(".")
    with open_dict(config):
        if not dot:
            del config[key]
        else:
            node = OmegaConf.select(config, parent)
            del node[name]


def override_dirname(overrides: Sequence[Override], exclude_keys: Any, item_sep: str, kv_sep: str) -> str:
    """``hydra.job.override_dirname`` of a job's non-Hydra overrides, as Hydra builds it."""
    lines = sorted(str(override.input_line) for override in overrides if override.key_or_group not in exclude_keys)
    return re.sub(pattern="[=]", repl=kv_sep, string=item_sep.join(lines))


def _prefix(recorded: Any, appended: list[Override]) -> int | None:
    """How many entries of ``recorded`` come before those Hydra appended for ``appended``;
    None when its last entries are not those."""
    lines = [str(line) for line in recorded]
    expected = [str(override.input_line) for override in appended]
    start = len(lines) - len(expected)
    return start if start >= 0 and lines[start:] == expected else None


def _overlaps(key: str, other: str) -> bool:
    """Whether ``key`` and ``other`` are the same node, or one holds the other."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def _overlaps_any(key: str, others: Sequence[str]) -> bool:
    return any(_overlaps(key, other) for other in others)
