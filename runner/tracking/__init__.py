"""Everything that talks to MLflow: where runs go (``store``), one run's life (``mlflow_run``),
what a run logs every epoch (``telemetry``), its model (``model``) and provenance
(``provenance``), and reading runs back (``history``, ``search``, ``tensors``).

The names of tags, artifacts and environment variables are defined once, in ``names``.
"""
