"""Pruning and whole batches in an Optuna sweep, read back from the store.

A sweep of 8 trials with the median pruner, planned in whole batches of 2 on 2 workers
(``asynchronous=false``): some trials are pruned, each ending FINISHED with
``stop_reason=pruned``, its metrics logged up to the epoch it stopped at, and shown PRUNED in its
job line, the summary and ``bprun-report``; a batch starts once the one before it has ended; the
same sweep run again proposes the same trials and prunes them at the same epochs; ``bprun-rerun``
of a pruned run is identical, pruning point included.

A trial's pruner, given the other trials as the store holds them, prunes a trial that falls
behind them and keeps one that leads, for every pruner bprun offers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import cli, history

EPOCHS = 300
SWEEP = (
    "-m",
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=8",
    "hydra.sweeper.asynchronous=false",
    "hydra.sweeper.n_jobs=2",
    "hydra.launcher.n_jobs=2",
    "hydra.sweeper.pruner=median",
    "+hydra.sweeper.pruner_args={n_startup_trials:2,n_warmup_steps:20}",
    "optimizer.lr=tag(log,interval(0.01,5))",
    f"trainer.epochs={EPOCHS}",
    "tracking.tensors_every=0",
)


def trials(store: Any) -> dict[int, Any]:
    """The sweep's runs by trial number."""
    return {int(run.data.tags["optuna.trial"]): run for run in store.runs() if "optuna.trial" in run.data.tags}


def outcome(run: Any) -> tuple[str, str, float]:
    return run.data.tags["stop_reason"], run.data.params["optimizer.lr"], run.data.metrics["1_loss/train_mse"]


@pytest.fixture(scope="module")
def pruned_sweep(make_store, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    store = make_store("pruned")
    result = cli(*SWEEP, cwd=tmp_path_factory.mktemp("cwd"), uri=store.uri)
    assert result.returncode == 0, result.output
    return store, result


@pytest.mark.slow
def test_pruned_trials_end_at_their_epoch_with_their_metrics(pruned_sweep: tuple[Any, Any]) -> None:
    store, result = pruned_sweep
    runs = trials(store)
    assert sorted(runs) == list(range(8))
    pruned = [run for run in runs.values() if run.data.tags["stop_reason"] == "pruned"]
    full = [run for run in runs.values() if run.data.tags["stop_reason"] == "completed"]
    assert pruned and full and len(pruned) + len(full) == 8
    for run in runs.values():
        assert run.info.status == "FINISHED"
        steps = [metric.step for metric in history(store, run)]
        epochs = int(run.data.tags["epochs_run"])
        assert steps == list(range(epochs)), run.info.run_name  # contiguous up to the epoch it stopped at
        assert (epochs < EPOCHS) == (run in pruned), run.info.run_name
    lines = result.stdout.splitlines()
    for run in pruned:
        assert any(f"] {run.info.run_name}: PRUNED train_mse=" in line for line in lines), result.stdout
        assert any(f"{run.info.run_name}  PRUNED" in line for line in lines), result.stdout  # the summary table
    (parent,) = [run for run in store.runs() if run.data.tags.get("bprun.sweep") == "true"]
    report = cli(
        "--parent", parent.info.run_id, cwd=Path(store.directory), uri=store.uri, module="runner.commands.report"
    )
    assert report.returncode == 0, report.output
    assert report.stdout.count("PRUNED") >= len(pruned), report.stdout


@pytest.mark.slow
def test_whole_batches_start_once_the_batch_before_has_ended(pruned_sweep: tuple[Any, Any]) -> None:
    _, result = pruned_sweep
    lines = result.stdout.splitlines()

    def first(prefix: str, *endings: str) -> int:
        # Anywhere in a line: the workers and bprun write to one pipe, and a line of one may
        # land inside a line of another.
        found = [i for i, line in enumerate(lines) if prefix in line and any(e in line for e in endings)]
        assert found, f"no line with {prefix!r} and {endings}:\n{result.stdout}"
        return found[0]

    for k in range(3, 9, 2):  # jobs k and k+1 are a batch
        started = min(first(f"[{k}/8] ", ": started"), first(f"[{k + 1}/8] ", ": started"))
        for before in (k - 2, k - 1):
            assert first(f"[{before}/8] ", ": FINISHED ", ": PRUNED ") < started, result.stdout


@pytest.mark.slow
def test_the_same_sweep_in_whole_batches_proposes_and_prunes_the_same(
    pruned_sweep: tuple[Any, Any], make_store, tmp_path: Path
) -> None:
    store, _ = pruned_sweep
    again = make_store("again")
    result = cli(*SWEEP, cwd=tmp_path, uri=again.uri)
    assert result.returncode == 0, result.output
    first, second = trials(store), trials(again)
    assert {n: outcome(run) for n, run in first.items()} == {n: outcome(run) for n, run in second.items()}


@pytest.mark.slow
def test_a_rerun_of_a_pruned_trial_is_identical(pruned_sweep: tuple[Any, Any], tmp_path: Path) -> None:
    store, _ = pruned_sweep
    run = next(run for run in trials(store).values() if run.data.tags["stop_reason"] == "pruned")
    rerun = cli(run.info.run_id, "--tracking-uri", store.uri, cwd=tmp_path, module="runner.commands.rerun")
    assert rerun.returncode == 0, rerun.output
    assert "identical" in rerun.stdout, rerun.output
    (copy,) = [r for r in store.runs() if r.data.tags.get("rerun_of") == run.info.run_id]
    assert copy.data.tags["stop_reason"] == "pruned" and copy.data.tags["epochs_run"] == run.data.tags["epochs_run"]
    assert [m.value for m in history(store, copy)] == [m.value for m in history(store, run)]


@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving", "hyperband"])
def test_a_trials_pruner_stops_it_behind_the_others_it_read(pruner: str) -> None:
    from engine import EpochReport
    from runner.sweeps.pruning import OtherTrial, PrunerSpec, Pruning

    def curve(level: float) -> tuple[float, ...]:
        return tuple(level + 1.0 / (epoch + 1) for epoch in range(60))

    others = [OtherTrial(number, False, curve(0.1 * number)) for number in range(30)]
    args = {"percentile": {"percentile": 50.0}}.get(pruner, {})

    def stopped_at(level: float) -> int | None:
        spec = PrunerSpec(pruner, args, "val_mse", "minimize", "study", trial=30, seen_before=30)
        pruning = Pruning(spec, "mse", others)
        for epoch, value in enumerate(curve(level)):
            pruning.on_epoch_end(EpochReport(epoch, 0.1, {"loss": value}, {"loss": value}, [], [], None, None))
            if pruning.stop_training() is not None:
                return epoch
        return None

    assert stopped_at(10.0) is not None  # far behind every other trial
    assert stopped_at(-1.0) is None  # ahead of them all
