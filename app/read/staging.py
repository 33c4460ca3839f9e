"""Files replaced whole: what ``export``, ``report`` and ``panel`` write is first written
into a temporary folder inside the target folder, then moved into place by renames.

So a write that fails or is killed halfway leaves the previous files as they were (and
no new file beside them), a reader never sees a file half-written, and a symbolic link
at a target's name is replaced by the new file, never written through: ``os.replace``
renames over the link itself.

A killed process cannot remove its temporary folder; the next write into the same folder
does (``.firmtopics-partial-PID-...``, of a process no longer alive).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = ".firmtopics-partial-"


@contextlib.contextmanager
def staged_files(out_dir: str | Path) -> Iterator[Path]:
    """``with staged_files(DIR) as staging:`` write files into ``staging``; when the block
    ends without an error each is moved into ``DIR`` (created if needed), replacing a file
    or link of the same name; ``.json`` files last, so a manifest arrives after the files
    it lists. On an error nothing is moved. The temporary folder is removed either way."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        yield staging
        for path in sorted(staging.iterdir(), key=lambda p: (p.suffix == ".json", p.name)):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned(out_dir: Path) -> None:
    """Remove the temporary folders that killed processes left in ``out_dir``."""
    for folder in out_dir.glob(f"{PREFIX}*"):
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
