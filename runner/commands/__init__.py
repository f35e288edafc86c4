"""The console scripts: ``bprun``, ``bprun-report``, ``bprun-rerun``, ``bprun-doctor``, ``bprun-sync``."""
