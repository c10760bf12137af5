"""At most `limit` events of a kind per key in a window, counted in the
database that every server shares (models.recent_events): failed logins by
username (auth.py), sign-ups and logins by client address (limits.py).

A key's events take numbered slots, 0 to limit - 1: an event takes a free
slot, or the slot of one that has left the window (requests of one key at
once may start looking at different slots, so that they seldom pick the
same). Taking a slot is one INSERT ... ON CONFLICT DO UPDATE that overwrites
only an event out of the window, so of two servers that pick the same slot
at once, one gets it and the other counts again. Rows older than the longest window are forgotten by
every server's sweep (forget_old).
"""

import itertools
import math

from sqlalchemy import bindparam, delete, select, update

from database import SQLITE, Statement
from models import recent_events as table

if SQLITE:
    from sqlalchemy.dialects.sqlite import insert
else:
    from sqlalchemy.dialects.postgresql import insert

KEY_LENGTH = 64  # a longer key (a forwarded address is whatever a proxy wrote) is cut

_of_key = (table.c.kind == bindparam("kind"), table.c.key == bindparam("key"))
_of_slot = (*_of_key, table.c.slot == bindparam("slot"))
EVENTS = Statement(select(table.c.slot, table.c.at, table.c.pending).where(*_of_key))
_new = insert(table).values(
    kind=bindparam("kind"),
    key=bindparam("key"),
    slot=bindparam("slot"),
    at=bindparam("at"),
    pending=bindparam("pending"),
)
TAKE_SLOT = Statement(
    _new.on_conflict_do_update(
        index_elements=[table.c.kind, table.c.key, table.c.slot],
        set_={"at": _new.excluded.at, "pending": _new.excluded.pending},
        where=table.c.at <= bindparam("out_of_window"),
    )
)
SETTLE = Statement(update(table).where(*_of_slot).values(at=bindparam("at"), pending=False))
FREE_SLOT = Statement(delete(table).where(*_of_slot))
FORGET = Statement(delete(table).where(table.c.at <= bindparam("before")))


def in_window(db, kind, key, now, window):
    """{slot: (at, pending)} of the key's events within the window."""
    rows = EVENTS.rows(db, {"kind": kind, "key": key[:KEY_LENGTH]})
    return {row.slot: (row.at, row.pending) for row in rows if row.at > now - window}


def free_slot(events, limit, start=0):
    """A slot for one more event beside events ({slot: ...} in the window), or
    None: the first free one from start on (round to 0 after limit - 1)."""
    if len(events) >= limit:
        return None
    slots = itertools.chain(range(start, limit), range(start))
    return next((slot for slot in slots if slot not in events), None)


def seconds_until_one_leaves(events, now, window):
    """Whole seconds (at least 1) until the oldest of events leaves the window."""
    oldest = min(at for at, _ in events.values())
    return max(1, math.ceil(oldest + window - now))


def take(db, kind, key, slot, now, window, pending=False):
    """Records an event in slot; False when another request took it meanwhile."""
    taken = TAKE_SLOT.run(
        db,
        {
            "kind": kind,
            "key": key[:KEY_LENGTH],
            "slot": slot,
            "at": now,
            "pending": pending,
            "out_of_window": now - window,
        },
    )
    return taken.rowcount == 1


def settle(db, kind, key, slot, now, happened):
    """A pending event's outcome: it stays, as of now, or its slot is freed."""
    params = {"kind": kind, "key": key[:KEY_LENGTH], "slot": slot}
    if happened:
        SETTLE.run(db, {**params, "at": now})
    else:
        FREE_SLOT.run(db, params)


def forget_old(db, before):
    """Forgets every event from before `before` (the sweep, with the longest window)."""
    FORGET.run(db, {"before": before})
