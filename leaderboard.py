"""The leaderboard (CONTRACT.md): users ranked by one of their stats, best first.

A rank is 1 + the number of users with a strictly better value, so ties share it and the
next one skips (1, 2, 2, 4), and it is the same on every page. A page is read in order from
the index of its `by` (migration 0004); in that order a rank is 1 + the position of the first
user with the same value, so only the page's first value needs a count: one short range scan
of the same index, with that value bound (a count correlated to each row, on PostgreSQL, was
planned as a scan of every row per rank: 0.02x of GET /users).
"""

from sqlalchemy import Float, bindparam, func, literal_column, select, text

from database import Statement
from models import PLAYED, WIN_RATE, stats, user_count, users

ORDERS = ("victory_count", "loss_count", "session_count", "total_time", "win_rate")


def _statements(by):
    """(how many it ranks, how many have a better value than :value, the page)."""
    if by == "win_rate":  # the same SQL text as the index, for the planners to match
        value = literal_column(WIN_RATE.format(t="stats."), Float)
        ranked = [text(f"({PLAYED.format(t='stats.')})")]
        total = user_count.c.with_games
    else:
        value, ranked, total = stats.c[by], [], user_count.c.n
    better = select(func.count()).select_from(stats).where(*ranked, value > bindparam("value"))
    page = (
        # The count with every row: one statement for a page (no row, no count).
        select(select(total).scalar_subquery().label("total"))
        .add_columns(users.c.id, users.c.username, value.label("value"))
        .join_from(stats, users, users.c.id == stats.c.user_id)
        .where(*ranked)
        .order_by(value.desc(), stats.c.user_id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    return Statement(select(total)), Statement(better), Statement(page)


STATEMENTS = {by: _statements(by) for by in ORDERS}


def page(db, by, limit, offset):
    """(how many users the order ranks, the page's entries as dicts)."""
    count, better, page_rows = STATEMENTS[by]
    rows = page_rows.rows(db, {"limit": limit, "offset": offset})
    entries = []
    for position, row in enumerate(rows, start=offset):
        if entries and row.value == entries[-1]["value"]:
            rank = entries[-1]["rank"]  # a tie
        elif entries or offset == 0:
            rank = position + 1  # the first of its value: those before are better
        else:  # the page's first row: ties may reach back onto earlier pages
            rank = better.scalar(db, {"value": row.value}) + 1
        user = {"id": row.id, "username": row.username, "self": f"/users/{row.id}"}
        entries.append({"rank": rank, **user, "value": row.value})
    return (rows[0].total if rows else count.scalar(db)), entries
