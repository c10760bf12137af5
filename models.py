"""The database: its tables, its connections, and every query the service makes.

Each query is one small function over a statement that SQLAlchemy built and
compiled once (see Statement), so that a route reads as a few named steps
and a request costs little more than its SQL.

SQLite (the default) is tuned so that many threads and processes can write
at once: WAL, a busy timeout, foreign keys on, and write transactions that
take the write lock up front (BEGIN IMMEDIATE) so that a reader turning
writer never fails with "database is locked".
"""
import threading
import time
from collections import namedtuple
from contextlib import contextmanager, nullcontext

from sqlalchemy import (BigInteger, CheckConstraint, Column, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, bindparam,
                        cast, create_engine, delete, event, func, insert, literal, or_, select,
                        text, update)
from sqlalchemy.engine import make_url

import config

# SQLite only gives AUTOINCREMENT (ids never reused) to "INTEGER PRIMARY KEY".
Id = BigInteger().with_variant(Integer, "sqlite")
MAX_ID = 2**63 - 1
STAT_FIELDS = ("loss_count", "session_count", "total_time", "victory_count")

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Id, primary_key=True),
    Column("username", String(32), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("email", String(254)),
    Column("gender", String(32)),
    Column("profile_pic", String(2048)),
    # Carried in every token; bumping it revokes all tokens issued before.
    Column("token_version", Integer, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

stats = Table(
    "stats", metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    *(Column(name, BigInteger, CheckConstraint(f"{name} >= 0"), nullable=False,
             server_default="0")
      for name in STAT_FIELDS),
)

reports = Table(
    "reports", metadata,
    Column("id", Id, primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # pending (queued), rendering (a worker took it: it reads the data after this), done, failed
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("published_at", Float, nullable=False),  # the last time its job was queued
    Column("finished_at", Float),
    Column("error", String(500)),
    Column("pdf", LargeBinary),
    # At most one job per user in the queue, even with concurrent POSTs.
    Index("one_pending_report_per_user", "user_id", unique=True,
          sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'")),
    Index("reports_by_user_and_state", "user_id", "state"),
    sqlite_autoincrement=True,
)

# How many users there are, kept with every sign-up and deletion: counting
# the rows costs time in proportion to them (1.8x at 100,000 users in bench).
user_count = Table(
    "user_count", metadata,
    Column("id", Integer, CheckConstraint("id = 1"), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# Failed logins; the recent ones of a username decide throttling. Kept in
# the database so that every server sharing it throttles alike.
login_failures = Table(
    "login_failures", metadata,
    Column("id", Id, primary_key=True),
    Column("username", String(32), nullable=False, index=True),
    Column("failed_at", Float, nullable=False, index=True),
)

# Logins whose password is being checked right now. They count toward the
# limit too: otherwise guesses sent at once would all get in under it.
login_attempts = Table(
    "login_attempts", metadata,
    Column("id", Id, primary_key=True),
    Column("username", String(32), nullable=False, index=True),
    Column("started_at", Float, nullable=False, index=True),
)


# Connections
#
# SQLAlchemy defines the tables, builds and compiles every statement for the
# database at hand, and pools the connections; the statements then run on
# the pooled DB-API connection itself. On these one-row queries SQLAlchemy's
# Connection.execute cost more than everything else in a request (40% of a
# GET /users/{id} in py-spy), so the busiest statements are compiled once.

def _engine_for(url_text):
    url = make_url(url_text)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=config.WEB_THREADS + 2)
    if url.database and url.database != ":memory:":
        path = config.PROJECT_DIR / url.database  # relative paths: to the project
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    # "named" (:name) parameters: sqlite3 then takes the same dicts as psycopg.
    # No rollback when a connection goes back to the pool: in autocommit, reads
    # leave no transaction open, and writing() ends its own. (Half the cost of
    # the pool in py-spy.)
    engine = create_engine(url, pool_size=config.WEB_THREADS + 2, paramstyle="named",
                           pool_reset_on_return=None,
                           connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _tune(dbapi_connection, _record):
        # Autocommit: a read is one statement, and writing() says BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        for pragma in ("journal_mode=WAL", "busy_timeout=30000",
                       "foreign_keys=ON", "synchronous=FULL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    return engine


engine = _engine_for(config.DATABASE_URL)
SQLITE = engine.dialect.name == "sqlite"
DatabaseError = engine.dialect.loaded_dbapi.Error
IntegrityError = engine.dialect.loaded_dbapi.IntegrityError
# SQLite lets one writer in at a time, and makes the others poll for the lock
# in sleeps of up to 100 ms: the threads of one process queue here instead,
# and are woken the moment the writer before them commits.
_one_writer_at_a_time = threading.Lock() if SQLITE else nullcontext()


_thread = threading.local()


@contextmanager
def reading():
    if not SQLITE:
        connection = engine.raw_connection()
        try:
            yield connection
        finally:
            connection.close()  # back to the pool, which rolls back what is left
        return
    # On SQLite each thread keeps a connection of its own: the pool's lock and
    # bookkeeping cost more than the query (py-spy), and SQLite connections
    # never go stale. One the database failed on is closed and replaced.
    connection = getattr(_thread, "connection", None) or engine.raw_connection()
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
            # The write lock up front: a reader turning writer could fail instead.
            connection.cursor().execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


class Statement:
    """A statement compiled once for this database; rows as named tuples."""

    def __init__(self, statement):
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.constants = compiled.params  # the values written in the statement itself
        self.row = None

    def run(self, db, params=None):
        """Runs it with params; any parameter not given is null."""
        cursor = db.cursor()
        cursor.execute(self.sql, {**self.constants, **params} if params else self.constants)
        return cursor

    def rows(self, db, params=None):
        cursor = self.run(db, params)
        if self.row is None:
            self.row = namedtuple("Row", [column[0] for column in cursor.description])
        return [self.row._make(values) for values in cursor.fetchall()]

    def first(self, db, params=None):
        found = self.rows(db, params)
        return found[0] if found else None

    def scalar(self, db, params=None):
        """The first column of the first row, or None when there is no row."""
        row = self.run(db, params).fetchone()
        return row[0] if row else None


def run_once(db, statement):
    """Runs a statement built for this call (values bound in it); its cursor."""
    compiled = statement.compile(dialect=engine.dialect)
    cursor = db.cursor()
    cursor.execute(str(compiled), compiled.params)
    return cursor


def create_tables():
    """Creates what is missing, once, however many servers and workers start at once."""
    with engine.begin() as connection:
        # Whoever holds the lock first creates; the others then find the tables.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if SQLITE
                                   else "SELECT pg_advisory_xact_lock(7249)")
        metadata.create_all(connection)
        connection.execute(insert(user_count).from_select(
            ["id", "n"], select(literal(1), select(func.count()).select_from(users)
                                .scalar_subquery())
            .where(~select(user_count.c.id).exists())))


ANY_USER = Statement(select(users.c.id).limit(1))


def database_is_up():
    try:
        with reading() as db:
            # A table, not "SELECT 1": that would succeed without reading the database.
            ANY_USER.rows(db)
        return True
    except Exception:
        return False


# Users

_user_by_id = select(users).where(users.c.id == bindparam("id"))
USER_BY_ID = Statement(_user_by_id)
# PostgreSQL: the row stays locked until the transaction ends, so a deletion
# or password change cannot commit between this check and the write after it
# (SQLite has no row locks: BEGIN IMMEDIATE already serialises its writers).
# NO KEY: inserting a report or stats row, which only key-shares it, need not wait.
USER_BY_ID_LOCKED = Statement(_user_by_id.with_for_update(key_share=True))
USER_BY_NAME = Statement(select(users).where(users.c.username == bindparam("username")))
COUNT_SIGN_UP = Statement(update(user_count).values(n=user_count.c.n + 1))
COUNT_DELETION = Statement(update(user_count).values(n=user_count.c.n - 1))
RECOUNT_USERS = Statement(update(user_count).values(
    n=select(func.count()).select_from(users).scalar_subquery()))
# The user representation is written as JSON by the database: building rows
# and dicts in Python, then encoding them, cost more than the rest of a request.

def _user_json(table):
    """The JSON object of CONTRACT.md's user representation, from a users-shaped table."""
    path = literal("/users/") + cast(table.c.id, String)
    return (func.json_object if SQLITE else func.json_build_object)(
        "id", table.c.id, "username", table.c.username, "email", table.c.email,
        "gender", table.c.gender, "profile_pic", table.c.profile_pic, "self", path,
        "stats", path + "/stats", "pdf", path + "/pdf")


USER_JSON = Statement(select(cast(_user_json(users), String))
                      .where(users.c.id == bindparam("id")))
_page = (select(users).order_by(users.c.id)
         .limit(bindparam("limit")).offset(bindparam("offset")).subquery())
if SQLITE:  # it aggregates rows in the subquery's order
    _page_json = func.json_group_array(_user_json(_page))
else:  # PostgreSQL must be told; its dialect is imported only here (2 MiB)
    from sqlalchemy.dialects.postgresql import aggregate_order_by
    _page_json = func.json_agg(aggregate_order_by(_user_json(_page), _page.c.id))
# With the count, in one statement: one snapshot, so X-Total-Count and the
# next link always agree with the page, whatever sign-ups commit meanwhile.
COUNT_AND_PAGE_JSON = Statement(select(select(user_count.c.n).scalar_subquery(),
                                       func.coalesce(cast(_page_json, String), "[]")))
INSERT_USER = Statement(insert(users).values(
    {name: bindparam(name) for name in ("username", "password_hash", "email", "gender",
                                        "profile_pic")})
    .returning(users.c.id))
INSERT_STATS = Statement(insert(stats).values(user_id=bindparam("id")))
DELETE_USER = Statement(delete(users).where(users.c.id == bindparam("id")))


def possible_id(number):
    """Whether number can be an id at all (SQLite would overflow on larger ones)."""
    return 0 < number <= MAX_ID


def find_user(db, user_id, lock=False):
    """The user's row, or None; lock=True keeps it locked until the write commits."""
    if not possible_id(user_id):
        return None
    return (USER_BY_ID_LOCKED if lock else USER_BY_ID).first(db, {"id": user_id})


def user_json(db, user_id):
    """The user's representation as JSON text, or None."""
    return USER_JSON.scalar(db, {"id": user_id}) if possible_id(user_id) else None


def find_user_by_name(db, username):
    return USER_BY_NAME.first(db, {"username": username})


def page_of_users(db, limit, offset):
    """(number of users in all, the page as a JSON array ordered by id)."""
    return tuple(COUNT_AND_PAGE_JSON.run(db, {"limit": limit, "offset": offset}).fetchone())


def create_user(db, fields):
    """The new user's id, with their stats at zero; IntegrityError if the name is taken."""
    user_id = INSERT_USER.scalar(db, fields)  # fields not given are null
    INSERT_STATS.run(db, {"id": user_id})
    COUNT_SIGN_UP.run(db)
    return user_id


def update_user(db, user_id, fields):
    """Changes the fields given; a new password_hash also revokes older tokens."""
    if "password_hash" in fields:
        fields = {**fields, "token_version": users.c.token_version + 1}
    if fields:
        run_once(db, update(users).where(users.c.id == user_id).values(**fields))


def delete_user(db, user_id):
    if DELETE_USER.run(db, {"id": user_id}).rowcount:  # stats, reports: ON DELETE CASCADE
        COUNT_DELETION.run(db)


def recount_users(db):
    """For whoever adds users behind the service's back (bench.py's seeding)."""
    RECOUNT_USERS.run(db)


# Stats

STATS_BY_USER = Statement(select(stats).where(stats.c.user_id == bindparam("id")))
# One statement for any subset of the fields: those not given keep their value.
UPDATE_STATS = Statement(
    update(stats).where(stats.c.user_id == bindparam("id"))
    .values({name: func.coalesce(bindparam(name, type_=BigInteger), stats.c[name])
             for name in STAT_FIELDS})
    .returning(*stats.c))


def stats_json(row):
    return {name: getattr(row, name) for name in STAT_FIELDS}


def find_stats(db, user_id):
    return STATS_BY_USER.first(db, {"id": user_id}) if possible_id(user_id) else None


def update_stats(db, user_id, fields):
    return UPDATE_STATS.first(db, {"id": user_id, **fields})  # fields not given are null


# Login failures, and the attempts being checked

RECENT_FAILURES = Statement(
    select(login_failures.c.failed_at)
    .where(login_failures.c.username == bindparam("username"),
           login_failures.c.failed_at > bindparam("since"))
    .order_by(login_failures.c.failed_at.desc()))
FORGET_FAILURES = Statement(delete(login_failures)
                            .where(login_failures.c.failed_at <= bindparam("before")))
INSERT_FAILURE = Statement(insert(login_failures).values(username=bindparam("username"),
                                                         failed_at=bindparam("at")))
ATTEMPTS_IN_FLIGHT = Statement(
    select(func.count()).select_from(login_attempts)
    .where(login_attempts.c.username == bindparam("username"),
           login_attempts.c.started_at > bindparam("since")))
FORGET_ATTEMPTS = Statement(delete(login_attempts)
                            .where(login_attempts.c.started_at <= bindparam("before")))
INSERT_ATTEMPT = Statement(insert(login_attempts).values(username=bindparam("username"),
                                                         started_at=bindparam("at"))
                           .returning(login_attempts.c.id))
END_ATTEMPT = Statement(delete(login_attempts).where(login_attempts.c.id == bindparam("id")))
# PostgreSQL lets two transactions count the same rows at once; SQLite's
# writing() already lets one writer in at a time. (7250: create_tables has 7249.)
LOCK_LOGINS_OF = Statement(select(func.pg_advisory_xact_lock(
    literal(7250), func.hashtext(bindparam("username")))))


def recent_login_failures(db, username, since):
    """Times of the username's failed logins after since, newest first."""
    return [row.failed_at for row in RECENT_FAILURES.rows(db, {"username": username,
                                                               "since": since})]


def lock_logins_of(db, username):
    """Until the transaction ends, no other one counts or adds this username's attempts."""
    if not SQLITE:
        LOCK_LOGINS_OF.run(db, {"username": username})


def login_attempts_in_flight(db, username, since):
    return ATTEMPTS_IN_FLIGHT.scalar(db, {"username": username, "since": since})


def begin_login_attempt(db, username, forget_before):
    """Records an attempt in flight (and forgets those begun before forget_before); its id."""
    FORGET_ATTEMPTS.run(db, {"before": forget_before})
    return INSERT_ATTEMPT.scalar(db, {"username": username, "at": time.time()})


def end_login_attempt(db, attempt_id):
    END_ATTEMPT.run(db, {"id": attempt_id})


def record_login_failure(db, username, forget_before):
    """Records a failure now (and forgets those before forget_before)."""
    FORGET_FAILURES.run(db, {"before": forget_before})
    INSERT_FAILURE.run(db, {"username": username, "at": time.time()})


# Reports

UNFINISHED = ("pending", "rendering")
# Spelt out, not IN (...): IN compiles to an expanding parameter that only
# SQLAlchemy's own execute fills in, and Statement runs the SQL as it is.
_unfinished = or_(*(reports.c.state == state for state in UNFINISHED))
REPORT_SUMMARY = (reports.c.id, reports.c.user_id, reports.c.state, reports.c.finished_at,
                  reports.c.error)
PENDING_REPORT = Statement(select(reports.c.id, reports.c.published_at)
                           .where(reports.c.user_id == bindparam("user_id"),
                                  reports.c.state == "pending"))
INSERT_REPORT = Statement(insert(reports).values(user_id=bindparam("user_id"),
                                                 published_at=bindparam("at"))
                          .returning(reports.c.id))
REPUBLISHED = Statement(update(reports).where(reports.c.id == bindparam("id"),
                                               reports.c.state == "pending")
                        .values(published_at=bindparam("at")))
FORGET_PENDING = Statement(delete(reports).where(reports.c.id == bindparam("id"),
                                                 reports.c.state == "pending"))
_by_user_newest_first = (select(*REPORT_SUMMARY).where(reports.c.user_id == bindparam("user_id"))
                         .order_by(reports.c.id.desc()).limit(1))
NEWEST_REPORT = Statement(_by_user_newest_first)
_newest_done = _by_user_newest_first.where(reports.c.state == "done")
NEWEST_DONE_REPORT = Statement(_newest_done)
NEWEST_DONE_PDF = Statement(_newest_done.add_columns(reports.c.pdf))
REPORT_BY_ID = Statement(select(*REPORT_SUMMARY).where(reports.c.id == bindparam("id")))
START_REPORT = Statement(update(reports).where(reports.c.id == bindparam("id"),
                                                _unfinished)
                         .values(state="rendering"))
FINISH_REPORT = Statement(
    update(reports).where(reports.c.id == bindparam("id"), reports.c.state == "rendering")
    .values(state=bindparam("state"), pdf=bindparam("pdf"), error=bindparam("error"),
            finished_at=bindparam("at")))
DROP_REPLACED_REPORTS = Statement(
    delete(reports).where(reports.c.user_id == bindparam("user_id"),
                          reports.c.id < bindparam("id"), reports.c.state != "pending"))


ALL_UNFINISHED_REPORTS = Statement(select(reports.c.id, reports.c.user_id)
                                   .where(_unfinished))


def pending_report(db, user_id):
    return PENDING_REPORT.first(db, {"user_id": user_id})


def all_unfinished_reports(db):
    return ALL_UNFINISHED_REPORTS.rows(db)


def queue_report(db, user_id, report_id=None):
    """Report report_id again if it is still pending, else a new pending one,
    marked as published now; its id."""
    if report_id is not None and REPUBLISHED.run(db, {"id": report_id, "at": time.time()}).rowcount:
        return report_id
    return INSERT_REPORT.scalar(db, {"user_id": user_id, "at": time.time()})


def forget_pending_report(db, report_id):
    FORGET_PENDING.run(db, {"id": report_id})


def newest_report(db, user_id, state=None):
    """The user's newest report (of that state: only "done" is asked), without its PDF."""
    newest = NEWEST_DONE_REPORT if state == "done" else NEWEST_REPORT
    return newest.first(db, {"user_id": user_id})


def find_report(db, report_id):
    return REPORT_BY_ID.first(db, {"id": report_id})


def newest_pdf(db, user_id):
    """The user's newest done report with its PDF, read together: a report
    that finishes deletes the one it replaces, so an id read earlier may be gone."""
    return NEWEST_DONE_PDF.first(db, {"user_id": user_id})


def start_report(db, report_id):
    """Marks the report as taken by a worker (from now on a POST queues another);
    False when it was finished or deleted meanwhile."""
    return START_REPORT.run(db, {"id": report_id}).rowcount == 1


def finish_report(db, report, pdf, error):
    """Stores a started report's outcome; a done one replaces the user's older reports."""
    # PostgreSQL: the user row first, as a deletion of the user takes it: two
    # jobs of one user finishing at once would otherwise lock each other's rows.
    if find_user(db, report.user_id, lock=True) is None:
        return  # deleted meanwhile, reports and all
    finished = FINISH_REPORT.run(db, {"id": report.id, "state": "done" if pdf else "failed",
                                      "pdf": pdf, "error": error, "at": time.time()})
    if finished.rowcount and pdf:
        DROP_REPLACED_REPORTS.run(db, {"user_id": report.user_id, "id": report.id})
