"""``bprun --help``: the app's own page, rendered by bprun.

The page is ``hydra.help.template`` (``conf/hydra/help/bprun.yaml``) with the composed job config
as ``$CONFIG``, exactly as Hydra's ``--help`` substitutes it. bprun renders it itself, composing
through Hydra's Compose API: Hydra's own ``--help`` also lists every config group twice over for
``$APP_CONFIG_GROUPS`` and ``$HYDRA_CONFIG_GROUPS``, which bprun's template does not print, and
each listing copies Hydra's whole config repository (schemas, sweepers, launchers) once per
group. The template's group listing is bprun's own (``${bprun_config_groups:}``): the app's
config groups and their options, read from the packaged config tree (``conf/``), so that the
page never goes stale; Hydra's listing would add the internal ``schema/*`` groups the config is
typed with.

bprun reads the command line as Hydra's argument parser does, for the flags that matter to the
page: overrides, ``--resolve`` and ``--config-name``; Hydra ignores ``--multirun`` and ``--run``
for ``--help``. Hydra still answers ``--help`` itself when bprun could not render the same page:
any other flag (``--config-dir``, say), overrides split by flags (which Hydra's parser refuses),
a template that asks for Hydra's listings or flags (a user's ``hydra/help``), or
``hydra.verbose`` (Hydra logs its debug information first).

Composition needs what ``runner.hydra_app.app`` registers when it is imported (the schemas,
plugins and this module's resolver): ``bprun`` imports it first.
"""

from __future__ import annotations

import copy
import string
from dataclasses import dataclass
from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

RESOLVER = "bprun_config_groups"
HELP_FLAGS = frozenset({"-h", "--help"})
# Flags Hydra ignores when it prints the app's help (it composes for a single run).
IGNORED_FLAGS = frozenset({"-m", "--multirun", "-r", "--run"})
CONFIG_NAME_FLAGS = ("-cn", "--config-name")
# What Hydra's template offers besides $CONFIG; bprun leaves a template that uses them to Hydra.
HYDRA_ONLY_PLACEHOLDERS = frozenset({"FLAGS_HELP", "HYDRA_CONFIG_GROUPS", "APP_CONFIG_GROUPS"})


def config_groups() -> dict[str, list[str]]:
    """``{group: [option, ...]}`` of every group in ``conf/`` but Hydra's own."""
    tree = resources.files("runner.conf")
    groups = {}
    for folder in sorted(tree.iterdir(), key=lambda entry: entry.name):
        if folder.is_dir() and folder.name not in ("hydra", "__pycache__"):
            groups[folder.name] = sorted(
                entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml")
            )
    return groups


def groups_text() -> str:
    defaults = _defaults()
    lines = []
    for group, options in config_groups().items():
        shown = [f"[{option}]" if defaults.get(group) == option else option for option in options]
        lines.append(f"  {group + ':':12} {', '.join(shown)}")
    return "\n".join(lines)


def _defaults() -> dict[str, str]:
    """The option each group defaults to, from ``config.yaml``'s defaults list."""
    config = OmegaConf.create(resources.files("runner.conf").joinpath("config.yaml").read_text())
    assert isinstance(config, DictConfig)  # config.yaml is a mapping: Hydra composes from no other
    chosen = {}
    for entry in config.get("defaults", []):
        if isinstance(entry, str) or entry is None:
            continue
        for group, option in entry.items():
            if option is not None and not str(group).startswith("override"):
                chosen[str(group)] = str(option)
    return chosen


def register_help() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, groups_text)


@dataclass(frozen=True)
class HelpRequest:
    """A command line asking for the app's help, as Hydra's argument parser reads it."""

    overrides: tuple[str, ...]
    config_name: str = "config"
    resolve: bool = False


def help_request(arguments: list[str]) -> HelpRequest | None:
    """The help a command line asks for, when it does and bprun renders it (see the module
    docstring); None otherwise."""
    if not HELP_FLAGS & set(arguments):
        return None
    overrides: list[str] = []
    config_name = "config"
    resolve = False
    overrides_ended = False  # Hydra's parser takes the overrides as one run of arguments
    remaining = iter(arguments)
    for argument in remaining:
        if not argument.startswith("-"):
            if overrides_ended:
                return None
            overrides.append(argument)
            continue
        overrides_ended = bool(overrides)
        if argument == "--resolve":
            resolve = True
        elif argument in CONFIG_NAME_FLAGS:
            config_name = next(remaining, "")
            if not config_name or config_name.startswith("-"):
                return None
        elif argument.startswith("--config-name=") and argument != "--config-name=":
            config_name = argument.partition("=")[2]
        elif argument not in HELP_FLAGS | IGNORED_FLAGS:
            return None
    return HelpRequest(tuple(overrides), config_name, resolve)


def render_help(request: HelpRequest) -> str | None:
    """The page, or None when the template needs what only Hydra's own help provides."""
    with initialize_config_module(config_module="runner.conf", version_base="1.3", job_name="bprun"):
        cfg = compose(config_name=request.config_name, overrides=list(request.overrides), return_hydra_config=True)
        if cfg.hydra.verbose:
            return None
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the template or the config
        template = string.Template(cfg.hydra.help.template)
        if HYDRA_ONLY_PLACEHOLDERS & set(template.get_identifiers()):
            return None
        job = copy.deepcopy(cfg)
        with read_write(job), open_dict(job):
            del job["hydra"]
        return template.substitute(CONFIG=OmegaConf.to_yaml(job, resolve=request.resolve))


def print_help(arguments: list[str]) -> bool:
    """Print the app's help if the command line asks for it and bprun renders it; whether it did."""
    request = help_request(arguments)
    page = render_help(request) if request is not None else None
    if page is None:
        return False
    print(page)
    return True
