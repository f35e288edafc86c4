"""Contract tests of the one Hydra-private thing bprun relies on: refusing foreign
``hydra.callbacks`` entries before Hydra instantiates them (``runner/hydra_app/compat.py``).

They fail loudly when Hydra is upgraded (``CHECKED_HYDRA_VERSIONS``): check the refusal against the
new version, and add it there only once these pass. The end-to-end refusal through the CLI (a
preset in a user's --config-dir) is in test_failures.py.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from omegaconf import OmegaConf

from runner.hydra_app.compat import CHECKED_HYDRA_VERSIONS, ForeignCallback, refuse_foreign_callbacks
from runner.process.errors import CommandExit

INSTANTIATED = []


class Recorder:
    def __init__(self) -> None:
        INSTANTIATED.append(self)


def test_the_installed_hydra_is_one_the_refusal_was_checked_against() -> None:
    assert version("hydra-core") in CHECKED_HYDRA_VERSIONS, (
        f"hydra-core {version('hydra-core')} is installed but the callback refusal was checked against "
        f"{CHECKED_HYDRA_VERSIONS}: run these tests against it, then add it to CHECKED_HYDRA_VERSIONS"
    )


def test_a_foreign_callback_is_refused_before_it_is_instantiated() -> None:
    from hydra._internal.callbacks import Callbacks  # the private class the refusal wraps

    refuse_foreign_callbacks()
    refuse_foreign_callbacks()  # idempotent
    INSTANTIATED.clear()
    foreign = OmegaConf.create({"hydra": {"callbacks": {"evil": {"_target_": f"{__name__}.Recorder"}}}})
    with pytest.raises(CommandExit) as refused:
        Callbacks(foreign)
    assert isinstance(refused.value.error, ForeignCallback)
    assert f"hydra.callbacks.evil._target_={__name__}.Recorder" in str(refused.value.error)
    assert INSTANTIATED == []


def test_bprun_s_own_callback_is_still_instantiated() -> None:
    from hydra._internal.callbacks import Callbacks

    refuse_foreign_callbacks()
    ours = OmegaConf.create(
        {"hydra": {"callbacks": {"bprun": {"_target_": "runner.hydra_app.callbacks.BprunCallback"}}}}
    )
    callbacks = Callbacks(ours)
    assert [type(callback).__name__ for callback in callbacks.callbacks] == ["BprunCallback"]


@pytest.mark.parametrize(
    "extra",
    [
        {"_target_": f"{__name__}.Recorder"},
        # Hydra resolves interpolations before it instantiates, so the check does too.
        "${oc.create:{_target_: " + __name__ + ".Recorder}}",
    ],
    ids=["nested", "interpolated"],
)
def test_a_target_inside_bprun_s_own_callback_is_refused(extra: object) -> None:
    """Hydra instantiates a ``_target_`` anywhere inside a callback's entry, as one of its arguments."""
    from hydra._internal.callbacks import Callbacks

    refuse_foreign_callbacks()
    INSTANTIATED.clear()
    ours = {"_target_": "runner.hydra_app.callbacks.BprunCallback", "extra": extra}
    with pytest.raises(CommandExit) as refused:
        Callbacks(OmegaConf.create({"hydra": {"callbacks": {"bprun": ours}}}))
    assert isinstance(refused.value.error, ForeignCallback)
    assert str(refused.value.error).startswith("refusing hydra.callbacks.bprun.extra._target_: ")
    assert INSTANTIATED == []
