"""The ``firmtopics`` command line (also ``python -m app``).

Each command is a small async function: it calls the module that does the work
(``app.job``, ``app.status``, ``app.demo``, the read commands) and prints what comes
back. ``main`` parses arguments, sets up logging, runs the command and turns expected
failures into one clear line on stderr and an exit code (``app.errors`` lists them and
says which an error gets).

Command output (summaries, tables) goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
from pathlib import Path
from typing import NoReturn

import anyio

from app import logs
from app.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error_message, exit_code_for, first_error, is_expected
from app.safe_text import printable
from app.settings import Settings, SettingsError, redact

EXAMPLES = """examples:
  firmtopics demo                                   a sample corpus, end to end, offline
  firmtopics run --input sentences.jsonl.gz         ingest, firm topics, themes, indexes
  firmtopics run --dry-run --input sentences.jsonl.gz   what a run would ask of the LLM, and cost
  firmtopics status                                 where the run stands, with its quality figures
  firmtopics search "supply chain costs" --level theme
  firmtopics show theme 3                           a theme, its topics by firm, evidence
  firmtopics trends --top 5                         themes over time
  firmtopics panel --out panel.parquet              firm x period x theme shares, for regressions
  firmtopics report --out results                   one self-contained HTML page

Settings are environment variables (DATABASE_URL, XAI_API_KEY, FIRMTOPICS_*, ...): the
table in the README, "Configuration", lists each with its default."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="firmtopics",
        description="Firm-level topics and cross-firm themes from firm sentences, stored in PostgreSQL.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="load a corpus file (.jsonl, .jsonl.gz, .csv, .parquet)")
    ingest.add_argument("path", type=Path,
                        help="one row a sentence: firm_id, sentence; optional firm_name, doc_id, period")

    run = commands.add_parser("run", help="process every firm not yet done, then themes, then indexes")
    _run_option(run, what="the run to start or resume")
    run.add_argument("--input", type=Path, metavar="PATH", help="ingest this file first")
    run.add_argument("--retry-failed", action="store_true", help="take the firms recorded as failed again")
    run.add_argument("--dry-run", action="store_true",
                     help="ingest and write nothing: print the expected topics, themes, LLM requests, tokens and cost")

    update = commands.add_parser("update", help="bring new sentences and firms into a finished run, keeping its "
                                 "topics and themes")
    _run_option(update, what="the finished run to update")
    update.add_argument("--input", type=Path, metavar="PATH", help="ingest this file first")

    status = commands.add_parser("status", help="where a run stands")
    _run_option(status)
    _json_option(status, "the run's state, counts, timings, usage and quality")

    runs = commands.add_parser("runs", help="every run of the database: status, counts, model, dates")
    runs.add_argument("--json", action="store_true", help="one JSON object per run and line, for scripts")

    commands.add_parser("demo", help="make a sample corpus and run the whole job on it")

    _reading_commands(commands)
    return parser


def _run_option(command, default: str | None = "default", what: str = "the run to read") -> None:
    command.add_argument("--run", default=default, metavar="NAME",
                         help=f"{what} (default: {default})" if default else what)


def _json_option(command, what: str) -> None:
    command.add_argument("--json", action="store_true", help=f"{what} as JSON, for scripts")


def _reading_commands(commands) -> None:
    """The parsers of the commands that read a run's results (``app/read/``)."""
    search = commands.add_parser("search", help="the themes, topics or sentences nearest in meaning to a text")
    search.add_argument("text", help="what to look for, in your words")
    search.add_argument("--level", choices=("theme", "topic", "sentence"), default="topic",
                        help="what to search (default: topic)")
    search.add_argument("--theme-level", type=int, metavar="N",
                        help="with --level theme: only themes of this level (1 = the finest; default: every level)")
    search.add_argument("--firm", metavar="ID", help="only this firm's topics or sentences")
    search.add_argument("--limit", type=int, default=10, metavar="K", help="hits to return (default: 10, at most 1000)")
    _run_option(search)
    search.add_argument("--json", action="store_true", help="one JSON object per hit and line, for scripts")

    show = commands.add_parser("show", help="a theme, topic or firm, up and down the hierarchy")
    show.add_argument("kind", choices=("theme", "topic", "firm"), help="what ID names")
    show.add_argument("id", help="a theme or topic id (a number), or a firm id")
    _run_option(show, default=None,
               what="the run (a firm: default 'default'; a theme or topic id already names its run)")
    show.add_argument("--prompt", action="store_true",
                      help="a theme or topic: the exact messages sent to the LLM and its reply")
    _json_option(show, "everything shown")

    trends = commands.add_parser("trends", help="themes over time: each theme's share of each period")
    _run_option(trends)
    trends.add_argument("--theme", type=int, metavar="ID", help="one theme, period by period")
    trends.add_argument("--top", type=int, default=10, metavar="N", help="the N largest themes (default: 10)")
    trends.add_argument("--json", action="store_true", help="one JSON object per theme and period, for scripts")

    export = commands.add_parser("export", help="a run's firms, topics, themes and sentences as Parquet files")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write into")
    _run_option(export)

    panel = commands.add_parser("panel", help="the firm x period x theme panel, as a Parquet or CSV file")
    panel.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="the file to write: .parquet or .csv (its format)")
    panel.add_argument("--level", type=int, metavar="N",
                       help="only the themes of this level (1 = the finest; default: every level)")
    _run_option(panel)

    report = commands.add_parser("report", help="a self-contained HTML page on a run: themes and a topic map")
    report.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write into")
    _run_option(report)


def _version() -> str:
    """The installed package's version (``unknown`` when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("firmtopics")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv``, run the command, return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its message
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc), EXIT_USAGE)
    logs.configure(settings.log_format, settings.secrets())
    command = COMMANDS[args.command]
    # Until ``run`` installs its own handler (during an ingest or the model load), SIGTERM
    # -- a spot notice, ``docker stop`` -- is taken as Ctrl-C: the command is cancelled
    # and exits with code 3, rather than dying by the signal.
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        return anyio.run(command, settings, args)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, settings)
    except Exception as exc:  # turn expected failures into one line; unexpected ones too, plus a logged traceback
        exc = first_error(exc)  # a task group's error: report the one that started it
        code = exit_code_for(exc)
        if not is_expected(exc):
            logs.get_logger("cli").error("unexpected_error", exc_info=True)
        return _fail(error_message(exc), code, settings)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def console() -> NoReturn:
    """The ``firmtopics`` command and ``python -m app``: ``main`` on the process's
    arguments, then the process exits with its code.

    Before the exit, what is left is frozen out of Python's garbage collector
    (``gc.freeze``): at its exit Python collects again the millions of objects torch,
    numba and UMAP leave, about 3 s of every command on 2 CPUs, to free memory the
    operating system takes back anyway (docs/benchmarks.md §17). The exit's handlers
    still run (the embedded database is stopped), and so do the finalizers of objects
    outside reference cycles."""
    code = main()
    gc.freeze()
    sys.exit(code)


def _fail(message: str, code: int, settings: Settings | None = None) -> int:
    secrets = settings.secrets() if settings else []
    print(printable(f"firmtopics: error: {redact(message, secrets)}"), file=sys.stderr)
    return code


# --- commands ---------------------------------------------------------------------------


async def cmd_ingest(settings: Settings, args) -> int:
    """``firmtopics ingest PATH``: load one corpus file."""
    from app.database import open_database
    from app.ingest import ingest_corpus

    async with open_database(settings) as pool:
        await ingest_corpus(pool, args.path)
    return EXIT_OK


async def cmd_run(settings: Settings, args) -> int:
    """``firmtopics run``: the whole job for one run, resumable; ``firmtopics update``:
    what is new brought into a finished run (``app.update``)."""
    from app.database import open_database
    from app.ingest import ingest_corpus
    from app.job import describe_outcome, run_with_signals
    from app.update import check_updatable, describe_update

    if getattr(args, "dry_run", False):
        from app.estimate import estimate, format_estimate

        async with open_database(settings, migrate=False) as pool, pool.acquire() as conn:
            print(format_estimate(await estimate(conn, settings, args.input), settings))
        return EXIT_OK
    update = args.command == "update"
    async with open_database(settings) as pool:
        if args.input:
            await ingest_corpus(pool, args.input)
        if update:
            async with pool.acquire() as conn:
                await check_updatable(conn, args.run)
        try:
            outcome = await run_with_signals(pool, settings, run_name=args.run, update=update,
                                             retry_failed=not update and args.retry_failed)
        except Exception as exc:
            from app.database import RETRYABLE, DatabaseUnavailable

            error = first_error(exc)
            if isinstance(error, RETRYABLE):  # the database went away and stayed away through the retries
                detail = ": ".join([type(error).__name__, *str(error).strip().splitlines()[:1]])
                raise DatabaseUnavailable(
                    f"lost the connection to the database ({detail}); the firms written so far are kept: "
                    "run the same command again to resume"
                ) from None
            raise
    print(describe_update(outcome) if update else describe_outcome(outcome))
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else EXIT_OK


async def cmd_status(settings: Settings, args) -> int:
    """``firmtopics status [--json]``: firms done/skipped/failed/left, topics, themes, timings."""
    from app.database import open_database
    from app.read.status import format_status, status_detail

    async with open_database(settings) as pool:
        detail = await status_detail(pool, args.run)
    print(printable(json.dumps(detail, ensure_ascii=False) if args.json else format_status(detail)))
    return EXIT_OK


async def cmd_runs(settings: Settings, args) -> int:
    """``firmtopics runs [--json]``: every run with its status, counts, model and dates."""
    from app.database import open_database
    from app.read.status import format_runs, runs_list

    async with open_database(settings) as pool:
        runs = await runs_list(pool)
    print(printable("\n".join(json.dumps(r, ensure_ascii=False) for r in runs) if args.json else format_runs(runs)))
    return EXIT_OK


async def cmd_demo(settings: Settings, args) -> int:
    """``firmtopics demo``: sample corpus, whole job, then what to look at next."""
    from app.demo import run_demo

    return await run_demo(settings)


async def cmd_read(settings: Settings, args) -> int:
    """``search``, ``show``, ``trends``, ``export``, ``panel``, ``report``: the commands that
    read a run's results live in modules of their own, each with a ``command`` function.
    Only the command's own module is imported: some import pandas and scikit-learn, a
    second or more that ``search`` has no use for."""
    import importlib

    module = importlib.import_module(f"app.read.{args.command}")
    return await module.command(settings, args)


COMMANDS = {"ingest": cmd_ingest, "run": cmd_run, "update": cmd_run, "status": cmd_status, "runs": cmd_runs,
            "demo": cmd_demo, "search": cmd_read, "show": cmd_read, "trends": cmd_read, "export": cmd_read,
            "panel": cmd_read, "report": cmd_read}


if __name__ == "__main__":
    sys.exit(main())
