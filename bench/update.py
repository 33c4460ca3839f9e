"""A new quarter on real earnings calls: ``update`` against a fresh run, side by side.

The first N ECTSum firms (default 40), each call's period taken from its ``doc_id``
(``A_q4_2020`` is 2020Q4). Each firm's last call is held back; a firm with one call is
held back whole, so it comes as a new firm. Then, in one database:

1. ``run`` on the rest;
2. ``update --input`` the held-back calls;
3. ``update`` again.

And in a second database, a fresh ``run`` on everything. Each command is a child
process, timed whole (model loading included, as a user waits for it). Prints one JSON
line: the sizes, the seconds of each, ``update / fresh`` (the update should take less
than half), and the checks: no stored sentence left, old topics' and themes' ids and
names unchanged, the new periods in ``theme_periods`` (what ``trends`` reads) and in
``firm_theme_periods`` (the panel) where the database has that view, and a second
update adding nothing.

    python bench/update.py            # 40 firms
    python bench/update.py --firms 12
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ECTSUM, embedded_database  # noqa: E402

CALL = re.compile(r"_q(\d)_(\d{4})$")


def period_of(doc_id: str) -> str | None:
    """``A_q4_2020`` -> ``2020Q4``; None when the id says no quarter."""
    match = CALL.search(doc_id or "")
    return f"{match.group(2)}Q{match.group(1)}" if match else None


def split_corpus(n_firms: int, folder: Path) -> tuple[Path, Path, Path, dict]:
    """The first ``n_firms`` firms with periods, as three files: all, without each firm's
    last call, and the last calls; with their sizes."""
    rows, firms = [], []
    with gzip.open(ECTSUM, "rt", encoding="utf-8") as source:
        for line in source:
            row = json.loads(line)
            if not firms or firms[-1] != row["firm_id"]:
                if len(firms) == n_firms:
                    break
                firms.append(row["firm_id"])
            row["period"] = period_of(row["doc_id"])
            rows.append(row)
    last = {}
    for row in rows:
        if row["period"] and row["period"] > last.get(row["firm_id"], ""):
            last[row["firm_id"]] = row["period"]
    held = [r for r in rows if r["period"] == last.get(r["firm_id"])]
    base = [r for r in rows if r["period"] != last.get(r["firm_id"])]
    paths = []
    for name, part in (("all", rows), ("base", base), ("held", held)):
        path = folder / f"{name}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in part)
        paths.append(path)
    sizes = {"firms": len(firms), "sentences": len(rows), "held_back": len(held),
             "firms_held_back_whole": len({r["firm_id"] for r in held} - {r["firm_id"] for r in base})}
    return *paths, sizes


def command(url: str, data: Path, *argv: str) -> tuple[float, str]:
    """``python -m app ARGV`` against ``url``; returns (seconds, what it printed)."""
    env = {**os.environ, "DATABASE_URL": url, "FIRMTOPICS_DATA_DIR": str(data), "LOG_FORMAT": "json",
           "HF_HUB_OFFLINE": "1"}
    env.pop("XAI_API_KEY", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", *argv], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def fetch(url: str, sql: str) -> list[tuple]:
    """Rows of one query, through psql-free asyncpg."""
    import asyncio

    import asyncpg

    async def read():
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(read())


OLD = {
    "topics": "SELECT topic_id, name FROM topics WHERE update_no IS NULL ORDER BY 1",
    "themes": "SELECT theme_id, name FROM themes ORDER BY 1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firms", type=int, default=40, help="the first N ECTSum firms (default: 40)")
    args = parser.parse_args()
    if not ECTSUM.exists():
        raise SystemExit(f"needs the ECTSum corpus at {ECTSUM}")
    folder = Path(tempfile.mkdtemp(prefix="firmtopics-update-"))
    everything, base, held, sizes = split_corpus(args.firms, folder)
    server = embedded_database()
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
    from support import create_database, with_database

    create_database(server, "updated")
    create_database(server, "fresh")
    updated, fresh = with_database(server, "updated"), with_database(server, "fresh")

    seconds = {"run_base": command(updated, folder / "data", "run", "--input", str(base))[0]}
    before = {k: fetch(updated, sql) for k, sql in OLD.items()}
    seconds["update"], printed = command(updated, folder / "data", "update", "--input", str(held))
    after = {k: fetch(updated, sql) for k, sql in OLD.items()}
    seconds["update_again"], again = command(updated, folder / "data", "update")
    seconds["fresh_run"] = command(fresh, folder / "data", "run", "--input", str(everything))[0]
    _, status = command(updated, folder / "data", "status", "--json")
    status = json.loads(status)
    new_periods = {r[0] for r in fetch(updated, "SELECT DISTINCT period FROM documents")}
    trends = {r[0] for r in fetch(updated, "SELECT DISTINCT period FROM theme_periods")}
    has_panel = fetch(updated, "SELECT count(*) FROM pg_views WHERE viewname = 'firm_theme_periods'")[0][0]
    panel = {r[0] for r in fetch(updated, "SELECT DISTINCT period FROM firm_theme_periods")} if has_panel else None
    held_periods = {period_of(json.loads(line)["doc_id"]) for line in gzip.open(held, "rt")}
    print(json.dumps({
        **sizes,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "update_over_fresh": round(seconds["update"] / seconds["fresh_run"], 3),
        "sentences_left": status["firms"]["sentences_left"], "firms_left": status["firms"]["left"],
        "old_ids_and_names_unchanged": before == after,
        "old_topics": len(before["topics"]), "old_themes": len(before["themes"]),
        "held_periods_in_trends": sorted(held_periods - trends) == [],
        "held_periods_in_panel": None if panel is None else sorted(held_periods - panel) == [],
        "periods": len(new_periods),
        "update": status["updates"][-1],
        "second_update_adds_nothing": "nothing to add" in again and len(status["updates"]) == 1,
        "printed": printed.strip().splitlines(),
    }))


if __name__ == "__main__":
    main()
