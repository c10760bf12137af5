"""The database: its tables, its connections, and every query the service makes.

Queries are plain SQLAlchemy Core, one small function each, so that a
route reads as a few named steps and a request costs no more than its SQL.

SQLite (the default) is tuned so that many threads and processes can write
at once: WAL, a busy timeout, foreign keys on, and write transactions that
take the write lock up front (BEGIN IMMEDIATE) so that a reader turning
writer never fails with "database is locked".
"""
import threading
import time
from contextlib import contextmanager, nullcontext

from sqlalchemy import (BigInteger, CheckConstraint, Column, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, bindparam,
                        create_engine, delete, event, func, insert, select, text, update)
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
    Column("token_version", Integer, nullable=False, default=0),
    sqlite_autoincrement=True,
)

stats = Table(
    "stats", metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    *(Column(name, BigInteger, CheckConstraint(f"{name} >= 0"), nullable=False, default=0)
      for name in STAT_FIELDS),
)

reports = Table(
    "reports", metadata,
    Column("id", Id, primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # pending, done, failed
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

# Failed logins; the recent ones of a username decide throttling. Kept in
# the database so that every server sharing it throttles alike.
login_failures = Table(
    "login_failures", metadata,
    Column("id", Id, primary_key=True),
    Column("username", String(32), nullable=False, index=True),
    Column("failed_at", Float, nullable=False, index=True),
)


# Connections

def _engine_for(url_text):
    url = make_url(url_text)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=config.WEB_THREADS + 2)
    if url.database and url.database != ":memory:":
        path = config.PROJECT_DIR / url.database  # relative paths: to the project
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    engine = create_engine(url, pool_size=config.WEB_THREADS + 2,
                           connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _tune(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        for pragma in ("journal_mode=WAL", "busy_timeout=30000",
                       "foreign_keys=ON", "synchronous=FULL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # Reads run each statement on its own (SQLite's autocommit): a
        # transaction would only add two statements to every request.
        if connection.get_execution_options().get("write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


engine = _engine_for(config.DATABASE_URL)
_writer = engine.execution_options(write=True)
# SQLite lets one writer in at a time, and makes the others poll for the lock
# in sleeps of up to 100 ms: the threads of one process queue here instead,
# and are woken the moment the writer before them commits.
_one_writer_at_a_time = threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()


@contextmanager
def reading():
    with engine.connect() as connection:
        yield connection


@contextmanager
def writing():
    """One transaction: committed on success, rolled back on any error."""
    with _one_writer_at_a_time, _writer.begin() as connection:
        yield connection


def create_tables():
    metadata.create_all(engine)


def database_is_up():
    try:
        with reading() as db:
            # A table, not "SELECT 1": that would succeed without reading the database.
            db.execute(select(users.c.id).limit(1))
        return True
    except Exception:
        return False


# Users
#
# The statements of the busiest routes are built once, here: building one
# costs more than SQLite takes to run it.

USER_BY_ID = select(users).where(users.c.id == bindparam("id"))
USER_COUNT = select(func.count()).select_from(users)
USERS_PAGE = select(users).order_by(users.c.id).limit(bindparam("limit")).offset(
    bindparam("offset"))


def possible_id(number):
    """Whether number can be an id at all (SQLite would overflow on larger ones)."""
    return 0 < number <= MAX_ID


def user_json(user):
    path = f"/users/{user.id}"
    return {"id": user.id, "username": user.username, "email": user.email,
            "gender": user.gender, "profile_pic": user.profile_pic,
            "self": path, "stats": path + "/stats", "pdf": path + "/pdf"}


def find_user(db, user_id):
    return db.execute(USER_BY_ID, {"id": user_id}).first() if possible_id(user_id) else None


def find_user_by_name(db, username):
    return db.execute(select(users).where(users.c.username == username)).first()


def page_of_users(db, limit, offset):
    """(number of users in all, the users of this page, by id)."""
    total = db.execute(USER_COUNT).scalar_one()
    page = db.execute(USERS_PAGE, {"limit": limit, "offset": offset}).all()
    return total, page


def create_user(db, fields):
    """The new user's row, with their stats at zero; IntegrityError if the name is taken."""
    user_id = db.execute(insert(users).values(**fields, token_version=0)
                         .returning(users.c.id)).scalar_one()
    db.execute(insert(stats).values(user_id=user_id))
    return find_user(db, user_id)


def update_user(db, user_id, fields):
    """Changes the fields given; a new password_hash also revokes older tokens."""
    if "password_hash" in fields:
        fields = {**fields, "token_version": users.c.token_version + 1}
    if fields:
        db.execute(update(users).where(users.c.id == user_id).values(**fields))
    return find_user(db, user_id)


def delete_user(db, user_id):
    db.execute(delete(users).where(users.c.id == user_id))  # stats, reports: ON DELETE CASCADE


# Stats

STATS_BY_USER = select(stats).where(stats.c.user_id == bindparam("id"))
# One statement for any subset of the fields: those not given keep their value.
UPDATE_STATS = (update(stats).where(stats.c.user_id == bindparam("id"))
                .values({name: func.coalesce(bindparam(name, type_=BigInteger), stats.c[name])
                         for name in STAT_FIELDS})
                .returning(*stats.c))


def stats_json(row):
    return {name: getattr(row, name) for name in STAT_FIELDS}


def find_stats(db, user_id):
    return db.execute(STATS_BY_USER, {"id": user_id}).first() if possible_id(user_id) else None


def update_stats(db, user_id, fields):
    return db.execute(UPDATE_STATS, {"id": user_id, **dict.fromkeys(STAT_FIELDS), **fields}
                      ).first()


# Login failures

def recent_login_failures(db, username, since):
    """Times of the username's failed logins after since, newest first."""
    return db.execute(select(login_failures.c.failed_at)
                      .where(login_failures.c.username == username,
                             login_failures.c.failed_at > since)
                      .order_by(login_failures.c.failed_at.desc())).scalars().all()


def record_login_failure(db, username, forget_before):
    db.execute(delete(login_failures).where(login_failures.c.failed_at <= forget_before))
    db.execute(insert(login_failures).values(username=username, failed_at=time.time()))


# Reports

def pending_report(db, user_id):
    return db.execute(select(reports.c.id, reports.c.published_at)
                      .where(reports.c.user_id == user_id, reports.c.state == "pending")).first()


def queue_report(db, user_id, report_id=None):
    """A new pending report (or report_id again), marked as published now; its id."""
    if report_id is None:
        return db.execute(insert(reports).values(user_id=user_id, published_at=time.time())
                          .returning(reports.c.id)).scalar_one()
    db.execute(update(reports).where(reports.c.id == report_id)
               .values(published_at=time.time()))
    return report_id


def forget_pending_report(db, report_id):
    db.execute(delete(reports).where(reports.c.id == report_id, reports.c.state == "pending"))


REPORT_SUMMARY = (reports.c.id, reports.c.user_id, reports.c.state, reports.c.finished_at,
                  reports.c.error)


def newest_report(db, user_id, state=None):
    """The user's newest report (of that state), without its PDF bytes."""
    query = select(*REPORT_SUMMARY).where(reports.c.user_id == user_id)
    if state:
        query = query.where(reports.c.state == state)
    return db.execute(query.order_by(reports.c.id.desc()).limit(1)).first()


def find_report(db, report_id):
    return db.execute(select(*REPORT_SUMMARY).where(reports.c.id == report_id)).first()


def report_pdf(db, report_id):
    return db.execute(select(reports.c.pdf).where(reports.c.id == report_id)).scalar_one()


def finish_report(db, report, pdf, error):
    """Stores a pending report's outcome; a done one replaces the user's older reports."""
    finished = db.execute(
        update(reports).where(reports.c.id == report.id, reports.c.state == "pending")
        .values(state="done" if pdf else "failed", pdf=pdf, error=error,
                finished_at=time.time()))
    if finished.rowcount and pdf:
        db.execute(delete(reports).where(reports.c.user_id == report.user_id,
                                         reports.c.id < report.id,
                                         reports.c.state != "pending"))
