"""The notebook API at its published address (``from app.results import open_run``): ``app.read.results``."""

from app.read.results import Run, UsageError, open_run

__all__ = ["Run", "UsageError", "open_run"]
