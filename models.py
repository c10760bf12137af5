"""The database: tables, engine and sessions, from DATABASE_URL.

SQLite (the default) is tuned so that many threads and processes can write
at once: WAL, a busy timeout, foreign keys on, and write transactions that
take the write lock up front (BEGIN IMMEDIATE) so that a reader turning
writer never fails with "database is locked".
"""
from contextlib import contextmanager

from sqlalchemy import (BigInteger, CheckConstraint, Float, ForeignKey, Index,
                        Integer, LargeBinary, String, create_engine, event, select,
                        text)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (DeclarativeBase, Mapped, mapped_column,
                            relationship, sessionmaker)

import config

# SQLite only gives AUTOINCREMENT (ids never reused) to "INTEGER PRIMARY KEY".
Id = BigInteger().with_variant(Integer, "sqlite")
MAX_ID = 2**63 - 1


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(254))
    gender: Mapped[str | None] = mapped_column(String(32))
    profile_pic: Mapped[str | None] = mapped_column(String(2048))
    # Carried in every token; bumping it revokes all tokens issued before.
    token_version: Mapped[int] = mapped_column(default=0)

    stats: Mapped["Stats"] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True)

    def to_json(self):
        path = f"/users/{self.id}"
        return {"id": self.id, "username": self.username, "email": self.email,
                "gender": self.gender, "profile_pic": self.profile_pic,
                "self": path, "stats": path + "/stats", "pdf": path + "/pdf"}


STAT_FIELDS = ("loss_count", "session_count", "total_time", "victory_count")


class Stats(Base):
    __tablename__ = "stats"
    __table_args__ = tuple(CheckConstraint(f"{name} >= 0", name=f"{name}_not_negative")
                           for name in STAT_FIELDS)

    user_id: Mapped[int] = mapped_column(
        Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    loss_count: Mapped[int] = mapped_column(BigInteger, default=0)
    session_count: Mapped[int] = mapped_column(BigInteger, default=0)
    total_time: Mapped[int] = mapped_column(BigInteger, default=0)
    victory_count: Mapped[int] = mapped_column(BigInteger, default=0)

    user: Mapped[User] = relationship(back_populates="stats")

    def to_json(self):
        return {name: getattr(self, name) for name in STAT_FIELDS}


class Report(Base):
    """One requested PDF report: pending until a worker stores it as done or failed."""
    __tablename__ = "reports"
    __table_args__ = (
        # At most one job per user in the queue, even with concurrent POSTs.
        Index("one_pending_report_per_user", "user_id", unique=True,
              sqlite_where=text("state = 'pending'"),
              postgresql_where=text("state = 'pending'")),
        Index("reports_by_user_and_state", "user_id", "state"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, done, failed
    published_at: Mapped[float] = mapped_column(Float)  # the last time its job was queued
    finished_at: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(500))
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class LoginFailure(Base):
    """One failed login; the recent ones of a username decide throttling.

    Kept in the database so that every server sharing it throttles alike.
    """
    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), index=True)
    failed_at: Mapped[float] = mapped_column(Float, index=True)


def _engine_for(url_text):
    url = make_url(url_text)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True,
                             pool_size=config.WEB_THREADS + 2)
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
        immediate = connection.get_execution_options().get("write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


engine = _engine_for(config.DATABASE_URL)
_reader = sessionmaker(engine, expire_on_commit=False)
_writer = sessionmaker(engine.execution_options(write=True), expire_on_commit=False)


@contextmanager
def read_session():
    with _reader() as session:
        yield session


@contextmanager
def write_session():
    """A transaction that commits on success and rolls back on any error."""
    with _writer() as session, session.begin():
        yield session


def create_tables():
    Base.metadata.create_all(engine)


def database_is_up():
    try:
        with engine.connect() as connection:
            # A table, not "SELECT 1": that would succeed without reading the database.
            connection.execute(select(User.id).limit(1))
        return True
    except Exception:
        return False
