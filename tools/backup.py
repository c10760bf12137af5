"""`./run.sh backup FILE`: a consistent copy of the live SQLite database.

SQLite's online backup API copies the database page by page while servers
and workers keep writing to it; the copy is one consistent snapshot, WAL
included. Restore: stop every server and worker, replace the database file
with the copy (and delete its -wal and -shm files), start again. PostgreSQL
has its own tool: `pg_dump` (and `pg_restore` or psql to restore).
"""

import sqlite3
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent  # the service, one folder up
sys.path.insert(0, str(PROJECT))

import database  # noqa: E402 (the service's modules are one folder up)


def backup(target):
    if not database.SQLITE:
        raise SystemExit(
            "DATABASE_URL is not SQLite: back PostgreSQL up with pg_dump, e.g. "
            "pg_dump --format=custom --file=backup.dump <database>"
        )
    source_path = database.engine().url.database
    if not source_path or source_path == ":memory:" or not Path(source_path).exists():
        raise SystemExit(f"no SQLite database at {source_path!r} to back up")
    target = Path(target)
    if target.exists():
        raise SystemExit(f"{target} exists already: give a new file")
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(target)
    try:
        with copy:
            # In one step: a read transaction, which in WAL mode never holds up
            # writers. (In several steps, every write meanwhile would restart it.)
            source.backup(copy)
        problems = copy.execute("PRAGMA integrity_check").fetchone()[0]
        if problems != "ok":
            raise SystemExit(f"the copy failed its integrity check: {problems}")
    finally:
        copy.close()
        source.close()
    print(f"backed up {source_path} to {target}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: ./run.sh backup FILE")
    backup(sys.argv[1])
