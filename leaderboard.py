"""The leaderboard (CONTRACT.md): users ranked by one of their stats, best first.

A rank is 1 + the number of users with a strictly better value, so ties
share it and the next one skips (1, 2, 2, 4), and it is the same on every
page. Each order walks an index of its own (migration 0004), in which both
the page and each rank's count are a short range scan: at 100,000 users the
first page costs what it costs at ten.
"""

from sqlalchemy import bindparam, func, select

from database import Statement
from models import has_played, stats, user_count, users, win_rate

COUNTS = ("victory_count", "loss_count", "session_count", "total_time")
ORDERS = (*COUNTS, "win_rate")


def _page_statement(by):
    better = stats.alias("better")
    if by == "win_rate":
        value, better_value = win_rate(stats), win_rate(better)
        ranked, better_ranked = [has_played(stats)], [has_played(better)]
        total = user_count.c.with_games
    else:
        value, better_value = stats.c[by], better.c[by]
        ranked = better_ranked = []
        total = user_count.c.n
    rank = (
        select(func.count() + 1)
        .select_from(better)
        .where(*better_ranked, better_value > value)
        .scalar_subquery()
    )
    page = (
        select(rank.label("rank"), users.c.id, users.c.username, value.label("value"))
        .join_from(stats, users, users.c.id == stats.c.user_id)
        .where(*ranked)
        .order_by(value.desc(), stats.c.user_id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
    return Statement(select(total)), Statement(page)


STATEMENTS = {by: _page_statement(by) for by in ORDERS}


def page(db, by, limit, offset):
    """(how many users the order ranks, the page's entries as dicts)."""
    count, rows = STATEMENTS[by]
    entries = [
        {
            "rank": row.rank,
            "id": row.id,
            "username": row.username,
            "self": f"/users/{row.id}",
            "value": row.value,
        }
        for row in rows.rows(db, {"limit": limit, "offset": offset})
    ]
    return count.scalar(db), entries
