"""Connections to the database, its transactions, and statements compiled once.

SQLAlchemy defines the tables (models.py), compiles the statements and pools the connections; the
statements then run on the pooled DB-API connection itself. Importing this module connects to
nothing and creates no file: the engine, and the SQLite file's folder, are made on first use.
"""

import threading
from collections import namedtuple
from contextlib import closing, contextmanager, nullcontext
from functools import cache

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

import config

URL = make_url(config.DATABASE_URL)
SQLITE = URL.get_backend_name() == "sqlite"
_driver = URL.get_dialect().import_dbapi()  # sqlite3 or psycopg: imported, not connected
DatabaseError, IntegrityError = _driver.Error, _driver.IntegrityError
# WAL and a busy timeout: many threads and processes can read and write at once.
SQLITE_PRAGMAS = ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON", "synchronous=FULL")


@cache  # one engine per process, made when first needed
def engine():
    if not SQLITE:
        return create_engine(URL, pool_pre_ping=True, pool_size=config.WEB_THREADS + 2)
    url = URL
    if url.database and url.database != ":memory:":
        path = config.PROJECT_DIR / url.database  # relative paths: to the project
        path.parent.mkdir(parents=True, exist_ok=True)  # the data folder, made on first use
        url = url.set(database=str(path))
    # "named" (:name) parameters: sqlite3 then takes the same dicts as psycopg.
    sqlite_engine = create_engine(
        url,
        pool_size=config.WEB_THREADS + 2,
        paramstyle="named",
        connect_args={"check_same_thread": False},
    )

    @event.listens_for(sqlite_engine, "connect")
    def _tune(dbapi_connection, _record):
        # Autocommit: a read is one statement, and writing() says BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        for pragma in SQLITE_PRAGMAS:
            dbapi_connection.execute(f"PRAGMA {pragma}")

    return sqlite_engine


# SQLite lets one writer in at a time and makes the others poll for the lock in
# sleeps of up to 100 ms: the threads of one process queue here instead, woken the
# moment the writer before them commits (PATCH stats p99: 935 ms without, 212 ms with).
_one_writer_at_a_time = threading.Lock() if SQLITE else nullcontext()
_thread = threading.local()


@contextmanager
def reading():
    """A DB-API connection in autocommit: each statement sees the latest commit."""
    if not SQLITE:  # from the pool; closing it gives it back, rolling back what is left
        with closing(engine().raw_connection()) as connection:
            yield connection
        return
    # On SQLite each thread keeps a connection of its own, which never goes stale: with the
    # pool's lock and bookkeeping, PATCH stats was 0.15x of the ceiling, 0.20x without.
    # One the database failed on is closed and replaced.
    connection = getattr(_thread, "connection", None) or engine().raw_connection()
    _thread.connection = connection
    try:
        yield connection
    except DatabaseError:
        _thread.connection = None
        connection.invalidate()
        raise


@contextmanager
def writing():
    """One transaction: committed on success, rolled back on any error."""
    with _one_writer_at_a_time, reading() as connection:
        if SQLITE:
            # The write lock up front: a reader turning writer could fail with "database is locked".
            connection.cursor().execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


class Statement:
    """A statement compiled once (on first use) for this database, run on a DB-API cursor:
    SQLAlchemy's Connection.execute was 40% of a GET /users/{id} (py-spy). It takes exactly
    the parameters it names: a missing or unknown one is a bug in the caller, so it raises
    rather than binding NULL."""

    def __init__(self, statement):
        self._statement = statement
        self._sql = None
        self._row = None

    @property
    def sql(self):
        if self._sql is None:
            compiled = self._statement.compile(dialect=engine().dialect)
            self.required = {name for name, bind in compiled.binds.items() if bind.required}
            # The values written in the statement itself (literals, constants).
            self.constants = {
                name: value for name, value in compiled.params.items() if name not in self.required
            }
            self._sql = str(compiled)
        return self._sql

    def run(self, db, params=None):
        sql, params = self.sql, params or {}
        if params.keys() != self.required:
            raise TypeError(
                f"statement needs parameters {sorted(self.required)}, got {sorted(params)}: {sql}"
            )
        cursor = db.cursor()
        cursor.execute(sql, {**self.constants, **params} if params else self.constants)
        return cursor

    def rows(self, db, params=None):
        cursor = self.run(db, params)
        if self._row is None:
            self._row = namedtuple("Row", [column[0] for column in cursor.description])
        return [self._row._make(values) for values in cursor.fetchall()]

    def first(self, db, params=None):
        found = self.rows(db, params)
        return found[0] if found else None

    def scalar(self, db, params=None):
        row = self.run(db, params).fetchone()
        return row[0] if row else None


@contextmanager
def schema_lock():
    """A transaction that holds the lock every process takes to change the schema:
    of servers and workers starting at once, one changes it, the others then find it done."""
    with engine().begin() as connection:
        lock = "BEGIN IMMEDIATE" if SQLITE else "SELECT pg_advisory_xact_lock(7249)"
        connection.exec_driver_sql(lock)
        yield connection
