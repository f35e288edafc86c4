"""How far a sweep has got, in a line printed every few seconds while its jobs run: jobs done,
failed and pruned, running, the best objective so far and an estimate of the time left."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hydra.core.utils import JobReturn, JobStatus

from runner.sweeps.context import JobReport

PROGRESS_SECONDS = 5.0


@dataclass
class Best:
    value: float
    metric: str  # the objective as the job logged it (train_mse for val_mse without a validation split)
    run_name: str
    run_id: str | None


@dataclass
class SweepProgress:
    """The sweep's counts as its jobs end (``ended``), and the line that says them (``line``)."""

    size: int | None  # jobs the sweep runs, when its sweeper knows
    objective: str
    direction: str = "minimize"
    done: int = 0
    failed: int = 0
    pruned: int = 0
    best: Best | None = None
    done_before: int = 0  # of ``done``, the jobs a resumed sweep had finished before
    started_at: float = field(default_factory=time.monotonic)
    _last_line: float = field(default_factory=time.monotonic)

    def restart_clock(self) -> None:
        """Time the sweep from its first job on."""
        self.started_at = self._last_line = time.monotonic()

    def ended(self, result: JobReturn) -> bool:
        """Count a job that ended; True when its objective is the best so far."""
        self.done += 1
        report = result.return_value if result.status == JobStatus.COMPLETED else None
        if not isinstance(report, JobReport):
            self.failed += 1
            return False
        if report.stop_reason == "pruned":
            self.pruned += 1
            return False
        value = report.objective
        if value is None or value != value:  # no objective, or NaN
            return False
        better = self.best is None or (
            value < self.best.value if self.direction == "minimize" else value > self.best.value
        )
        if better:
            self.best = Best(value, report.objective_name, report.run_name, report.run_id)
        return better

    def line(self, running: int) -> str:
        total = f"/{self.size}" if self.size else ""
        text = f"sweep: {self.done}{total} done ({self.failed} failed, {self.pruned} pruned), {running} running"
        if self.best is not None:
            text += f"; best {self.best.metric}={self.best.value:.6g} ({self.best.run_name})"
        left = self.seconds_left()
        if left is not None:
            text += f"; about {_duration(left)} left"
        return text

    def seconds_left(self) -> float | None:
        """The time the remaining jobs take at the rate jobs have ended in this command."""
        ended_here = self.done - self.done_before
        if not self.size or not ended_here:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed / ended_here * max(0, self.size - self.done)

    def due(self) -> bool:
        """Whether a progress line is due (every ``PROGRESS_SECONDS``)."""
        if time.monotonic() - self._last_line < PROGRESS_SECONDS:
            return False
        self._last_line = time.monotonic()
        return True


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
