"""``python -m app``: the same as the ``firmtopics`` command."""

import sys

from app.cli import main

sys.exit(main())
