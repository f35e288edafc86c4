"""The ``bprun`` command (console script and ``python -m runner``).

A thin door in front of ``runner.app``: a joblib sweep's worker server starts here, before Hydra,
OmegaConf and the app are imported (about a quarter of a second), because its imports are the
critical path of that sweep's start (``runner.worker_server``).
"""

import sys

from runner.worker_server import joblib_workers_requested, start_worker_server


def main() -> None:
    """Console-script entry point."""
    if joblib_workers_requested(sys.argv[1:]):
        start_worker_server()
    from runner.app import main as run_app

    run_app()
