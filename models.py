"""The tables (the whole schema), and the queries of users and their stats.

Each query is a small function over a statement SQLAlchemy built and compiled once
(database.Statement): a route reads as a few named steps, and a request costs little more
than its SQL. The other tables' queries are in reports.py, leaderboard.py, throttle.py, auth.py.
"""

import sqlalchemy as sa

from database import SQLITE, Statement, reading

# SQLite only gives AUTOINCREMENT (ids never reused) to "INTEGER PRIMARY KEY".
Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
MAX_ID = 2**63 - 1
STAT_FIELDS = ("loss_count", "session_count", "total_time", "victory_count")

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("username", sa.String(32), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("gender", sa.String(32)),
    sa.Column("profile_pic", sa.String(2048)),
    # Carried in every token; bumping it revokes all tokens issued before.
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

stats = sa.Table(
    "stats",
    metadata,
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in STAT_FIELDS),
    *(sa.CheckConstraint(f"{name} >= 0") for name in STAT_FIELDS),
)

# The win rate and whom it ranks, as SQL text: the same text in the index, its migration
# (0004) and the queries, for both databases' planners to match them (and a literal 0, not
# a parameter, for the partial index). In floats: two counts' sum may not fit a BIGINT.
WIN_RATE = (
    "CAST({t}victory_count AS FLOAT)"
    " / (CAST({t}victory_count AS FLOAT) + CAST({t}loss_count AS FLOAT))"
)
PLAYED = "{t}victory_count > 0 OR {t}loss_count > 0"

# The leaderboard's orders (leaderboard.py): best value first, then lowest id.
for _name in STAT_FIELDS:
    sa.Index(f"stats_by_{_name}", stats.c[_name].desc(), stats.c.user_id)
sa.Index(
    "stats_by_win_rate",
    sa.text(f"({WIN_RATE.format(t='')}) DESC"),
    stats.c.user_id,
    sqlite_where=sa.text(PLAYED.format(t="")),
    postgresql_where=sa.text(PLAYED.format(t="")),
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # pending (queued), rendering (a worker took it: it reads the data after this), done, failed
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("published_at", sa.Float, nullable=False),  # the last time its job was queued
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.String(500)),
    sa.Column("pdf", sa.LargeBinary),
    # At most one job per user in the queue, even with concurrent POSTs.
    sa.Index(
        "one_pending_report_per_user",
        "user_id",
        unique=True,
        sqlite_where=sa.text("state = 'pending'"),
        postgresql_where=sa.text("state = 'pending'"),
    ),
    sa.Index("reports_by_user_and_state", "user_id", "state"),
    # For the jobs queued before a report (its Retry-After): migration 0002.
    sa.Index("reports_by_state", "state", "id"),
    sqlite_autoincrement=True,
)

# How many users there are (n), and how many have played (with_games: the win-rate
# leaderboard's), kept with every write that changes them: COUNT(*) of 100,000 users
# took 7.7 ms on PostgreSQL, against 0.18 ms for the page of 100 itself.
user_count = sa.Table(
    "user_count",
    metadata,
    sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("with_games", sa.BigInteger, nullable=False, server_default="0"),
)

# Tokens ended by POST /logout, until they would have expired anyway (auth.py).
revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

# Recent events that throttle (throttle.py: a row per slot of a key): failed logins by username,
# sign-ups and logins by client address; in the database, so that every server counts alike.
recent_events = sa.Table(
    "recent_events",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # login-failure, sign-up, login
    sa.Column("key", sa.String(64), primary_key=True),  # a username, or a client address
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    # A login being checked holds a failure's slot until its outcome is known.
    sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
)


ANY_USER = Statement(sa.select(users.c.id).limit(1))


def database_is_up():
    try:
        with reading() as db:
            # A table, not "SELECT 1": that would succeed without reading the database.
            ANY_USER.rows(db)
        return True
    except Exception:
        return False


# Users

_user_by_id = sa.select(users).where(users.c.id == sa.bindparam("id"))
USER_BY_ID = Statement(_user_by_id)
# PostgreSQL: the row stays locked until the transaction ends, so a deletion or password change
# cannot commit between this check and the write after it (SQLite: BEGIN IMMEDIATE serialises
# writers). NO KEY: inserting a report or stats row, which only key-shares it, need not wait.
USER_BY_ID_LOCKED = Statement(_user_by_id.with_for_update(key_share=True))
USER_BY_NAME = Statement(sa.select(users).where(users.c.username == sa.bindparam("username")))
# The user_count row, by how many users and players (with_games) a write adds or removes.
COUNT_CHANGE = Statement(
    user_count.update().values(
        n=user_count.c.n + sa.bindparam("users"),
        with_games=user_count.c.with_games + sa.bindparam("players"),
    )
)


def _sql_text(value):
    """A string constant written into the SQL (not a parameter to bind on every run)."""
    return sa.literal_column("'" + value.replace("'", "''") + "'", sa.String)


def _json_string(column):
    """A text column as a JSON string (or null), escaped alike by both databases."""
    if SQLITE:
        return sa.func.json_quote(column)
    return sa.func.coalesce(sa.cast(sa.func.to_json(column), sa.String), _sql_text("null"))


def _user_json(table):
    """CONTRACT.md's user representation of a users-shaped table, as JSON the database writes: built
    in Python, the list was 0.22x of the ceiling, 0.74x this way. Spelt out key by key, in order, as
    compact JSON: SQLite's json_object and PostgreSQL's json_build_object differ in style."""
    path = _sql_text('"/users/') + sa.cast(table.c.id, sa.String)
    json = _sql_text('{"id":') + sa.cast(table.c.id, sa.String)
    for name in ("username", "email", "gender", "profile_pic"):
        json = json + _sql_text(f',"{name}":') + _json_string(table.c[name])
    for name, suffix in (("self", ""), ("stats", "/stats"), ("pdf", "/pdf")):
        json = json + _sql_text(f',"{name}":') + path + _sql_text(f'{suffix}"')
    return json + _sql_text("}")


USER_JSON = Statement(sa.select(_user_json(users)).where(users.c.id == sa.bindparam("id")))
_users_by_id = sa.select(users).order_by(users.c.id)
_page = _users_by_id.limit(sa.bindparam("limit")).offset(sa.bindparam("offset")).subquery()
_comma = _sql_text(",")
if SQLITE:  # it aggregates rows in the subquery's order
    _page_json = sa.func.group_concat(_user_json(_page), _comma)
else:  # PostgreSQL must be told; its dialect is imported only here (2 MiB)
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    _page_json = sa.func.string_agg(_user_json(_page), aggregate_order_by(_comma, _page.c.id))
_page_array = _sql_text("[") + sa.func.coalesce(_page_json, _sql_text("")) + _sql_text("]")
_users_in_all = sa.select(user_count.c.n).scalar_subquery()
# With the count, in one statement: one snapshot, so X-Total-Count and the next link always
# agree with the page, whatever sign-ups commit meanwhile.
COUNT_AND_PAGE_JSON = Statement(sa.select(_users_in_all, _page_array))
NEW_USER_COLUMNS = ("username", "password_hash", "email", "gender", "profile_pic")
_new_user = users.insert().values({name: sa.bindparam(name) for name in NEW_USER_COLUMNS})
INSERT_USER = Statement(_new_user.returning(users.c.id))
INSERT_STATS = Statement(stats.insert().values(user_id=sa.bindparam("id")))
DELETE_USER = Statement(users.delete().where(users.c.id == sa.bindparam("id")))


def possible_id(number):
    """Whether number can be an id at all (SQLite would overflow on larger ones)."""
    return 0 < number <= MAX_ID


def find_user(db, user_id, lock=False):
    """The user's row, or None; lock=True keeps it locked until the write commits."""
    statement = USER_BY_ID_LOCKED if lock else USER_BY_ID
    return statement.first(db, {"id": user_id}) if possible_id(user_id) else None


def user_json(db, user_id):
    return USER_JSON.scalar(db, {"id": user_id}) if possible_id(user_id) else None


def find_user_by_name(db, username):
    return USER_BY_NAME.first(db, {"username": username})


def page_of_users(db, limit, offset):
    """(number of users in all, the page as a JSON array ordered by id)."""
    return tuple(COUNT_AND_PAGE_JSON.run(db, {"limit": limit, "offset": offset}).fetchone())


def create_user(db, fields):
    """The new user's id, with their stats at zero; IntegrityError if the name is taken."""
    user_id = INSERT_USER.scalar(db, {name: fields.get(name) for name in NEW_USER_COLUMNS})
    INSERT_STATS.run(db, {"id": user_id})
    COUNT_CHANGE.run(db, {"users": 1, "players": 0})
    return user_id


def update_user(db, user_id, fields):
    """Changes the fields given; a new password_hash also ends every older token."""
    if "password_hash" in fields:
        fields = {**fields, "token_version": users.c.token_version + 1}
    if fields:  # any subset of the columns: a statement built and compiled for this call
        Statement(users.update().where(users.c.id == user_id).values(**fields)).run(db)


def delete_user(db, user_id):
    had_played = played(find_stats(db, user_id))
    if DELETE_USER.run(db, {"id": user_id}).rowcount:  # stats, reports: ON DELETE CASCADE
        COUNT_CHANGE.run(db, {"users": -1, "players": -int(had_played)})


# Stats

_stats_of_user = stats.c.user_id == sa.bindparam("id")
STATS_BY_USER = Statement(sa.select(stats).where(_stats_of_user))
# One statement for any subset of the fields: those not given keep their value.
_given_or_kept = {
    name: sa.func.coalesce(sa.bindparam(name, type_=sa.BigInteger), stats.c[name])
    for name in STAT_FIELDS
}
UPDATE_STATS = Statement(
    stats.update().where(_stats_of_user).values(_given_or_kept).returning(*stats.c)
)


def played(row):
    return row is not None and (row.victory_count > 0 or row.loss_count > 0)


def stats_json(row):
    return {name: getattr(row, name) for name in STAT_FIELDS}


def find_stats(db, user_id):
    return STATS_BY_USER.first(db, {"id": user_id}) if possible_id(user_id) else None


def update_stats(db, user_id, fields):
    """The stats after the change (fields not given keep their value)."""
    # Only a change of victories or losses can change whom the win rate ranks.
    counted = "victory_count" in fields or "loss_count" in fields
    had_played = counted and played(find_stats(db, user_id))
    values = {name: fields.get(name) for name in STAT_FIELDS}
    row = UPDATE_STATS.first(db, {"id": user_id, **values})
    if counted and played(row) != had_played:  # the win-rate leaderboard's count
        COUNT_CHANGE.run(db, {"users": 0, "players": -1 if had_played else 1})
    return row
