"""Every option of every config group composes and validates; every preset runs.

The options are enumerated from the YAML files shipped as ``runner.conf``, so a new option is
tested as soon as it exists. Runs here go through ``runner.experiment`` in-process with
``tracking=none`` (nothing is written); the real CLI is exercised in ``test_cli.py``.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.core.run import run
from runner.core.validation import ConfigError, validate

CONF_DIR = Path(str(resources.files("runner.conf")))
GROUPS = ("model", "optimizer", "dataset", "trainer", "tracking")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def option_values(group: str, option: str) -> dict[str, Any]:
    """What the option's YAML sets, without its defaults list (``???`` kept as missing)."""
    node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    values = OmegaConf.to_container(node, resolve=False, throw_on_missing=False)
    values.pop("defaults", None)
    return values


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def settings_value(settings: Any, dotted: str) -> Any:
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "table.csv"
    rows = ["a,b,y"] + [f"{i},{(i * 7) % 5},{i % 3}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    return path


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def test_the_public_options_exist() -> None:
    # The group and option names are the project's public interface.
    assert set(options("model")) >= {"mlp", "xor_2_2_1", "wide", "deep"}
    assert set(options("optimizer")) >= {"gd", "momentum", "nesterov", "adam"}
    assert set(options("dataset")) >= {
        "xor",
        "sine",
        "moons",
        "circles",
        "spirals",
        "iris",
        "diabetes",
        "digits",
        "csv",
    }
    assert set(options("tracking")) >= {"local", "none"}
    assert options("trainer")
    assert set(options("experiment")) >= {"xor_sigmoid", "iris_classifier", "diabetes_regression"}


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(compose, csv_file: Path, group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) == ("dataset", "csv"):
        overrides += [f"dataset.path={csv_file}", "dataset.targets=[y]"]
    cfg = compose(overrides)
    settings = validate(cfg)

    expected = flat(option_values(group, option), group)
    if (group, option) == ("dataset", "csv"):
        expected.update({"dataset.path": str(csv_file), "dataset.targets": ["y"]})
    assert expected, f"{group}/{option}.yaml sets nothing"
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
        assert settings_value(settings, key) == value, key


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_takes_its_learning_rate_as_optimizer_lr(compose, option: str) -> None:
    settings = validate(compose([f"optimizer={option}", "optimizer.lr=0.125"]))
    assert settings.optimizer.name == option
    assert settings.optimizer.lr == 0.125


def test_defaults_are_the_documented_main_job(compose) -> None:
    settings = validate(compose([]))
    assert settings.model.hidden == [8]
    assert (settings.model.activation, settings.model.output_activation) == ("sigmoid", "sigmoid")
    assert settings.model.init == "xavier_uniform"
    assert settings.optimizer.name == "gd"
    assert settings.dataset.name == "xor"
    assert settings.dataset.val_fraction == 0.0  # xor needs every corner for training
    assert settings.trainer.batch_size is None  # full batch
    assert settings.tracking.enabled is True
    assert settings.tracking.experiment == "backprop-runner"
    assert settings.tracking.uri is None


def test_validation_reports_every_problem_at_once(compose) -> None:
    cfg = compose(["optimizer.lr=-1", "trainer.epochs=0", "model.hidden=[4,0]"])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    for key, value in [("optimizer.lr", "-1"), ("trainer.epochs", "0"), ("model.hidden", "[4, 0]")]:
        assert f"{key}={value}" in message, message


# --- presets ---------------------------------------------------------------------------------
PRESETS = options("experiment")


def preset_expectations(preset: str) -> dict[str, Any]:
    """The keys a preset sets (``override /group: option`` as ``<group>.name`` where the option
    has a name) as dotted keys."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml"))
    expected: dict[str, Any] = {}
    for entry in node.pop("defaults", []):
        for key, option in entry.items():
            group = key.removeprefix("override ").strip("/")
            expected.update({f"{group}.{k}": v for k, v in flat(option_values(group, option)).items()})
    expected.update(flat(node))
    return expected


def test_presets_are_global_packages() -> None:
    for preset in PRESETS:
        first_line = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text().splitlines()[0]
        assert first_line.strip() == "# @package _global_", preset


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_on_a_tiny_budget(compose, preset: str) -> None:
    cfg = compose([f"experiment={preset}", "trainer.epochs=3", "tracking=none"])
    settings = validate(cfg)
    for key, value in preset_expectations(preset).items():
        if key != "trainer.epochs":
            assert settings_value(settings, key) == value, key
    assert settings.trainer.epochs == 3

    result = run(cfg)
    assert result.run_id is None and result.tracking_uri is None
    assert result.history.epochs_run == 3
    assert "train_mse" in result.metrics
    if result.dataset.X_val is not None:
        assert "val_mse" in result.metrics
    for name, value in result.metrics.items():
        assert math.isfinite(value), (name, value)
    for name, series in result.history.metrics.items():
        assert len(series) == 3, name


def test_run_returns_the_final_metrics_as_a_plain_dict(compose) -> None:
    cfg = compose(["experiment=xor_sigmoid", "trainer.epochs=5", "tracking=none"])
    metrics = run(cfg).metrics
    again = run(cfg)
    assert isinstance(metrics, dict)
    assert metrics == again.metrics  # one seed: the same run twice gives the same numbers
    assert metrics["train_mse"] == again.history.metrics["train_loss"][-1]


# --- presets at their own budgets ------------------------------------------------------------
@pytest.mark.slow
def test_xor_sigmoid_converges(compose) -> None:
    result = run(compose(["experiment=xor_sigmoid", "tracking=none"]))
    assert result.history.epochs_run == 3000
    assert result.metrics["train_mse"] < 0.01
    assert result.metrics["train_accuracy"] == 1.0


@pytest.mark.slow
def test_iris_classifier_converges(compose) -> None:
    result = run(compose(["experiment=iris_classifier", "tracking=none"]))
    assert result.metrics["val_accuracy"] >= 0.9
    assert result.metrics["val_loss"] < result.history.metrics["val_loss"][0]


@pytest.mark.slow
def test_digits_classifier_converges(compose) -> None:
    result = run(compose(["experiment=digits_classifier", "tracking=none"]))
    assert result.metrics["val_accuracy"] >= 0.9


def diabetes_preset_result(compose):
    result = run(compose(["experiment=diabetes_regression", "tracking=none"]))
    dataset = result.dataset
    # Linear least squares on the same split: what any sensible regressor should roughly match.
    design_train = np.column_stack([dataset.X_train, np.ones(len(dataset.X_train))])
    design_val = np.column_stack([dataset.X_val, np.ones(len(dataset.X_val))])
    weights = np.linalg.lstsq(design_train, dataset.Y_train, rcond=None)[0]
    linear = float(np.mean((design_val @ weights - dataset.Y_val) ** 2))
    # The best constant prediction given the training data is the training mean.
    constant = float(np.mean((dataset.Y_val - dataset.Y_train.mean(axis=0)) ** 2))
    return result, linear, constant


@pytest.mark.slow
def test_diabetes_regression_beats_predicting_the_mean(compose) -> None:
    result, _, constant = diabetes_preset_result(compose)
    assert result.history.stop_reason == "early_stopping"
    assert result.history.restored_epoch == result.history.best_epoch
    # The reported val_mse is that of the weights the run ends with (the restored best ones).
    predicted = result.network.predict(result.dataset.X_val)
    assert result.metrics["val_mse"] == pytest.approx(np.mean((predicted - result.dataset.Y_val) ** 2), rel=1e-12)
    assert result.metrics["val_mse"] < 0.8 * constant, (result.metrics["val_mse"], constant)


@pytest.mark.slow
def test_diabetes_regression_generalizes_about_as_well_as_a_linear_model(compose) -> None:
    result, linear, _ = diabetes_preset_result(compose)
    assert result.metrics["val_mse"] < 1.2 * linear, (result.metrics["val_mse"], linear)


def test_every_engine_optimizer_has_a_config_schema() -> None:
    import engine
    from runner.core.schema import OPTIMIZER_SCHEMAS

    assert set(OPTIMIZER_SCHEMAS) == set(engine.OPTIMIZERS)
