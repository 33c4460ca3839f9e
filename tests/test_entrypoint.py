"""The container's entrypoint, outside a container: the installed ``firmtopics`` console
script, configured by environment variables alone, against an empty database."""

import shutil
import subprocess

import pytest

from support import fetch


@pytest.fixture
def firmtopics():
    path = shutil.which("firmtopics")
    if path is None:
        pytest.fail("the firmtopics console script is not installed (pip install -e .)")
    return path


def test_console_script_applies_the_schema_on_an_empty_database(firmtopics, database_url):
    done = subprocess.run([firmtopics, "status"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, "LOG_FORMAT": "json",
                               "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "has not been started" in done.stdout
    assert [r["version"] for r in fetch(database_url, "SELECT version FROM schema_migrations ORDER BY 1")][0] == 1
    assert '"migration_applied"' in done.stderr  # JSON logs when not on a terminal


def test_usage_error_exit_code(firmtopics):
    done = subprocess.run([firmtopics, "status", "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "usage:" in done.stderr
