"""The ``bprun`` command (also ``python -m runner``): the Hydra app around ``run_experiment``.

Kept thin on purpose: composition is Hydra's, the work is ``runner.experiment``'s. Heavy
imports (mlflow, pandas) happen only once a job actually runs, so ``bprun --help`` and
``bprun --cfg job`` stay fast.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from runner.config import ConfigError, register_schemas

register_schemas()

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from runner.datasets import DataError
    from runner.experiment import TrainingFailed, run_experiment

    try:
        result = run_experiment(cfg, show_progress=_interactive_single_run())
    except (ConfigError, DataError) as error:
        # SystemExit passes through Hydra's error reporting untouched: one message, no traceback.
        print(f"bprun: invalid input, nothing was trained or logged:\n{error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingFailed as error:
        print(f"bprun: training failed: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    print(summary(result))
    return result.metrics.get("val_mse", result.metrics.get("train_mse"))


def _interactive_single_run() -> bool:
    """Show a progress bar only to a person watching one run (not in logs, not in sweeps)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return sys.stderr.isatty() and HydraConfig.get().mode != RunMode.MULTIRUN


def summary(result) -> str:
    """A few lines for the terminal: final metrics, the run id, how to open the dashboard."""
    from runner.tracking import dashboard_command

    shown = ", ".join(f"{name}={value:.6g}" for name, value in sorted(result.metrics.items()))
    lines = [f"bprun: {result.history.message}: {shown}"]
    if result.run_id:
        lines.append(f"  MLflow run {result.run_id} in {result.tracking_uri}")
        lines.append(f"  dashboard: {dashboard_command(result.tracking_uri)}")
    return "\n".join(lines)


def main() -> None:
    """Console-script entry point."""
    _hydra_main()
