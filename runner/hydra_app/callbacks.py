"""bprun's Hydra callback: checks that only Hydra's own state can tell, before anything runs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.process.errors import CommandExit, InvalidInput
from runner.sweeps.plugins import missing_extra, tracking_sweepers


class OutputFolderUnwritable(InvalidInput):
    pass


class UntrackedSweeper(InvalidInput):
    pass


class ExtraMissing(InvalidInput):
    pass


class BprunCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_folder(config.hydra.sweep.dir)
        option = str(config.hydra.runtime.choices.get("hydra/launcher"))
        extra = missing_extra("hydra/launcher", option)
        if extra is not None:
            raise CommandExit(
                ExtraMissing(
                    f"hydra/launcher={option} needs the {extra} extra, which is not installed: pip install "
                    f"'backprop-runner[{extra}]' (docs/clusters.md says which extras go together)"
                )
            )
        sweeper = config.hydra.sweeper.get("_target_")
        if config.tracking.enabled and sweeper not in tracking_sweepers():
            raise CommandExit(
                UntrackedSweeper(
                    f"hydra.sweeper._target_={sweeper} does not track a sweep as one MLflow parent run with its "
                    "jobs nested under it; use hydra/sweeper=grid (the default) or hydra/sweeper=optuna, or "
                    "tracking=none"
                )
            )


# The output folders this process created (the first folder of each path that did not exist),
# removed again if the command ends refusing its input before any of it ran
# (``remove_refused_output``).
CREATED_FOLDERS: list[Path] = []
# What Hydra and bprun write into an output folder before a job runs.
BEFORE_ANY_JOB = {".hydra", "bprun.log", "multirun.yaml"}


def check_output_folder(folder: str) -> None:
    """Refuse, with one message, a Hydra output folder that cannot be written (a read-only
    mount, a full disk), instead of Hydra's traceback after it failed to create it."""
    path = Path(folder).absolute()
    missing = [parent for parent in [path, *path.parents] if not parent.exists()]
    if missing:
        CREATED_FOLDERS.append(missing[-1])
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bprun-write-check-"):
            pass
    except OSError as error:
        raise CommandExit(
            OutputFolderUnwritable(
                f"cannot write the output folder {folder}: {error.strerror}; nothing was trained "
                "(set hydra.run.dir / hydra.sweep.dir elsewhere)"
            )
        ) from None


def remove_refused_output() -> None:
    """Remove the output folders this command created, as long as they hold only what Hydra
    and bprun write before a job runs: a refused command leaves nothing behind."""
    for created in CREATED_FOLDERS:
        files = [path for path in created.rglob("*") if path.is_file()]
        if created.is_dir() and all(path.name in BEFORE_ANY_JOB or path.parent.name == ".hydra" for path in files):
            shutil.rmtree(created, ignore_errors=True)
    CREATED_FOLDERS.clear()
