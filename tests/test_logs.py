"""Log output: on a terminal the run's progress reads as a bar; JSON log events (when
stderr is not a terminal, or LOG_FORMAT=json) are never changed; secrets are masked."""

from __future__ import annotations

import io
import json

import pytest

from app import logs

PROGRESS = {"firms_finished": 409, "firms_total": 716, "firms_done": 400, "firms_skipped": 9, "firms_failed": 0,
            "sentences_per_s": 69.6, "elapsed_s": 3565.3, "eta_s": 855.8}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logs.configure("json")


def test_the_bar_shows_firms_rate_and_time_left():
    line = logs.progress_bar(PROGRESS)
    assert line == "[#################.............] 409/716 firms  69.6 sentences/s  ETA 14m 15s"
    assert logs.progress_bar({**PROGRESS, "firms_finished": 0, "eta_s": None}).endswith("ETA --")


def test_on_a_terminal_progress_is_a_bar():
    stream = Terminal()
    logs.configure("console", stream=stream)
    logs.get_logger("progress").info("progress", **PROGRESS)
    logs.get_logger("pipeline").info("firm_finished", firm="A")
    lines = stream.getvalue().splitlines()
    assert "409/716 firms" in lines[0] and "[####" in lines[0] and "firms_done" not in lines[0]
    assert "firm_finished" in lines[1]  # other events as before


@pytest.mark.parametrize("stream, log_format", [(Terminal(), "json"), (io.StringIO(), "json")])
def test_json_events_stay_as_they_are(stream, log_format):
    logs.configure(log_format, stream=stream)
    logs.get_logger("progress").info("progress", **PROGRESS)
    event = json.loads(stream.getvalue())
    assert event["event"] == "progress" and {k: event[k] for k in PROGRESS} == PROGRESS


def test_not_on_a_terminal_the_console_keeps_the_fields():
    stream = io.StringIO()
    logs.configure("console", stream=stream)
    logs.get_logger("progress").info("progress", **PROGRESS)
    assert "firms_finished=409" in stream.getvalue() and "[####" not in stream.getvalue()
