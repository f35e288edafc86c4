"""The single run: the settings schema and their validation, the data sets, and
``run_training``, which takes validated settings, where to track and an optional parent run,
and knows nothing of Hydra or of sweeps."""
