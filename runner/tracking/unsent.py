"""What a run could not send to its tracking server, kept on disk until ``bprun-sync`` sends it.

A run on a server stages its artifact files in ``<its Hydra output folder>/mlflow-unsent/<run id>/
artifacts/`` (``<the folder bprun started in>/mlflow-unsent/<run id>/`` without one) and uploads
them as it ends, removing the folder. When the server stops answering, the run goes on training
and keeps there everything the server did not get:

- ``artifacts/``: the files not uploaded (tensors, plots, weights, model, config);
- ``metrics-not-sent.csv``: every metric value the server did not store (``key,value,timestamp,step``);
- ``unsent.json``: the run, its server, the tags it could not set and the status it ended with
  (``status`` stays null while the run trains, or when its process died).

``upload`` (``bprun-sync FOLDER``) sends it all to the same run once the server is back, the
status last, and then removes the folder. It can be stopped and started again: MLflow keeps a
metric value sent twice once, and an artifact uploaded twice is the same file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner import names
from runner.tracking.compat import MetricRow
from runner.tracking.liveness import is_stale, process_tags

FOLDER = "mlflow-unsent"
MANIFEST = "unsent.json"
METRICS = "metrics-not-sent.csv"
ARTIFACTS = "artifacts"


@dataclass
class UnsentRun:
    """The manifest of a run's unsent folder (see the module docstring)."""

    tracking_uri: str
    run_id: str
    run_name: str
    lost_reason: str
    status: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    process: dict[str, str] = field(default_factory=process_tags)  # which process trains it (bprun-doctor's tags)

    def still_training(self) -> bool:
        """Whether the run has not ended and its process may still be training it."""
        return self.status is None and is_stale(self.process) is not True

    def save(self, folder: Path) -> None:
        """Write the manifest whole or not at all."""
        partial = folder / f".{MANIFEST}.partial"
        partial.write_text(json.dumps(asdict(self), indent=1))
        os.replace(partial, folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> UnsentRun:
        return cls(**json.loads((folder / MANIFEST).read_text()))


def unsent_folder(root: Path, run_id: str) -> Path:
    return root / FOLDER / run_id


class UnsentMetrics:
    """A metric sink that appends values to the run's ``metrics-not-sent.csv``."""

    flush_size = 5000

    def __init__(self, folder: Path) -> None:
        self.path = folder / METRICS
        if not self.path.exists():
            self.path.write_text("key,value,timestamp,step\n")

    def write(self, values: dict[str, list[MetricRow]]) -> None:
        lines = [
            f"{key},{value!r},{timestamp},{step}\n" for rows in values.values() for key, value, timestamp, step in rows
        ]
        with open(self.path, "a") as file:
            file.writelines(lines)
        for rows in values.values():
            rows.clear()

    def finish(self) -> None:
        pass

    def take_unsent(self) -> dict[str, list[MetricRow]]:
        return {}

    def close(self) -> None:
        pass


def read_metrics(folder: Path) -> list[MetricRow]:
    """The values of ``metrics-not-sent.csv``; a line cut short by a process that died is left out."""
    path = folder / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) == 4 and parts[3].lstrip("-").isdigit() and parts[2].isdigit():
            try:
                rows.append((parts[0], float(parts[1]), int(parts[2]), int(parts[3])))
            except ValueError:
                continue
    return rows


def find_unsent(paths: list[Path]) -> Iterator[Path]:
    """Every unsent run folder in or under ``paths``."""
    for path in paths:
        if (path / MANIFEST).is_file():
            yield path
        elif path.is_dir():
            yield from sorted(manifest.parent for manifest in path.rglob(MANIFEST))


def upload(folder: Path) -> str:
    """Send a kept run to its server (see the module docstring) and remove the folder; return
    the status the run ended with. Raises what the server's client raises when it cannot."""
    from mlflow.entities import Metric, RunTag  # (lazy: bprun-sync answers --help without MLflow)
    from mlflow.tracking import MlflowClient

    from runner.tracking.metric_sinks import MAX_METRICS_PER_CALL

    kept = UnsentRun.load(folder)
    client = MlflowClient(kept.tracking_uri)
    metrics = [Metric(*row) for row in read_metrics(folder)]
    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        client.log_batch(kept.run_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
    artifacts = folder / ARTIFACTS
    if artifacts.is_dir() and any(artifacts.iterdir()):
        client.log_artifacts(kept.run_id, str(artifacts))
    tags = dict(kept.tags)
    status = kept.status
    if status is None:  # its process died before the run ended
        status = "KILLED"
        tags.setdefault(
            names.FAILURE_REASON, "its process ended before the run did; the epochs logged until then are kept"
        )
    if tags:
        client.log_batch(kept.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.set_terminated(kept.run_id, status)
    shutil.rmtree(folder)
    return status
