"""The one place the Hydra app relies on something Hydra does not publish: the class that
instantiates ``hydra.callbacks`` (``hydra._internal.callbacks.Callbacks``).

Why: Hydra instantiates every ``hydra.callbacks`` entry of the composed config, from any config
file (a preset in a user's ``--config-dir`` included), before a job or any check of bprun's
runs; ``_target_`` is arbitrary code execution. Configs are plain data, so bprun refuses any
callback but its own at that point. No public hook runs earlier.

Checked against the hydra-core versions in ``CHECKED_HYDRA_VERSIONS``;
``tests/test_hydra_compat.py`` fails as soon as the installed Hydra is another version or the
refusal no longer happens. With a Hydra whose internals differ, bprun refuses to start rather
than run unchecked callbacks.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.core.plain_data import TARGET, refusal, target_keys
from runner.process.errors import CommandExit, InvalidInput

CHECKED_HYDRA_VERSIONS = ("1.3.8",)
# The only callbacks bprun lets Hydra instantiate (conf/config.yaml).
ALLOWED_CALLBACKS = {"runner.hydra_app.callbacks.BprunCallback"}


class ForeignCallback(InvalidInput):
    """A config asks Hydra to instantiate a callback bprun does not know."""


def refuse_foreign_callbacks() -> None:
    """Make Hydra refuse, before instantiating any, what ``foreign_callbacks`` finds in
    ``hydra.callbacks`` (idempotent)."""
    try:
        # (lazy: the private name fails here, where this says so, not at import)
        from hydra._internal import callbacks as hydra_callbacks

        original_init = hydra_callbacks.Callbacks.__init__
    except (ImportError, AttributeError) as error:
        raise RuntimeError(
            f"bprun cannot check hydra.callbacks with hydra-core {version('hydra-core')} "
            f"({error}); install hydra-core {CHECKED_HYDRA_VERSIONS[-1]}"
        ) from None
    if getattr(original_init, "bprun_checked", False):
        return

    def checked_init(self: Any, config: DictConfig | None = None, *args: Any, **kwargs: Any) -> None:
        foreign = foreign_callbacks(config)
        if foreign:
            raise CommandExit(ForeignCallback(refusal(foreign)))
        original_init(self, config, *args, **kwargs)

    checked_init.bprun_checked = True  # type: ignore[attr-defined]
    # Replacing the method is the point: Hydra offers no hook that runs before it instantiates.
    hydra_callbacks.Callbacks.__init__ = checked_init  # type: ignore[method-assign]


def foreign_callbacks(config: DictConfig | None) -> list[str]:
    """What Hydra would instantiate from ``hydra.callbacks`` but an allowed callback: an entry
    whose own ``_target_`` is not in ``ALLOWED_CALLBACKS``, and any ``_target_`` inside an entry
    (Hydra would instantiate that too, as an argument of the callback). Interpolations are
    resolved first, as Hydra resolves them before instantiating."""
    entries = OmegaConf.select(config, "hydra.callbacks") if config is not None else None
    if not isinstance(entries, DictConfig):  # none, or what Hydra cannot read as callbacks either
        return []
    plain = OmegaConf.to_container(entries, resolve=True)
    assert isinstance(plain, dict)
    foreign = []
    for name, entry in plain.items():
        path = "hydra.callbacks." + str(name)
        own = entry.get(TARGET) if isinstance(entry, dict) else None
        if own not in ALLOWED_CALLBACKS:
            foreign.append(f"{path}.{TARGET}={own}")
        foreign += [key for key in target_keys(entry, path) if key != f"{path}.{TARGET}"]
    return foreign
