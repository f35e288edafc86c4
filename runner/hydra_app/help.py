"""What ``bprun --help`` lists: the app's config groups and their options, read from the
packaged config tree (``conf/``), so that the page never goes stale. Hydra's own listing would
add the internal ``schema/*`` groups the config is typed with."""

from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf

RESOLVER = "bprun_config_groups"


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
