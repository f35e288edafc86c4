"""Comparing a run with its rerun: plain values in, a verdict out.

A run is described by a ``RunRecord``: its status, its tags (``{name: value}``), its metric
histories (``{metric: {epoch: value}}``) and its final weights (``{"W1": array, "b1": array,
...}``, or None when the run saved no ``weights.npz``). ``compare_runs`` turns two records into a
``Comparison``, whose ``result`` is ``identical`` or ``different`` and whose ``describe()`` says
where the runs first differ. ``provenance_warnings`` and ``uncommitted_changes_warning`` say
what differs in how the two runs were made.

Nothing here opens a store, reads a file or composes a config: ``runner.reports.rerun`` fetches
what the runs recorded and hands the values over, so that the rules of the verdict hold the same
for one rerun and for a loop over many.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from runner import names

# Provenance that can change the numbers. cwd_git.* describes where a command was started, not
# the code that ran; config.sha256 changes whenever the rerun adjusts the config (experiment
# name, a CSV path made absolute), and the config itself is what the rerun runs.
COMPARED_TAG_PREFIXES = (names.GIT_TAG_PREFIX, names.VERSION_TAG_PREFIX, names.BLAS_TAG_PREFIX)
COMPARED_METRIC_PREFIXES = ("train_", "val_")
# At one epoch several metrics usually differ together; name the one people look at first.
METRIC_PRIORITY = ("mse", "loss", "accuracy")
NOT_RECORDED = "not recorded"
IDENTICAL = "identical"
DIFFERENT = "different"
# MLflow's status of a run stopped by a signal: its history is a prefix of what its config trains.
KILLED = "KILLED"

Histories = Mapping[str, Mapping[int, float]]
Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Difference:
    """One place where original and rerun disagree: ``where`` is ``"train_mse"`` (with
    ``epoch``) or ``"layer1 weights"``; a value is None when that side has none."""

    where: str
    epoch: int | None
    original: float | None
    rerun: float | None


@dataclass
class Comparison:
    """What comparing two runs found. ``first`` is the earliest differing (epoch, metric);
    ``largest`` the largest absolute difference over every epoch of every metric and every
    weight (0.0 and None when all agree exactly); ``mismatches`` lists differences of shape:
    epoch counts, statuses, missing metrics, epochs, weight arrays."""

    tolerance: float
    first: Difference | None = None
    largest: float = 0.0
    largest_where: str | None = None
    weights_differ: bool = False
    mismatches: list[str] = field(default_factory=list)
    epochs_compared: int = 0  # the epochs of the original's history that were compared
    weights_compared: bool = False
    note: str = ""  # what was left out of the comparison, and why

    @property
    def identical(self) -> bool:
        return self.first is None and not self.weights_differ and not self.mismatches

    @property
    def result(self) -> str:
        """``identical`` or ``different``."""
        return IDENTICAL if self.identical else DIFFERENT

    def consider(self, difference: float, where: str) -> None:
        if difference > self.largest:
            self.largest, self.largest_where = difference, where

    def describe(self) -> str:
        """One line: ``identical (...)``, or ``different: first at epoch ...`` with the largest
        difference and every mismatch, followed by what was compared."""
        largest = ""
        if self.largest_where is not None:
            largest = f"largest absolute difference {self.largest:.3g} ({self.largest_where})"
        extent = f"{self.epochs_compared} epoch(s)" + (" and the final weights" if self.weights_compared else "")
        extent += f" compared; {self.note}" if self.note else " compared"
        if self.identical:
            if not largest:
                return f"identical ({extent})"
            return f"identical within tolerance {self.tolerance:g} ({extent}): {largest}"
        parts = []
        if self.first is not None:
            parts.append(
                f"first at epoch {self.first.epoch} in {self.first.where} "
                f"(original {_show(self.first.original)}, rerun {_show(self.first.rerun)})"
            )
        elif self.weights_differ:
            parts.append("every compared metric agrees but the final weights differ")
        if largest:
            parts.append(largest)
        parts.extend(self.mismatches)
        return "different: " + "; ".join(parts) + f" ({extent})"


def _show(value: float | None) -> str:
    # repr: the shortest text that round-trips, so two different floats never print alike.
    return "none" if value is None else repr(float(value))


@dataclass(frozen=True)
class RunRecord:
    """What comparing needs of one run: its MLflow ``status`` (FINISHED, FAILED, KILLED), its
    ``tags``, the ``histories`` of its compared metrics and its final ``weights`` (None: the run
    saved none, or they are not compared)."""

    status: str
    tags: Mapping[str, str]
    histories: Histories
    weights: Weights | None = None


def compares_final_weights(original_status: str) -> bool:
    """Whether a rerun of a run that ended ``original_status`` compares final weights: not when
    the original was KILLED, which saved none (its config would have trained further)."""
    return original_status != KILLED


def compare_runs(original: RunRecord, rerun: RunRecord, tolerance: float) -> Comparison:
    """The verdict on ``rerun`` as a repetition of ``original``: values with ``|a - b| >
    tolerance`` differ (0: bit for bit).

    A KILLED original is compared over the epochs it logged, without final weights. Otherwise
    the statuses, the number of epochs (tag ``epochs_run``), every epoch of every metric and the
    final weights must agree.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r}: it must be a finite number >= 0")
    comparison = Comparison(tolerance)
    if not compares_final_weights(original.status):
        last = max((max(history) for history in original.histories.values() if history), default=-1)
        logged = {
            name: {epoch: value for epoch, value in history.items() if epoch <= last}
            for name, history in rerun.histories.items()
        }
        comparison.note = (
            f"the original was KILLED after {last + 1} epoch(s), so only those, and no final weights, are compared"
        )
        compare_histories(original.histories, logged, comparison)
        return comparison
    if original.status != rerun.status:
        comparison.mismatches.append(f"status: original {original.status}, rerun {rerun.status}")
    old_epochs, new_epochs = original.tags.get(names.EPOCHS_RUN), rerun.tags.get(names.EPOCHS_RUN)
    if old_epochs != new_epochs:
        comparison.mismatches.append(
            f"the original ran {old_epochs or 'an unknown number of'} epochs, the rerun {new_epochs}"
        )
    compare_histories(original.histories, rerun.histories, comparison)
    compare_weights(original.weights, rerun.weights, comparison)
    comparison.weights_compared = True
    return comparison


# --- metric histories ------------------------------------------------------------------------
def is_compared_metric(name: str) -> bool:
    """Whether metric ``name`` is part of the comparison (the per-epoch ``train_*``/``val_*``)."""
    return name.startswith(COMPARED_METRIC_PREFIXES)


def _metric_order(name: str) -> tuple[int, int, str]:
    prefix, _, rest = name.partition("_")
    rank = METRIC_PRIORITY.index(rest) if rest in METRIC_PRIORITY else len(METRIC_PRIORITY)
    return rank, 0 if prefix == "train" else 1, name


def _differs(original: float, rerun: float, tolerance: float) -> tuple[bool, float]:
    """(differs, |a - b|); equal infinities and two NaNs agree, one NaN against a number does not."""
    if original == rerun or (math.isnan(original) and math.isnan(rerun)):
        return False, 0.0
    difference = abs(original - rerun)
    if math.isnan(difference):
        difference = math.inf
    return difference > tolerance, difference


def compare_histories(original: Histories, rerun: Histories, comparison: Comparison) -> None:
    """Compare ``{metric: {epoch: value}}`` of both runs, into ``comparison``.

    The first difference is the lowest epoch at which any metric differs by more than the
    tolerance or exists on one side only; among metrics differing at that epoch the mse comes
    first, then the loss, then the accuracy, train before val. A metric only one run logged is
    a mismatch.
    """
    for name in sorted(original, key=_metric_order):
        theirs = rerun.get(name)
        if theirs is None:
            comparison.mismatches.append(f"the rerun has no {name}")
            continue
        ours = original[name]
        comparison.epochs_compared = max(comparison.epochs_compared, len(ours))
        for epoch in sorted(set(ours) | set(theirs)):
            a, b = ours.get(epoch), theirs.get(epoch)
            if a is None or b is None:
                differs = True
            else:
                differs, difference = _differs(a, b, comparison.tolerance)
                comparison.consider(difference, f"{name} at epoch {epoch}")
            first = comparison.first
            if differs and (first is None or first.epoch is None or epoch < first.epoch):
                comparison.first = Difference(name, epoch, a, b)
    for name in sorted(set(rerun) - set(original), key=_metric_order):
        comparison.mismatches.append(f"the original has no {name}")


# --- final weights ---------------------------------------------------------------------------
def _array_label(name: str) -> str:
    """``W1`` -> ``layer1 weights``, ``b2`` -> ``layer2 biases``."""
    match = re.fullmatch(r"([Wb])(\d+)", name)
    if not match:
        return name
    return f"layer{match.group(2)} {'weights' if match.group(1) == 'W' else 'biases'}"


def compare_weights(original: Weights | None, rerun: Weights | None, comparison: Comparison) -> None:
    """Compare the final weight arrays (``W1, b1, ...``) elementwise into ``comparison``; None
    is a run that saved no ``weights.npz``."""
    if original is None and rerun is None:
        return  # neither run saved weights (both diverged): the statuses tell the rest
    if original is None or rerun is None:
        comparison.mismatches.append(
            f"only the {'rerun' if original is None else 'original'} saved {names.WEIGHTS_ARTIFACT}"
        )
        comparison.weights_differ = True
        return
    for name in sorted(set(original) | set(rerun), key=lambda n: (n[1:], n)):
        label = _array_label(name)
        if name not in original or name not in rerun:
            comparison.mismatches.append(f"{label} exist only in the {'rerun' if name not in original else 'original'}")
            comparison.weights_differ = True
            continue
        a, b = np.asarray(original[name], dtype=float), np.asarray(rerun[name], dtype=float)
        if a.shape != b.shape:
            comparison.mismatches.append(f"{label} have shape {a.shape} in the original, {b.shape} in the rerun")
            comparison.weights_differ = True
            continue
        if a.size == 0:
            continue
        agree = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore"):
            difference = np.where(agree, 0.0, np.abs(a - b))
        difference[np.isnan(difference)] = math.inf
        largest = float(difference.max())
        comparison.consider(largest, label)
        if largest > comparison.tolerance:
            comparison.weights_differ = True


# --- provenance ------------------------------------------------------------------------------
def provenance_warnings(original_tags: Mapping[str, str], current_tags: Mapping[str, str]) -> list[str]:
    """``key: old -> new`` for every compared provenance tag that differs."""
    keys = {key for key in (*original_tags, *current_tags) if key.startswith(COMPARED_TAG_PREFIXES)}
    lines = []
    for key in sorted(keys):
        old, new = original_tags.get(key, NOT_RECORDED), current_tags.get(key, NOT_RECORDED)
        if old != new:
            lines.append(f"{key}: {old} -> {new}")
    return lines


def uncommitted_changes_matter(original_tags: Mapping[str, str], current_tags: Mapping[str, str]) -> bool:
    """Same commit, both trees dirty: the tags agree, yet the code may not, so the diffs must be
    compared (``uncommitted_changes_warning``)."""
    both_dirty = original_tags.get(names.GIT_DIRTY) == current_tags.get(names.GIT_DIRTY) == "true"
    return both_dirty and original_tags.get(names.GIT_COMMIT) == current_tags.get(names.GIT_COMMIT)


def _diff_by_file(patch: str) -> dict[str, str]:
    """``{path: that file's part of the diff}``. The ``#`` lines ``git_diff`` puts first name
    untracked files, which come and go (outputs, notes) without changing the code that runs;
    diff lines themselves never start with ``#``."""
    files: dict[str, str] = {}
    current = None
    for line in patch.splitlines(keepends=True):
        if line.startswith("#"):
            continue
        if line.startswith("diff --git "):
            current = line.rstrip("\n").rpartition(" b/")[2]
            files[current] = ""
        if current is not None:
            files[current] += line
    return files


def uncommitted_changes_warning(recorded_patch: str, current_patch: str) -> str | None:
    """A line naming the files whose uncommitted changes differ between the original's recorded
    ``git_diff.patch`` and the current tree's diff; None when they agree file by file."""
    then, now = _diff_by_file(recorded_patch), _diff_by_file(current_patch)
    changed = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
    if not changed:
        return None
    return (
        f"git.diff: the uncommitted changes differ from the original's (artifact {names.GIT_DIFF_ARTIFACT}) in "
        f"{', '.join(changed)}"
    )
