"""Hydra config tree, installed as the package runner.conf (see pyproject.toml)."""
