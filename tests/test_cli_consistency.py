"""The command line's habits, on the finished sample run: every option has help text,
the README names every command, ``--help`` ends with examples and points to the settings
table, ``--version``, the ``runs`` list, and ``--json`` on ``status``, ``runs`` and
``show`` gives JSON that parses."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from app.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_and_argument_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, parser in subcommands().items() for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_the_readme_names_every_command():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert [name for name in subcommands() if not re.search(rf"firmtopics {name}\b", readme)] == []


def test_help_ends_with_examples_and_points_to_the_settings(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "firmtopics demo" in out and '"Configuration"' in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("firmtopics ")


@pytest.mark.results
def test_runs_lists_every_run(cli_env, capsys):
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("run ") and "default" in out and "complete" in out
    assert main(["runs", "--json"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["status"]) for r in runs] == [("default", "complete")]
    assert runs[0]["firms_done"] == 8 and runs[0]["topics"] > 0 and runs[0]["themes"] > 0


@pytest.mark.results
def test_status_and_show_speak_json(cli_env, capsys):
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "complete" and status["firms"]["done"] == 8
    assert status["quality"]["themes"]["themes"] == status["themes_per_level"][0]
    assert main(["show", "firm", "NWL", "--json"]) == 0
    firm = json.loads(capsys.readouterr().out)
    topic_id = firm["topics"][0]["topic_id"]
    assert main(["show", "topic", str(topic_id), "--json"]) == 0
    topic = json.loads(capsys.readouterr().out)
    assert topic["topic"]["topic_id"] == topic_id
    assert main(["show", "theme", str(topic["theme"]["theme_id"]), "--json"]) == 0
    assert topic_id in [t["topic_id"] for t in json.loads(capsys.readouterr().out)["topics"]]
    assert main(["status", "--run", "never", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] is None
