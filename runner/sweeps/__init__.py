"""Sweeps: Hydra multiruns as one MLflow object, a parent run with every job's run nested under it.

bprun's sweepers (``grid``, the default, and ``optuna``) compose and validate each batch of jobs,
create the parent run once the first batch is known to be valid (a sweep that does not compose
leaves nothing in the store), hand it to every job through the job's ``hydra.job.env_set``
(``context``), launch the batch, and end the parent with the sweep's summary. The ``local``
launcher runs the jobs in this process or in worker processes forked from a preloaded server;
any other Hydra launcher (Ray, SLURM) gets the same job overrides.
"""

# The module the ``local`` launcher's fork server imports for every worker (``worker_preload``).
WORKER_PRELOAD = ("runner.sweeps.worker_preload",)


def hydra_name(class_name: str) -> str:
    """The ``_target_`` of bprun's plugin ``class_name``: Hydra instantiates plugins only from
    the ``hydra_plugins`` package, where ``hydra_plugins.bprun`` defines each (``plugins``)."""
    return f"hydra_plugins.bprun.{class_name}"
