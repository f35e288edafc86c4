"""Models saved by earlier versions of this package name their class ``runner.pyfunc_model.MLPModel``
in their pickle; this name keeps them loadable."""

from runner.tracking.model import MLPModel

__all__ = ["MLPModel"]
