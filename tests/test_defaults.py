"""One source per default: every setting the config schema shares with the engine defaults to
the engine's own value, so a run from a config and a call of the engine with nothing said agree.

Each field of the schema classes that reach the engine is either paired with the engine's
argument or dataclass field here, or listed as the runner's own (with why); a new field that is
neither fails ``test_every_schema_field_is_paired_or_the_runners_own``. The config options that
restate the schema's defaults (``conf/trainer/default.yaml``, ``conf/model/mlp.yaml``, the
optimizers' options) must restate them exactly.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import MISSING, OmegaConf

import engine
from engine.optimizers import Adam, Momentum, Nesterov
from runner.core import schema

NO_DEFAULT = "<no default: the caller must say>"
CONF = Path(__file__).resolve().parent.parent / "conf"


def argument_default(function: Callable[..., object], name: str) -> object:
    default = inspect.signature(function).parameters[name].default
    return NO_DEFAULT if default is inspect.Parameter.empty else default


def field_default(cls: type, name: str) -> object:
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    if found.default is not dataclasses.MISSING:
        return NO_DEFAULT if found.default is MISSING else found.default
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return NO_DEFAULT


# (schema class, field) -> (where the engine's default lives, the engine's default)
PAIRS: dict[tuple[type, str], tuple[str, Callable[[], object]]] = {
    (schema.ModelConfig, "activation"): ("MLP(activation=)", lambda: argument_default(engine.MLP, "activation")),
    (schema.ModelConfig, "output_activation"): (
        "MLP(output_activation=)",
        lambda: argument_default(engine.MLP, "output_activation"),
    ),
    (schema.ModelConfig, "init"): ("MLP(init=)", lambda: argument_default(engine.MLP, "init")),
    (schema.ModelConfig, "init_std"): ("MLP(init_std=)", lambda: argument_default(engine.MLP, "init_std")),
    (schema.ScheduleConfig, "name"): ("Schedule.name", lambda: field_default(engine.Schedule, "name")),
    (schema.ScheduleConfig, "step_size"): ("Schedule.step_size", lambda: field_default(engine.Schedule, "step_size")),
    (schema.ScheduleConfig, "gamma"): ("Schedule.gamma", lambda: field_default(engine.Schedule, "gamma")),
    (schema.ScheduleConfig, "min_lr"): ("Schedule.min_lr", lambda: field_default(engine.Schedule, "min_lr")),
    (schema.OptimizerConfig, "name"): ("make_optimizer(name)", lambda: argument_default(engine.make_optimizer, "name")),
    (schema.OptimizerConfig, "lr"): ("make_optimizer(lr)", lambda: argument_default(engine.make_optimizer, "lr")),
    (schema.MomentumConfig, "momentum"): ("Momentum(momentum=)", lambda: argument_default(Momentum, "momentum")),
    (schema.AdamConfig, "beta1"): ("Adam(beta1=)", lambda: argument_default(Adam, "beta1")),
    (schema.AdamConfig, "beta2"): ("Adam(beta2=)", lambda: argument_default(Adam, "beta2")),
    (schema.AdamConfig, "eps"): ("Adam(eps=)", lambda: argument_default(Adam, "eps")),
    (schema.TrainerConfig, "batch_size"): ("train(batch_size=)", lambda: argument_default(engine.train, "batch_size")),
    (schema.TrainerConfig, "loss"): ("train(loss=)", lambda: argument_default(engine.train, "loss")),
    (schema.TrainerConfig, "dtype"): ("MLP(dtype=)", lambda: argument_default(engine.MLP, "dtype")),
    (schema.TrainerConfig, "saturation_patience"): (
        "StoppingRules.saturation_patience",
        lambda: field_default(engine.StoppingRules, "saturation_patience"),
    ),
    (schema.TrainerConfig, "divergence_factor"): (
        "StoppingRules.divergence_factor",
        lambda: field_default(engine.StoppingRules, "divergence_factor"),
    ),
    # Early stopping is off unless asked for: enabled=False in the config, no rule in the engine.
    (schema.EarlyStoppingConfig, "enabled"): (
        "StoppingRules.early_stopping is not None",
        lambda: field_default(engine.StoppingRules, "early_stopping") is not None,
    ),
    (schema.EarlyStoppingConfig, "patience"): (
        "EarlyStopping.patience",
        lambda: field_default(engine.EarlyStopping, "patience"),
    ),
    (schema.EarlyStoppingConfig, "min_delta"): (
        "EarlyStopping.min_delta",
        lambda: field_default(engine.EarlyStopping, "min_delta"),
    ),
    (schema.EarlyStoppingConfig, "restore_best_weights"): (
        "EarlyStopping.restore_best_weights",
        lambda: field_default(engine.EarlyStopping, "restore_best_weights"),
    ),
}

# Fields of those classes that the engine does not default: why.
RUNNER_ONLY = {
    (schema.ModelConfig, "hidden"): "the engine takes the layer sizes, inputs and outputs included (from the data)",
    (schema.OptimizerConfig, "schedule"): "a nested config; its fields are paired with Schedule's",
    (schema.TrainerConfig, "epochs"): "train requires epochs: the engine has no default to differ from",
    (schema.TrainerConfig, "blas_threads"): "the runner sets the BLAS thread count around train",
    (schema.TrainerConfig, "early_stopping"): "a nested config; its fields are paired with EarlyStopping's",
}

SCHEMA_CLASSES = {cls for cls, _ in PAIRS} | {cls for cls, _ in RUNNER_ONLY}


@pytest.mark.parametrize("pair", list(PAIRS), ids=[f"{cls.__name__}.{name}" for cls, name in PAIRS])
def test_the_schema_default_is_the_engines(pair: tuple[type, str]) -> None:
    cls, name = pair
    where, engine_default = PAIRS[pair]
    assert field_default(cls, name) == engine_default(), (
        f"{cls.__name__}.{name} defaults to {field_default(cls, name)!r} but {where} to {engine_default()!r}"
    )


def test_every_schema_field_is_paired_or_the_runners_own() -> None:
    fields = {(cls, f.name) for cls in SCHEMA_CLASSES for f in dataclasses.fields(cls)}
    unaccounted = fields - PAIRS.keys() - RUNNER_ONLY.keys()
    # A subclass inherits its base's fields: they are accounted for by the base's entries.
    unaccounted = {
        (cls, name)
        for cls, name in unaccounted
        if not any((base, name) in PAIRS or (base, name) in RUNNER_ONLY for base in cls.__mro__[1:])
    }
    assert not unaccounted, sorted(f"{cls.__name__}.{name}" for cls, name in unaccounted)


def test_the_engine_has_no_default_for_what_the_runner_alone_defaults() -> None:
    assert argument_default(engine.train, "epochs") == NO_DEFAULT
    assert argument_default(engine.MLP, "sizes") == NO_DEFAULT


def test_nesterov_shares_the_momentum_default() -> None:
    assert argument_default(Nesterov, "momentum") == argument_default(Momentum, "momentum")
    assert schema.OPTIMIZER_SCHEMAS["nesterov"] is schema.MomentumConfig


# Config options that restate defaults, and the schema each builds on.
RESTATING_OPTIONS = {
    "trainer/default.yaml": schema.TrainerConfig,
    "model/mlp.yaml": schema.ModelConfig,
    "optimizer/gd.yaml": schema.OptimizerConfig,
    "optimizer/momentum.yaml": schema.MomentumConfig,
    "optimizer/nesterov.yaml": schema.MomentumConfig,
    "optimizer/adam.yaml": schema.AdamConfig,
}


def restated(option: dict, cls: type, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, option's value, schema default) of every key the option sets that has a default."""
    found = []
    for key, value in option.items():
        default = field_default(cls, key)
        if dataclasses.is_dataclass(default):
            found += restated(value, type(default), f"{prefix}{key}.")
        elif default != NO_DEFAULT:
            found.append((f"{prefix}{key}", value, default))
    return found


@pytest.mark.parametrize("option", list(RESTATING_OPTIONS))
def test_config_options_restate_the_schema_defaults_exactly(option: str) -> None:
    values = OmegaConf.to_container(OmegaConf.load(CONF / option))
    values.pop("defaults")
    different = [entry for entry in restated(values, RESTATING_OPTIONS[option]) if entry[1] != entry[2]]
    assert not different, different
