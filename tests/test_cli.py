"""The real ``bprun`` CLI (``python -m runner``) in subprocesses, read back from real MLflow stores.

Each CLI run costs seconds (imports, store creation), so the runs are made once per module, in
parallel, and several tests read the same run. Every run starts in its own temporary working
directory; runs that are read back write to a temporary SQLite store named by
``MLFLOW_TRACKING_URI``, except where the test is about what happens without it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from guard import dying_with_pytest
from support import CLI_TIMEOUT, TRAIN_MSE, cli, cli_environment, history, only_run

pytestmark = pytest.mark.slow

EXPERIMENT = "backprop-runner"
XOR_EPOCHS = 400
XOR_OVERRIDES = (f"trainer.epochs={XOR_EPOCHS}", "optimizer.lr=2", "model.hidden=[8]")
# A linear output with an absurd learning rate on xor: the loss overflows within a few dozen epochs.
DIVERGING_EPOCHS = 50
DIVERGING_OVERRIDES = ("model.output_activation=identity", "optimizer.lr=1e6", f"trainer.epochs={DIVERGING_EPOCHS}")
# Two at a time: measured on 2 busy cores, more parallel CLI runs only took longer.
PARALLEL_RUNS = 2


class Scenario:
    """One CLI run: where it started, which store it was told about, what it printed."""

    def __init__(
        self,
        base: Path,
        overrides: tuple[str, ...],
        use_store: bool,
        run_cli: Callable[..., subprocess.CompletedProcess[str]],
        store_at: Callable[[Path], Any],
    ) -> None:
        self.run_cli = run_cli
        self.cwd = base / "cwd"
        self.cwd.mkdir(parents=True)
        self.store = store_at(base / "store")
        self.overrides = overrides
        self.env = {"MLFLOW_TRACKING_URI": self.store.uri} if use_store else None
        self.result: subprocess.CompletedProcess[str] | None = None
        self.decoy: Any = None  # a store the run was configured with but must not use

    def run(self) -> Scenario:
        self.result = self.run_cli(*self.overrides, cwd=self.cwd, env=self.env)
        return self

    @property
    def output(self) -> str:
        result = self.result
        return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_all(scenarios: dict[str, Scenario]) -> dict[str, Scenario]:
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        list(pool.map(Scenario.run, scenarios.values()))
    return scenarios


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, run_cli, store_at) -> dict[str, Scenario]:
    """Every successful-path CLI run of this module, made once and in parallel."""
    base = tmp_path_factory.mktemp("cli")
    # A configured tracking.uri that MLFLOW_TRACKING_URI must win over.
    decoy = store_at(base / "decoy")
    cases = {
        "xor": ((*XOR_OVERRIDES, f"tracking.uri={decoy.uri}"), True),
        "default_store": (("trainer.epochs=5",), False),
        "diverging": (DIVERGING_OVERRIDES, True),
        "no_tracking": (("tracking=none", "trainer.epochs=5"), False),
        "chdir": (("hydra.job.chdir=true", "trainer.epochs=5"), False),
    }
    scenarios = run_all(
        {
            name: Scenario(base / name, overrides, use_store, run_cli, store_at)
            for name, (overrides, use_store) in cases.items()
        }
    )
    scenarios["xor"].decoy = decoy
    return scenarios


def read_artifact(store: Any, run_id: str, name: str, directory: Path) -> str:
    return Path(store.client().download_artifacts(run_id, name, str(directory))).read_text()


def local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://")).resolve()


# --- one tracked xor run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def xor(runs: dict[str, Scenario]) -> Scenario:
    scenario = runs["xor"]
    assert scenario.result.returncode == 0, scenario.output
    return scenario


def test_xor_run_is_the_one_finished_run_in_the_experiment(xor: Scenario) -> None:
    client = xor.store.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    run = only_run(xor.store)
    assert run.info.experiment_id == experiment.experiment_id
    assert run.info.status == "FINISHED"


def test_xor_train_mse_is_logged_every_epoch_and_falls(xor: Scenario) -> None:
    run = only_run(xor.store)
    history = xor.store.client().get_metric_history(run.info.run_id, TRAIN_MSE)
    history = sorted(history, key=lambda metric: metric.step)
    assert [metric.step for metric in history] == list(range(XOR_EPOCHS))
    values = [metric.value for metric in history]
    assert all(math.isfinite(value) for value in values)
    # Full-batch gradient descent on xor from 0.25 (chance) to well below it: a clear drop.
    assert values[-1] < values[0]
    assert values[-1] < 0.5 * values[0], (values[0], values[-1])
    assert run.data.metrics[TRAIN_MSE] == values[-1]


def test_xor_params_are_the_flattened_config(xor: Scenario) -> None:
    params = only_run(xor.store).data.params
    assert params["optimizer.lr"] == "2"
    assert params["model.hidden"] == "[8]"  # lists as JSON
    assert params["trainer.epochs"] == str(XOR_EPOCHS)
    assert params["optimizer.name"] == "gd"
    assert params["dataset.name"] == "xor"


def test_xor_artifacts_hold_the_config_and_the_overrides(xor: Scenario, tmp_path: Path) -> None:
    run = only_run(xor.store)
    names = {artifact.path for artifact in xor.store.client().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml"} <= names

    overrides = yaml.safe_load(read_artifact(xor.store, run.info.run_id, "overrides.yaml", tmp_path))
    assert overrides == list(xor.overrides)
    config = yaml.safe_load(read_artifact(xor.store, run.info.run_id, "config.yaml", tmp_path))
    assert config["optimizer"]["lr"] == 2
    assert config["model"]["hidden"] == [8]
    assert config["trainer"]["epochs"] == XOR_EPOCHS


def test_xor_summary_names_the_run_and_the_dashboard_command(xor: Scenario) -> None:
    run = only_run(xor.store)
    stdout = xor.result.stdout
    assert run.info.run_id in stdout
    assert f"mlflow ui --workers 1 --backend-store-uri {xor.store.uri}" in stdout
    printed = re.search(r"train_mse=([-+0-9.eE]+)", stdout)
    assert printed, stdout
    assert float(printed.group(1)) == pytest.approx(run.data.metrics[TRAIN_MSE], rel=1e-5)


def test_mlflow_tracking_uri_wins_over_tracking_uri_and_the_working_directory(xor: Scenario) -> None:
    assert xor.store.db.is_file()
    assert not xor.decoy.db.exists()
    for name in ("mlflow.db", "mlartifacts", "mlruns"):
        assert not (xor.cwd / name).exists(), name
    # Artifacts go beside the database named by the URI.
    run = only_run(xor.store)
    assert local_path(run.info.artifact_uri).is_relative_to(xor.store.directory)
    assert (local_path(run.info.artifact_uri) / "config.yaml").is_file()
    # Hydra's run folder stays in the directory the command started in.
    assert len(list((xor.cwd / "outputs").rglob(".hydra"))) == 1


# --- without MLFLOW_TRACKING_URI ---------------------------------------------------------------
def test_without_the_variable_runs_go_to_the_starting_directory(runs: dict[str, Scenario], store_at) -> None:
    scenario = runs["default_store"]
    assert scenario.result.returncode == 0, scenario.output
    start = scenario.cwd.resolve()
    store = store_at(start)
    assert store.db.is_file()
    run = only_run(store)
    assert run.info.status == "FINISHED"
    assert local_path(run.info.artifact_uri).is_relative_to(start / "mlartifacts")
    assert (local_path(run.info.artifact_uri) / "config.yaml").is_file()
    assert f"mlflow ui --workers 1 --backend-store-uri sqlite:///{start / 'mlflow.db'}" in scenario.result.stdout
    assert not (start / "mlruns").exists()
    assert not scenario.store.db.exists()  # the store it was not told about stays untouched


def test_hydra_run_folders_go_under_outputs_without_a_database(runs: dict[str, Scenario]) -> None:
    scenario = runs["default_store"]
    hydra_folders = list((scenario.cwd / "outputs").rglob(".hydra"))
    assert len(hydra_folders) == 1
    assert yaml.safe_load((hydra_folders[0] / "overrides.yaml").read_text()) == ["trainer.epochs=5"]
    assert not list((scenario.cwd / "outputs").rglob("*.db"))


def test_the_default_store_ignores_hydra_job_chdir(runs: dict[str, Scenario]) -> None:
    scenario = runs["chdir"]
    assert scenario.result.returncode == 0, scenario.output
    assert not list((scenario.cwd / "outputs").rglob("mlflow.db"))
    assert (scenario.cwd / "mlflow.db").is_file()


# --- failures and tracking=none ----------------------------------------------------------------
def test_a_diverging_run_exits_non_zero_and_is_failed_with_a_reason(runs: dict[str, Scenario]) -> None:
    scenario = runs["diverging"]
    assert scenario.result.returncode != 0, scenario.output
    assert "diverged" in scenario.result.stderr
    run = only_run(scenario.store)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["failure_reason"]
    history = scenario.store.client().get_metric_history(run.info.run_id, TRAIN_MSE)
    # It really diverged: training stopped early, and nothing non-finite was stored (MLflow
    # would keep inf as 1.8e308).
    assert 0 < len(history) < DIVERGING_EPOCHS
    assert all(math.isfinite(metric.value) and abs(metric.value) < 1e308 for metric in history)


def test_tracking_none_writes_no_store(runs: dict[str, Scenario]) -> None:
    scenario = runs["no_tracking"]
    assert scenario.result.returncode == 0, scenario.output
    assert re.search(r"train_mse=[0-9.]+", scenario.result.stdout), scenario.output
    assert "mlflow ui" not in scenario.result.stdout
    assert not list(scenario.cwd.rglob("*.db"))
    for name in ("mlartifacts", "mlruns"):
        assert not (scenario.cwd / name).exists(), name


def test_tracking_none_does_not_import_mlflow(tmp_path: Path) -> None:
    script = (
        "import sys, json\n"
        "import runner.hydra_app.app\n"
        "from hydra import compose, initialize_config_module\n"
        "from runner.core.run import run\n"
        "with initialize_config_module(config_module='runner.conf', version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['tracking=none', 'trainer.epochs=3'])\n"
        "metrics = run(cfg).metrics\n"
        "print(json.dumps({'mlflow': 'mlflow' in sys.modules, 'metrics': sorted(metrics)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=dying_with_pytest(),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"mlflow": False, "metrics": ["train_accuracy", "train_mse"]}
    assert list(tmp_path.iterdir()) == []


# --- bad overrides -----------------------------------------------------------------------------
# (id, overrides, substrings the message must contain: the full key first). "{data}" is a
# directory holding header_only.csv.
BAD_OVERRIDES = [
    ("lr negative", ("optimizer.lr=-1",), ["optimizer.lr", "-1"]),
    ("lr zero", ("optimizer.lr=0",), ["optimizer.lr", "0"]),
    ("lr not a number", ("optimizer.lr=abc",), ["optimizer.lr", "abc"]),
    ("lr nan", ("optimizer.lr=nan",), ["optimizer.lr", "nan"]),
    ("misspelled key", ("optimizer.lrr=1",), ["optimizer.lrr"]),
    ("added group key", ("+optimizer.foo=1",), ["optimizer.foo"]),
    ("added top-level key", ("+foo=1",), ["foo"]),
    ("unknown option", ("optimizer=sgd",), ["optimizer", "sgd"]),
    ("hidden size zero", ("model.hidden=[0]",), ["model.hidden", "[0]"]),
    ("epochs zero", ("trainer.epochs=0",), ["trainer.epochs", "0"]),
    ("epochs fractional", ("trainer.epochs=1.5",), ["trainer.epochs", "1.5"]),
    ("batch size zero", ("trainer.batch_size=0",), ["trainer.batch_size", "0"]),
    ("val_fraction one", ("dataset.val_fraction=1.0",), ["dataset.val_fraction", "1.0"]),
    ("csv without path", ("dataset=csv", "dataset.targets=[y]"), ["dataset.path"]),
    (
        "csv missing file",
        ("dataset=csv", "dataset.path={data}/missing.csv", "dataset.targets=[y]"),
        ["dataset.path", "missing.csv"],
    ),
    (
        "csv header only",
        ("dataset=csv", "dataset.path={data}/header_only.csv", "dataset.targets=[y]"),
        ["header_only.csv"],
    ),
    ("misspelled activation", ("model.activation=sigmod",), ["model.activation", "sigmod"]),
    ("loss needs softmax", ("trainer.loss=cross_entropy",), ["trainer.loss", "model.output_activation"]),
    ("_target_ injection", ("+optimizer._target_=os.system",), ["optimizer._target_"]),
    (
        "early stopping without validation",
        ("trainer.early_stopping.enabled=true",),
        ["trainer.early_stopping.enabled", "dataset.val_fraction"],
    ),
    ("empty experiment name", ("tracking.experiment=''",), ["tracking.experiment"]),
    (
        "experiment name longer than the store keeps",
        (f"tracking.experiment={'x' * 300}",),
        ["tracking.experiment", "1 to 256 characters"],
    ),
    (
        "misspelled key gets the closest name",
        ("model.hiden=[4]",),
        ["model.hiden: no such key", "did you mean model.hidden?"],
    ),
    (
        "misspelled option gets the closest name",
        ("optimizer=adma",),
        ["optimizer=adma: no such option", "did you mean adam?"],
    ),
    ("unknown top-level key", ("foo=bar",), ["foo: no such key", "the top-level keys are"]),
    ("epochs with a fraction", ("trainer.epochs=2.5e0",), ["trainer.epochs=2.5e0 is not allowed"]),
    ("override that does not parse", ("model.hidden=[1,",), ["cannot read an override"]),
    ("interpolation to nothing", ("trainer.epochs=${{foo}}",), ["trainer.epochs", "Interpolation key 'foo' not found"]),
    (
        "a feature named twice",
        ("dataset=csv", "dataset.path={data}/two_columns.csv", "dataset.targets=[y]", "dataset.features=[a,a]"),
        ["dataset.features", "'a' more than once"],
    ),
]


def case_id(case: Any) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory, run_cli, store_at) -> dict[str, Scenario]:
    base = tmp_path_factory.mktemp("bad")
    data = base / "data"
    data.mkdir()
    (data / "header_only.csv").write_text("a,b,y\n")
    (data / "two_columns.csv").write_text("a,y\n1,0\n2,1\n3,0\n4,1\n5,0\n")
    scenarios = {}
    for index, case in enumerate(BAD_OVERRIDES):
        name, overrides, _ = case.values if hasattr(case, "values") else case
        overrides = tuple(override.format(data=data) for override in overrides)
        scenarios[name] = Scenario(base / f"case{index}", overrides, True, run_cli, store_at)
    return run_all(scenarios)


@pytest.mark.parametrize(("name", "overrides", "expected"), BAD_OVERRIDES, ids=[case_id(c) for c in BAD_OVERRIDES])
def test_a_bad_override_fails_before_any_run_naming_the_key(
    bad_runs: dict[str, Scenario], name: str, overrides: tuple[str, ...], expected: list[str]
) -> None:
    scenario = bad_runs[name]
    assert scenario.result.returncode == 2, scenario.output
    message = scenario.result.stdout + scenario.result.stderr
    for part in expected:
        assert part in message, scenario.output
    assert "Traceback" not in message, scenario.output  # one readable message
    assert "MLflow run" not in scenario.result.stdout
    # Nothing trained or logged: no database at all, or one without runs.
    assert scenario.store.runs() == []
    assert not (scenario.cwd / "mlflow.db").exists()


# --- precedence, without a run -----------------------------------------------------------------------
def test_tracking_uri_precedence(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.tracking.destination import resolve_tracking_uri

    configured = f"sqlite:///{tmp_path / 'configured.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert resolve_tracking_uri(configured, str(tmp_path)) == store.uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(configured, str(tmp_path)) == configured
    # The default is absolute, so it does not move if the process changes directory later.
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None, ".") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("typed", "read"),
    [
        (["model.hidden=4"], ["model.hidden=[4]"]),
        (["trainer.epochs=1e3"], ["trainer.epochs=1000"]),
        (["trainer.epochs=2000.0", "+seed=1E1"], ["trainer.epochs=2000", "+seed=10"]),
        (
            ["-m", "model.hidden=4,8", "trainer.epochs=1e2,2e2"],
            ["-m", "model.hidden=[4],[8]", "trainer.epochs=100,200"],
        ),
        # Left for the config's own message: a fraction, a float key, lists and text as typed.
        (
            ["trainer.epochs=1.5", "optimizer.lr=1e3", "model.hidden=[4,4]", "dataset=xor"],
            ["trainer.epochs=1.5", "optimizer.lr=1e3", "model.hidden=[4,4]", "dataset=xor"],
        ),
    ],
)
def test_whole_numbers_and_single_layers_are_read_as_meant(typed: list[str], read: list[str]) -> None:
    from runner.hydra_app.shorthand import expand

    assert expand(typed) == read


def test_the_shorthands_train_what_they_say(tmp_path: Path, store_at) -> None:
    store = store_at(tmp_path / "store")
    result = cli("model.hidden=4", "trainer.epochs=2e1", cwd=tmp_path / "cwd", uri=store.uri)
    assert result.returncode == 0, result.output
    run = only_run(store)
    assert run.data.params["model.hidden"] == "[4]"
    assert run.data.params["model.layer_sizes"] == "[2, 4, 1]"
    assert run.data.params["trainer.epochs"] == "20"
    assert len(history(store, run)) == 20


def help_sections(page: str) -> dict[str, str]:
    """The help page cut at its headings: {heading: the text up to the next one}."""
    headings = [
        "Config groups (group=option; the default in brackets):",
        "Common commands:",
        "Every key and its value (override any with key=value):",
        "Companion commands (each has --help):",
    ]
    positions = [page.index(heading) for heading in headings]
    assert positions == sorted(positions), page
    ends = [*positions[1:], len(page)]
    return {heading: page[at + len(heading) : end] for heading, at, end in zip(headings, positions, ends)}


def test_help_is_the_apps_own_page(tmp_path: Path, compose) -> None:
    from omegaconf import OmegaConf

    from runner.hydra_app.help import config_groups

    result = cli("--help", "dataset=iris", cwd=tmp_path)
    assert result.returncode == 0, result.output
    page = result.stdout
    assert "powered by Hydra" not in page and "schema/" not in page
    assert page.startswith("bprun: train a multi-layer perceptron")
    sections = help_sections(page)
    # Every group of conf/ with every option, the default marked (the defaults, whatever the overrides).
    listed_groups = sections["Config groups (group=option; the default in brackets):"].strip().splitlines()
    assert len(listed_groups) == len(config_groups())
    for (group, options), line in zip(config_groups().items(), listed_groups):
        name, _, listed = line.strip().partition(": ")
        assert name == group, line
        assert [option.strip().strip("[]") for option in listed.split(", ")] == options, line
    assert [line.split()[0] for line in listed_groups if "[" in line] == [
        "dataset:",
        "model:",
        "optimizer:",
        "tracking:",
        "trainer:",
    ]
    assert "[xor]" in page and "[gd]" in page and "[mlp]" in page and "[local]" in page
    commands = sections["Common commands:"]
    for command in (
        "bprun dataset=moons optimizer=adam",
        "bprun experiment=digits_classifier",
        "bprun -m seed=0,1,2 optimizer.lr=0.1,0.5 hydra.launcher.n_jobs=2",
        "bprun -m hydra/sweeper=optuna",
        "bprun -m hydra/launcher=ray",
        "bprun --cfg job",
    ):
        assert f"\n  {command}" in commands, command
    # Every key of the composed config, with the command line's overrides, and nothing else.
    keys = yaml.safe_load(sections["Every key and its value (override any with key=value):"])
    assert keys == OmegaConf.to_container(compose(["dataset=iris"]))
    assert keys["dataset"]["name"] == "iris" and keys["trainer"]["epochs"] == 1000
    for command in ("bprun-report", "bprun-rerun", "bprun-doctor", "bprun-sync", "--hydra-help"):
        assert command in sections["Companion commands (each has --help):"], command
    assert "Exit codes: 0 done, 1" in page


def test_help_is_the_page_hydra_would_print(tmp_path: Path) -> None:
    """bprun renders the template itself; Hydra's own --help, on the same template, prints the same."""
    arguments = ["--help", "experiment=iris_classifier", "optimizer.lr=0.5", "--resolve"]
    ours = cli(*arguments, cwd=tmp_path)
    code = f"import sys; sys.argv = ['bprun', *{arguments!r}]; from runner.hydra_app.app import main; main()"
    hydra_s = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_environment(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert ours.returncode == hydra_s.returncode == 0, ours.output + hydra_s.stderr
    assert ours.stdout == hydra_s.stdout
    assert "lr: 0.5" in ours.stdout


@pytest.mark.parametrize(
    ("arguments", "request_"),
    [
        (["--help"], ((), "config", False)),
        (["dataset=iris", "-h", "--resolve"], (("dataset=iris",), "config", True)),
        (["-m", "--help", "seed=0,1", "model=deep"], (("seed=0,1", "model=deep"), "config", False)),
        (["-cn", "config", "a=1", "--help"], (("a=1",), "config", False)),
        (["--config-name=other", "--help"], ((), "other", False)),
        # Not a help request, or one bprun leaves to Hydra (which may refuse the command line).
        (["a=1"], None),
        (["--cfg", "job"], None),
        (["a=1", "--help", "b=2"], None),
        (["--config-dir", "presets", "--help"], None),
        (["--help", "--hydra-help"], None),
        (["--help", "-cn"], None),
        (["--help", "--version"], None),
    ],
)
def test_bprun_renders_the_help_hydra_s_parser_would_show(arguments: list[str], request_: tuple | None) -> None:
    from runner.hydra_app.help import HelpRequest, help_request

    assert help_request(arguments) == (HelpRequest(*request_) if request_ else None)


def test_rendering_the_help_page_does_not_list_hydra_s_config_groups(
    compose, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra's own --help lists every config group for placeholders bprun's template does not
    print, copying its whole config repository once per group, a cost that grows with every
    sweeper and launcher config. bprun's page needs none of it."""
    from hydra import initialize_config_module
    from hydra.core.config_loader import ConfigLoader
    from hydra.core.global_hydra import GlobalHydra

    from runner.hydra_app.help import print_help

    compose([])  # Hydra's config loader is imported by now
    calls: list[tuple] = []
    loaders = ConfigLoader.__subclasses__()
    assert loaders
    for loader in loaders:

        def counted(self: Any, *args: Any, original: Any = loader.get_group_options, **kwargs: Any) -> Any:
            calls.append(args)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(loader, "get_group_options", counted)
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        assert "mlp" in GlobalHydra.instance().config_loader().get_group_options("model")
    assert len(calls) == 1  # the wrapper sees Hydra's per-group listing
    calls.clear()

    assert print_help(["--help", "dataset=iris"])
    page = capsys.readouterr().out
    assert "  name: iris" in page and "model:" in page
    assert len(calls) <= 2, calls


@pytest.mark.parametrize("flag", ["--shell-completion", "-sc"])
def test_shell_completion_without_what_to_do_says_what_it_needs(flag: str, tmp_path: Path) -> None:
    result = cli(flag, cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "bprun: --shell-completion needs what to do: install=bash (or zsh, fish), uninstall=bash or query=...; "
        'for example: eval "$(bprun -sc install=bash)"'
    ]
    installed = cli(flag, "install=bash", cwd=tmp_path)
    assert installed.returncode == 0 and "complete" in installed.stdout, installed.output


def test_two_runs_started_together_get_folders_and_logs_of_their_own(tmp_path: Path, store_at) -> None:
    import json as json_module

    from support import run_parallel

    store = store_at(tmp_path / "store")
    results = run_parallel(
        {
            epochs: (lambda epochs=epochs: cli(f"trainer.epochs={epochs}", cwd=tmp_path / "cwd", uri=store.uri))
            for epochs in (3, 4)
        }
    )
    assert all(result.returncode == 0 for result in results.values()), [r.output for r in results.values()]
    folders = sorted(path.parent for path in (tmp_path / "cwd" / "outputs").rglob("mlflow_run.json"))
    assert len(folders) == 2
    run_ids = {json_module.loads((folder / "mlflow_run.json").read_text())["run_id"] for folder in folders}
    assert run_ids == {run.info.run_id for run in store.runs()}
    for folder in folders:
        log = (folder / "bprun.log").read_text()
        run_id = json_module.loads((folder / "mlflow_run.json").read_text())["run_id"]
        assert "bprun: completed" in log and f"MLflow run {run_id}" in log, log
