"""``python -m app``: the same as the ``firmtopics`` command."""

from app.cli import console

console()
