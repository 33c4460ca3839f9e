"""User-facing errors and the exit codes of the command line.

Every command ends with one of four exit codes:

* ``EXIT_OK`` (0) success
* ``EXIT_FAILURE`` (1) anything else (database unreachable, LLM key refused, an
  unexpected error)
* ``EXIT_USAGE`` (2) usage or input errors (bad arguments, bad settings, a bad input
  file, a run resumed with other settings, a model of another dimension)
* ``EXIT_INTERRUPTED`` (3) interrupted by SIGTERM/SIGINT: the run is resumable, start
  the same command again

``exit_code_for`` says which an exception that ended a command gets, and
``error_message`` the one line printed for it. This module imports no other module of
the package at import time, so any of them can raise ``UsageError`` without a cycle; the
exception classes of other modules are looked up when an error is being mapped.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3


class UsageError(Exception):
    """A usage or input error detected by a command (exit code 2)."""

    exit_code = EXIT_USAGE


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ended a command: ``EXIT_USAGE`` for what the
    user can fix (arguments, settings, input, a run's settings or model), ``EXIT_FAILURE``
    for everything else."""
    from app.embedding import ModelUnavailable
    from app.ingest import IngestError
    from app.runs import SettingsChanged
    from app.schema import DimensionMismatch
    from app.settings import SettingsError

    if isinstance(exc, UsageError):
        return exc.exit_code
    if isinstance(exc, (SettingsError, IngestError, SettingsChanged, DimensionMismatch, ModelUnavailable)):
        return EXIT_USAGE
    return EXIT_FAILURE


def is_expected(exc: BaseException) -> bool:
    """True for the failures of the outside world a command reports in one line (the
    database unreachable, the LLM refusing its key or model): not a bug, so no traceback
    is logged and the message needs no exception type in front of it."""
    from app.database import DatabaseUnavailable
    from app.llm import LLMConfigError

    return isinstance(exc, (DatabaseUnavailable, LLMConfigError))


def error_message(exc: BaseException) -> str:
    """The one line printed for an exception that ended a command: its message's first
    line, prefixed with the exception's type when it is neither a usage error nor an
    expected failure (an unexpected error's type says what went wrong)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if exit_code_for(exc) == EXIT_USAGE or is_expected(exc) else f"{type(exc).__name__}: {text}"
