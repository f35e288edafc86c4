"""The verdict of ``bprun-rerun`` from plain values (``runner.reports.comparison``): metric
histories, weight arrays and tag dicts in, ``identical`` or where the runs first differ out. No
store, no file, no training: each test builds the two runs' records by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.reports.comparison import (
    Comparison,
    RunRecord,
    compare_histories,
    compare_runs,
    compare_weights,
    provenance_warnings,
    uncommitted_changes_matter,
    uncommitted_changes_warning,
)

HISTORIES = {
    "train_mse": {0: 0.5, 1: 0.25, 2: 0.125},
    "val_mse": {0: 0.5, 1: 0.375, 2: 0.25},
    "train_accuracy": {0: 0.5, 1: 0.75, 2: 0.75},
}
WEIGHTS = {"W1": np.arange(6.0).reshape(2, 3), "b1": np.array([np.nan, 1.0, np.inf]), "W2": np.ones((3, 1))}


def record(
    histories: dict[str, dict[int, float]] | None = None,
    weights: dict[str, np.ndarray] | None = WEIGHTS,
    status: str = "FINISHED",
    epochs_run: str | None = "3",
) -> RunRecord:
    """A run's record; every argument a copy, so that a test changing one side leaves the other."""
    histories = HISTORIES if histories is None else histories
    tags = {} if epochs_run is None else {"epochs_run": epochs_run}
    copied = None if weights is None else {name: array.copy() for name, array in weights.items()}
    return RunRecord(status, tags, {name: dict(values) for name, values in histories.items()}, copied)


def with_value(histories: dict[str, dict[int, float]], name: str, epoch: int, value: float) -> dict:
    changed = {metric: dict(values) for metric, values in histories.items()}
    changed[name][epoch] = value
    return changed


# --- identical -------------------------------------------------------------------------------
def test_identical_runs_are_identical_bit_for_bit() -> None:
    comparison = compare_runs(record(), record(), tolerance=0.0)
    assert comparison.result == "identical" and comparison.identical
    assert (comparison.first, comparison.mismatches, comparison.weights_differ) == (None, [], False)
    assert (comparison.largest, comparison.largest_where) == (0.0, None)
    assert (comparison.epochs_compared, comparison.weights_compared) == (3, True)
    assert comparison.describe() == "identical (3 epoch(s) and the final weights compared)"


def test_nans_and_equal_infinities_agree() -> None:
    histories = {"train_mse": {0: math.nan, 1: math.inf}}
    comparison = compare_runs(record(histories, epochs_run="2"), record(histories, epochs_run="2"), 0.0)
    assert comparison.result == "identical"
    assert comparison.largest == 0.0


# --- where the runs first differ --------------------------------------------------------------
def test_first_difference_is_the_earliest_epoch_and_the_mse_is_named_first() -> None:
    rerun = with_value(with_value(HISTORIES, "train_mse", 2, 0.126), "val_mse", 1, 0.3750001)
    rerun = with_value(rerun, "train_accuracy", 1, 1.0)
    comparison = compare_runs(record(), record(rerun), tolerance=0.0)
    # Epoch 1 is the earliest; of the two metrics differing there, the mse is named first.
    assert comparison.first is not None
    assert (comparison.first.epoch, comparison.first.where) == (1, "val_mse")
    assert (comparison.first.original, comparison.first.rerun) == (0.375, 0.3750001)
    # The largest difference is the accuracy jump of 0.25 at epoch 1.
    assert comparison.largest == pytest.approx(0.25)
    assert comparison.largest_where == "train_accuracy at epoch 1"
    assert comparison.describe() == (
        "different: first at epoch 1 in val_mse (original 0.375, rerun 0.3750001); "
        "largest absolute difference 0.25 (train_accuracy at epoch 1) (3 epoch(s) and the final weights compared)"
    )


def test_differing_weights_alone_make_the_runs_different() -> None:
    nudged = {name: array.copy() for name, array in WEIGHTS.items()}
    nudged["W2"][1, 0] += 0.002
    comparison = compare_runs(record(), record(weights=nudged), tolerance=0.0)
    assert comparison.result == "different"
    assert comparison.first is None and comparison.weights_differ
    assert comparison.largest == pytest.approx(0.002) and comparison.largest_where == "layer2 weights"
    assert comparison.describe() == (
        "different: every compared metric agrees but the final weights differ; largest absolute difference "
        "0.002 (layer2 weights) (3 epoch(s) and the final weights compared)"
    )


def test_one_nan_against_a_number_differs_whatever_the_tolerance() -> None:
    comparison = Comparison(tolerance=1e300)
    compare_weights({"W1": np.array([np.nan])}, {"W1": np.array([0.0])}, comparison)
    assert comparison.weights_differ and comparison.largest == math.inf
    histories = Comparison(tolerance=1e300)
    compare_histories({"train_mse": {0: math.nan}}, {"train_mse": {0: 0.5}}, histories)
    assert histories.first is not None and (histories.first.epoch, histories.largest) == (0, math.inf)


# --- tolerance -------------------------------------------------------------------------------
def test_tolerance_is_a_strict_bound_on_the_absolute_difference() -> None:
    rerun = with_value(HISTORIES, "train_mse", 0, 0.5 + 2**-20)
    within = compare_runs(record(), record(rerun), tolerance=2**-20)
    assert within.result == "identical" and within.largest == 2**-20
    assert within.describe() == (
        "identical within tolerance 9.53674e-07 (3 epoch(s) and the final weights compared): "
        "largest absolute difference 9.54e-07 (train_mse at epoch 0)"
    )
    beyond = compare_runs(record(), record(rerun), tolerance=2**-21)
    assert beyond.result == "different"
    assert beyond.first is not None and (beyond.first.epoch, beyond.first.where) == (0, "train_mse")


def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_refused() -> None:
    for tolerance in (-1e-9, math.inf, math.nan):
        with pytest.raises(ValueError, match="it must be a finite number >= 0"):
            compare_runs(record(), record(), tolerance)


# --- what one side lacks ---------------------------------------------------------------------
def test_weights_saved_by_one_run_only_are_a_difference() -> None:
    only_rerun = compare_runs(record(weights=None), record(), tolerance=0.0)
    assert only_rerun.result == "different" and only_rerun.weights_differ
    assert only_rerun.mismatches == ["only the rerun saved weights.npz"]
    only_original = compare_runs(record(), record(weights=None), tolerance=1.0)
    assert only_original.mismatches == ["only the original saved weights.npz"]
    assert only_original.describe().startswith(
        "different: every compared metric agrees but the final weights differ; only the original saved weights.npz"
    )


def test_neither_run_saving_weights_is_no_difference() -> None:
    """Both diverged: neither has weights.npz, and the statuses say the rest."""
    comparison = compare_runs(record(weights=None, status="FAILED"), record(weights=None, status="FAILED"), 0.0)
    assert comparison.result == "identical"
    assert comparison.weights_differ is False


def test_weight_arrays_of_one_side_or_of_another_shape_are_differences() -> None:
    comparison = Comparison(tolerance=1.0)
    compare_weights(
        {"W1": np.zeros((2, 3)), "b1": np.zeros(3)}, {"W1": np.zeros((3, 2)), "b2": np.zeros(1)}, comparison
    )
    assert comparison.weights_differ
    assert comparison.mismatches == [
        "layer1 weights have shape (2, 3) in the original, (3, 2) in the rerun",
        "layer1 biases exist only in the original",
        "layer2 biases exist only in the rerun",
    ]


def test_missing_and_extra_metrics_and_epochs_are_differences() -> None:
    original = {"train_mse": {0: 0.5, 1: 0.4, 2: 0.3}, "val_mse": {0: 0.5, 1: 0.4, 2: 0.3}}
    rerun = {"train_mse": {0: 0.5, 1: 0.4}, "val_accuracy": {0: 0.5, 1: 0.5, 2: 0.5}}
    comparison = compare_runs(record(original), record(rerun), tolerance=1.0)
    assert comparison.result == "different"
    # Epoch 2 of train_mse exists only in the original: the first difference, at any tolerance.
    assert comparison.first is not None
    assert (comparison.first.epoch, comparison.first.where, comparison.first.rerun) == (2, "train_mse", None)
    assert comparison.mismatches == ["the rerun has no val_mse", "the original has no val_accuracy"]
    assert "first at epoch 2 in train_mse (original 0.3, rerun none)" in comparison.describe()


def test_status_and_epoch_count_must_agree() -> None:
    comparison = compare_runs(record(), record(status="FAILED", epochs_run="2"), tolerance=0.0)
    assert comparison.mismatches == [
        "status: original FINISHED, rerun FAILED",
        "the original ran 3 epochs, the rerun 2",
    ]
    unknown = compare_runs(record(epochs_run=None), record(), tolerance=0.0)
    assert unknown.mismatches == ["the original ran an unknown number of epochs, the rerun 3"]


# --- a killed original -----------------------------------------------------------------------
def test_a_killed_original_is_compared_over_the_epochs_it_logged_without_weights() -> None:
    logged = {
        name: {epoch: value for epoch, value in values.items() if epoch < 2} for name, values in HISTORIES.items()
    }
    # The rerun trains the whole config: a third epoch, other weights and another status.
    rerun = with_value(HISTORIES, "train_mse", 2, 99.0)
    comparison = compare_runs(
        record(logged, weights=None, status="KILLED", epochs_run="2"),
        record(rerun, weights={"W1": np.zeros(1)}),
        tolerance=0.0,
    )
    assert comparison.result == "identical"
    assert (comparison.epochs_compared, comparison.weights_compared) == (2, False)
    assert comparison.describe() == (
        "identical (2 epoch(s) compared; the original was KILLED after 2 epoch(s), "
        "so only those, and no final weights, are compared)"
    )
    differing = compare_runs(
        record(logged, weights=None, status="KILLED"), record(with_value(HISTORIES, "val_mse", 1, 0.0)), 0.0
    )
    assert differing.first is not None and (differing.first.epoch, differing.first.where) == (1, "val_mse")


# --- provenance ------------------------------------------------------------------------------
def test_provenance_warnings_list_every_differing_tag_old_to_new() -> None:
    original = {
        "git.commit": "aaa",
        "git.dirty": "false",
        "version.numpy": "2.4.6",
        "config.sha256": "x",
        "cwd_git.commit": "c",
        "blas.threads": "1",
        "blas.library": "openblas",
    }
    current = {
        "git.commit": "bbb",
        "git.dirty": "false",
        "version.numpy": "2.4.6",
        "config.sha256": "y",
        "cwd_git.commit": "d",
        "blas.threads": "2",
        "version.mlflow": "3.17.2",
    }
    # config.sha256 and cwd_git.* describe the command, not the code: not compared.
    assert provenance_warnings(original, current) == [
        "blas.library: openblas -> not recorded",
        "blas.threads: 1 -> 2",
        "git.commit: aaa -> bbb",
        "version.mlflow: not recorded -> 3.17.2",
    ]
    assert provenance_warnings(original, dict(original)) == []


def test_uncommitted_changes_are_compared_only_on_the_same_commit_with_both_trees_dirty() -> None:
    dirty = {"git.commit": "aaa", "git.dirty": "true"}
    assert uncommitted_changes_matter(dirty, dict(dirty))
    assert not uncommitted_changes_matter(dirty, {"git.commit": "aaa", "git.dirty": "false"})
    assert not uncommitted_changes_matter(dirty, {"git.commit": "bbb", "git.dirty": "true"})
    assert not uncommitted_changes_matter({"git.commit": "aaa"}, {"git.commit": "aaa"})


def test_uncommitted_changes_warning_names_the_files_whose_changes_differ() -> None:
    engine = "diff --git a/engine/mlp.py b/engine/mlp.py\n--- a/engine/mlp.py\n+++ b/engine/mlp.py\n+x = 1\n"
    readme = "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n+hello\n"
    then = "# untracked files (contents not included):\n#   notes.txt\n" + engine + readme
    # Other untracked files, the same README change, another change to the engine.
    now = "# untracked files (contents not included):\n#   outputs/x\n" + engine.replace("x = 1", "x = 2") + readme
    assert uncommitted_changes_warning(then, now) == (
        "git.diff: the uncommitted changes differ from the original's (artifact git_diff.patch) in engine/mlp.py"
    )
    assert uncommitted_changes_warning(then, engine + readme) is None  # untracked files do not count
    assert uncommitted_changes_warning(readme, "") == (
        "git.diff: the uncommitted changes differ from the original's (artifact git_diff.patch) in README.md"
    )
