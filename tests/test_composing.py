"""``JobComposer`` against Hydra's ``load_sweep_config``, job by job: the same config (the Hydra
node included), the same resolved values, the same refusals, for grids and Optuna-like trials that
mix config-group and value overrides. In one process, through Hydra's Compose API."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra import initialize_config_module
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import runner.hydra_app.app  # noqa: F401 (registers bprun's schemas and plugins with Hydra)
from runner.core.validation import validate
from runner.hydra_app.errors import describe
from runner.sweeps.composing import MIRRORED_HYDRA_VERSIONS, JobComposer
from runner.sweeps.grid import GridSweeper


@pytest.fixture(scope="module")
def loader() -> Iterator[ConfigLoader]:
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def master(loader: ConfigLoader, overrides: Sequence[str]) -> DictConfig:
    """The sweep's config, as ``bprun -m <overrides>`` composes it before the sweeper starts."""
    return loader.load_configuration(config_name="config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)


def grid_jobs(loader: ConfigLoader, config: DictConfig) -> list[list[str]]:
    """The jobs bprun's grid sweeper plans from the sweep's command line."""
    sweeper = GridSweeper()
    sweeper.hydra_context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
    return sweeper.jobs(list(config.hydra.overrides.task))


def launched(config: DictConfig, number: int) -> DictConfig:
    """``config`` with the job number and id a launcher gives it."""
    with open_dict(config):
        config.hydra.job.id = f"job_{number}"
        config.hydra.job.num = number
    return config


def shape(node: Any, path: str = "") -> dict[str, tuple[Any, ...]]:
    """Each container's kind, flags and object type, by path: what ``to_container`` does not show."""
    found: dict[str, tuple[Any, ...]] = {}
    if isinstance(node, (DictConfig, ListConfig)):
        found[path] = (type(node), OmegaConf.is_struct(node), OmegaConf.is_readonly(node), OmegaConf.get_type(node))
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            if not OmegaConf.is_missing(node, key) and not OmegaConf.is_interpolation(node, key):
                found.update(shape(node[key], f"{path}.{key}"))
    return found


def resolved_settings(config: DictConfig) -> dict[str, Any]:
    """Every key but ``hydra``, interpolations resolved."""
    plain = {}
    for key in config:
        if key != "hydra" and not OmegaConf.is_missing(config, key):
            value = config[key]
            plain[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return plain


def assert_same_as_hydra(loader: ConfigLoader, sweep: DictConfig, jobs: list[list[str]]) -> JobComposer:
    composer = JobComposer(HydraContext(config_loader=loader, callbacks=None), sweep)  # type: ignore[arg-type]
    for number, overrides in enumerate(jobs):
        fast = launched(composer.compose(overrides), number)
        slow = launched(loader.load_sweep_config(sweep, overrides), number)
        assert OmegaConf.to_container(fast, resolve=False) == OmegaConf.to_container(slow, resolve=False), overrides
        assert resolved_settings(fast) == resolved_settings(slow), overrides
        assert shape(fast) == shape(slow), overrides
        assert OmegaConf.get_cache(fast) == OmegaConf.get_cache(slow)
    return composer


def test_the_installed_hydra_is_one_the_composer_mirrors() -> None:
    # Under another version every job is composed by Hydra: correct, and as slow as before.
    assert hydra.__version__ in MIRRORED_HYDRA_VERSIONS


def test_a_grid_of_groups_and_values_composes_as_hydra_composes_it(loader: ConfigLoader) -> None:
    sweep = master(
        loader,
        [
            "dataset=xor,moons",
            "optimizer=gd,adam",
            "optimizer.lr=0.1,0.5",
            "model.hidden=[4],[4,8]",
            "seed=3",
            "trainer.epochs=20",
            "tracking=none",
            "hydra.launcher.n_jobs=2",
        ],
    )
    assert str(sweep.hydra.sweep.dir)  # fills the master's ${now:} cache, as the sweeper's first look does
    jobs = grid_jobs(loader, sweep)
    assert len(jobs) == 16
    composer = assert_same_as_hydra(loader, sweep, jobs)
    assert (composer.counts.group_lists, composer.counts.copied, composer.counts.by_hydra) == (4, 16, 0)


def test_a_range_grid_with_a_preset_and_hydra_settings_composes_as_hydra_composes_it(loader: ConfigLoader) -> None:
    sweep = master(
        loader,
        [
            "experiment=iris_classifier",
            "optimizer.lr=range(0.1,0.4,0.1)",
            "hydra.job.config.override_dirname.exclude_keys=[seed]",
            "hydra.job.config.override_dirname.kv_sep=:",
            "hydra/launcher=basic",
        ],
    )
    jobs = grid_jobs(loader, sweep)
    jobs += [[*job, "seed=7"] for job in jobs]
    jobs.append(["optimizer.lr=0.30000000000000004"])  # the grid launches 0.3; another sweeper may not
    composer = assert_same_as_hydra(loader, sweep, jobs)
    assert composer.counts.by_hydra == 0


OPTUNA_LIKE_TRIALS = [
    ["trainer.epochs=50", "optimizer=adam", "optimizer.lr=0.012345678901234", "model.hidden=[8, 8]", "seed=3"],
    ["trainer.epochs=50", "optimizer=gd", "optimizer.lr=1.5", "model.hidden=[16]", "seed=3"],
    ["trainer.epochs=50", "dataset=moons", "optimizer=adam", "optimizer.beta1=0.8", "optimizer.lr=1e-05"],
    ["optimizer.lr=0.5", "dataset=moons", "optimizer=adam"],  # the same groups in another order
    ["experiment=iris_classifier", "optimizer.lr=0.2", "trainer.batch_size=null"],
    ["experiment=xor_sigmoid", "model.hidden=[]", "trainer.epochs=${seed}", "seed=5"],
    ["optimizer=momentum", "optimizer.momentum=0.5", "+note='a quoted string, with ${seed}'"],
    ["++seed=11", "+extra={a: 1, b: [1, 2]}", "++tracking.run_name=run-${seed}", "dataset.noise=0.3"],
    ["+optimizer.schedule={name: step}", "++trainer.early_stopping={enabled: true, patience: 3}"],  # merged
    ["trainer.early_stopping.min_delta=0.5", "trainer.early_stopping={patience: 3}"],  # merged, min_delta kept
    ["+extra={a: 1, b: 2}", "~extra.a", "~seed=0", "optimizer.schedule.name=step", "optimizer.schedule.step_size=5"],
    ["hydra.launcher.n_jobs=3", "seed=1", "++hydra.job.env_set.BPRUN_PARENT_RUN_ID='abc%27def'"],
    ["hydra/launcher=basic", "seed=2", "hydra.job.config.override_dirname.item_sep=+"],
    ["hydra.job.config.override_dirname.exclude_keys=[seed,optimizer]", "optimizer=adam", "seed=4"],
    ["model=wide", "model.hidden.0=3", "seed=9"],  # a list's element
    ["~experiment", "~dataset", "seed=9"],  # config-group deletions (dataset: left missing)
]


def test_optuna_like_trials_compose_as_hydra_composes_them(loader: ConfigLoader) -> None:
    sweep = master(loader, ["hydra/sweeper=optuna", "tracking=none", "hydra.sweeper.n_trials=13"])
    composer = assert_same_as_hydra(loader, sweep, OPTUNA_LIKE_TRIALS)
    assert composer.counts.by_hydra == 0
    assert composer.counts.group_lists < len(OPTUNA_LIKE_TRIALS)


def test_what_hydra_reads_as_it_composes_is_read_for_each_job(
    loader: ConfigLoader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The environment (``hydra.job.env_copy``), the working directory and the master's resolver
    cache, as they are when the job is composed, not when its group list was."""
    monkeypatch.setenv("BPRUN_TEST_COPIED", "first")
    sweep = master(loader, ["seed=0,1", "hydra.job.env_copy=[BPRUN_TEST_COPIED]"])
    composer = JobComposer(HydraContext(config_loader=loader, callbacks=None), sweep)  # type: ignore[arg-type]
    first = composer.compose(["seed=0"])
    assert first.hydra.job.env_set.BPRUN_TEST_COPIED == "first"
    monkeypatch.setenv("BPRUN_TEST_COPIED", "second")
    monkeypatch.chdir(tmp_path)
    assert str(sweep.hydra.sweep.dir)  # ${now:} resolved on the master: its cache grows
    second = composer.compose(["seed=1"])
    assert second.hydra.job.env_set.BPRUN_TEST_COPIED == "second"
    assert second.hydra.runtime.cwd == str(tmp_path)
    assert OmegaConf.get_cache(second) == OmegaConf.get_cache(sweep) != OmegaConf.get_cache(first)
    assert_same_as_hydra(loader, sweep, [["seed=1"], ["seed=0", "++hydra.job.env_set.OTHER=x"]])


def test_a_job_the_copy_cannot_reproduce_is_composed_by_hydra(loader: ConfigLoader) -> None:
    sweep = master(loader, ["seed=0,1", "hydra.job.env_copy=[HOME]"])
    unusual = [
        ["hydra.job.name=other", "seed=1"],  # Hydra sets the field after the overrides
        ["++hydra.runtime.choices.extra=x"],
        ["hydra.job.env_copy=[]"],
        ["++hydra.job.env_set.HOME=elsewhere"],  # env_copy fills it after the overrides
        ["optimizer={lr: 0.5}", "optimizer.lr=0.25"],  # a dict for a group is a value, applied in order
        ["model={hidden: [2, 2], activation: tanh}", "dataset=circles"],
        ["hydra.searchpath=[]", "seed=1"],  # read before composing
    ]
    composer = assert_same_as_hydra(loader, sweep, unusual)
    assert composer.counts.by_hydra == len(unusual)
    assert os.environ["HOME"] == composer.compose(["seed=1"]).hydra.job.env_set.HOME


def test_a_composed_job_is_a_copy_that_no_other_job_sees(loader: ConfigLoader) -> None:
    sweep = master(loader, ["seed=0,1"])
    composer = JobComposer(HydraContext(config_loader=loader, callbacks=None), sweep)  # type: ignore[arg-type]
    first = composer.compose(["seed=0"])
    first.model.hidden.append(99)
    first.hydra.overrides.task.append("x=1")
    assert_same_as_hydra(loader, sweep, [["seed=0"]])
    second = composer.compose(["seed=1"])
    assert list(second.model.hidden) == [8] and list(second.hydra.overrides.task) == ["seed=1"]
    validate(second)  # what the sweeper does with it next


BAD_JOBS = [
    (["optimizer.lr=fast"], "optimizer.lr=fast"),  # a type error
    (["trainer.epochs=[1,2]"], "trainer.epochs=[1,2]"),
    (["optimizer.nope=1"], "optimizer.nope"),  # an unknown key without +
    (["dataset=xor", "optimizer=adam", "optimizer.bogus=2"], "optimizer.bogus"),
    (["+seed=3"], "seed"),  # + on a key that exists
    (["~optimizer.nope"], "optimizer.nope"),  # deleting what does not exist
    (["~seed=5"], "seed"),  # deleting a key whose value is another
    (["~optimizer.schedule.min_lr"], "optimizer.schedule.min_lr"),  # deleting a field of a schema
    (["dataset=nope"], "dataset=nope"),  # a config group's option that does not exist
    (["seed=1,2"], "seed=1,2"),  # a sweep inside a job
    (["seed=[1"], "'[1'"),  # what Hydra cannot parse
    (["seed@x=1"], "seed@x=1"),  # a package on what is not a config group
]


@pytest.fixture(scope="module")
def seeds(loader: ConfigLoader) -> tuple[DictConfig, JobComposer]:
    """A sweep over seeds and its composer, its default group list composed already."""
    sweep = master(loader, ["seed=0,1"])
    composer = JobComposer(HydraContext(config_loader=loader, callbacks=None), sweep)  # type: ignore[arg-type]
    composer.compose(["seed=0"])
    return sweep, composer


@pytest.mark.parametrize(("overrides", "named"), BAD_JOBS, ids=[" ".join(job) for job, _ in BAD_JOBS])
def test_a_bad_value_is_refused_as_hydra_refuses_it(
    loader: ConfigLoader, seeds: tuple[DictConfig, JobComposer], overrides: list[str], named: str
) -> None:
    sweep, composer = seeds
    with pytest.raises(Exception) as hydras:
        loader.load_sweep_config(sweep, overrides)
    with pytest.raises(Exception) as ours:
        composer.compose(copy.copy(overrides))
    assert type(ours.value) is type(hydras.value)
    assert str(ours.value) == str(hydras.value)
    assert type(ours.value.__cause__) is type(hydras.value.__cause__)
    message = describe(ours.value)
    assert message == describe(hydras.value)
    assert named in message and "\n" not in message
