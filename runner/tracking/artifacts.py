"""A run's artifact files: written where they belong on a local store, staged and uploaded to a
server's.

A run writes its files (tensors streamed during training, plots, the model) into
``artifacts.directory``. On a local store that is the run's own artifact folder, so large files
are written once, in place (``LocalArtifacts``). On a server's store it is a staging folder on
disk (``runner.tracking.unsent``) whose files are uploaded when the run ends, or sooner when
asked (``StagedArtifacts``); what a lost server did not get stays there for ``bprun-sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient

from runner.tracking.sender import Sender


class LocalArtifacts:
    """The run's own artifact folder: nothing to upload."""

    in_place = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def upload_soon(self, name: str) -> None:
        pass

    def upload_when_written(self, name: str, written: Callable[[], None]) -> None:
        pass

    def upload_ready(self) -> None:
        pass

    def upload_written_later(self) -> None:
        pass


class StagedArtifacts:
    """A staging folder uploaded to the run's remote artifact store through ``call`` (which
    turns a lost server into ``TrackingLost``). ``upload_soon`` sends a file on the ``sender``'s
    thread; the end of the run uploads the rest (``upload_ready``), then the folders written by
    another process once they are (``upload_written_later``)."""

    in_place = False

    def __init__(
        self, directory: Path, run_id: str, client: MlflowClient, call: Callable[..., Any], sender: Sender | None
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._run_id, self._client, self._call, self._sender = run_id, client, call, sender
        self._uploaded: set[str] = set()  # files uploaded already
        self._written_later: dict[str, Callable[[], None]] = {}  # {folder: wait until it is written}

    def upload_soon(self, name: str) -> None:
        """Upload the staged file ``name`` (a path relative to the folder) on the sender thread,
        or now without one."""
        if self._sender is None:
            self._call(self._upload_file, name)
        else:
            self._sender.submit(self._call, self._upload_file, name)

    def upload_when_written(self, name: str, written: Callable[[], None]) -> None:
        """Upload the staged folder ``name`` once ``written()`` returns, after the rest."""
        self._written_later[name] = written

    def upload_ready(self) -> None:
        """Upload every staged file and folder but those written later and those uploaded."""
        for entry in sorted(self.directory.iterdir()):
            if entry.name not in self._written_later and entry.name not in self._uploaded:
                self._upload(entry)

    def upload_written_later(self) -> None:
        for written in self._written_later.values():  # all written first: they stay if the upload fails
            written()
        for name in self._written_later:
            self._upload(self.directory / name)

    def _upload(self, entry: Path) -> None:
        if entry.is_dir():
            self._call(self._client.log_artifacts, self._run_id, str(entry), entry.name)
        elif entry.exists():
            self._call(self._client.log_artifact, self._run_id, str(entry))

    def _upload_file(self, name: str) -> None:
        folder = str(Path(name).parent)
        self._client.log_artifact(self._run_id, str(self.directory / name), None if folder == "." else folder)
        self._uploaded.add(name)


RunArtifacts = LocalArtifacts | StagedArtifacts


def open_artifacts(
    artifact_uri: str,
    staging: Path,
    run_id: str,
    client: MlflowClient,
    call: Callable[..., Any],
    sender: Sender | None,
) -> RunArtifacts:
    """The run's artifact folder where its artifact store is a local folder, else the staging
    folder ``staging``."""
    local = urlparse(artifact_uri)
    if local.scheme == "file":
        return LocalArtifacts(Path(unquote(local.path)))
    return StagedArtifacts(staging, run_id, client, call, sender)
