"""User-facing errors and the exit codes of the command line.

Every command ends with one of four exit codes:

* ``EXIT_OK`` (0) success
* ``EXIT_FAILURE`` (1) anything else (database unreachable, LLM key refused, an
  unexpected error)
* ``EXIT_USAGE`` (2) usage or input errors (bad arguments, bad settings, a bad input
  file, a run resumed with other settings, a model of another dimension)
* ``EXIT_INTERRUPTED`` (3) interrupted by SIGTERM/SIGINT: the run is resumable, start
  the same command again

The errors form a small family. A module that raises an error the user should see in
one line subclasses one of two bases here, and the base says what it means:
``UsageError`` (the user can fix it: exit 2) or ``ExpectedFailure`` (the outside world
failed, not the program: exit 1, no traceback). The command line maps an error by its
base class alone, so this module imports nothing of the package and anything may
import it.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3


class UsageError(Exception):
    """A usage or input error: arguments, settings, an input file, a run's settings or
    model (exit code 2). Its message is printed as it is."""

    exit_code = EXIT_USAGE


class ExpectedFailure(Exception):
    """A failure of the outside world a command reports in one line (the database
    unreachable, the LLM refusing its key or model): not a bug, so no traceback is
    logged and the message needs no exception type in front of it (exit code 1)."""

    exit_code = EXIT_FAILURE


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ended a command: its base's code, or
    ``EXIT_FAILURE`` for an unexpected error."""
    return exc.exit_code if isinstance(exc, (UsageError, ExpectedFailure)) else EXIT_FAILURE


def is_expected(exc: BaseException) -> bool:
    """True for a usage error or an expected failure: a line, with no traceback."""
    return isinstance(exc, (UsageError, ExpectedFailure))


def error_message(exc: BaseException) -> str:
    """The one line printed for an exception that ended a command: its message's first
    line, prefixed with the exception's type when it is unexpected (then the type says
    what went wrong)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if is_expected(exc) else f"{type(exc).__name__}: {text}"


def first_error(exc: BaseException) -> BaseException:
    """The first leaf exception inside a (possibly nested) exception group; any other
    exception as it is. A task group raises a group of what its tasks raised: the one
    that started it is what a command or a stage reports."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
