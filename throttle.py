"""At most `limit` events of a kind per key in a window, counted in the database that
every server shares (models.recent_events): failed logins by username (auth.py),
sign-ups and logins by client address (limits.py).

A key's events take numbered slots, 0 to limit - 1. Taking a free slot, or that of an
event out of the window, is one INSERT ... ON CONFLICT DO UPDATE: of two servers that pick
the same slot at once, one gets it and the other counts again.
"""

import itertools
import math
import time

from sqlalchemy import bindparam, delete, select, update

import database
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
_new = insert(table).values({column.name: bindparam(column.name) for column in table.c})
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


class Throttle:
    """At most `limit` events of `kind` per key in any `window` seconds.

    pending: an event is taken before its outcome is known, and counts once settled.
    read_first: a refusal costs one read, no write (a flood of them takes no write lock).
    tries: how often it seeks a slot again when others took the one it picked."""

    def __init__(self, kind, limit, window, pending=False, read_first=False, tries=3):
        self.kind, self.limit, self.window = kind, limit, window
        self.pending, self.read_first, self.tries = pending, read_first, tries

    def take(self, key, refusal, busy, start=0, then=None):
        """(a slot taken for one more event of key, then(db)), in a write that counts the key's
        events first: refusal(seconds until one leaves) when `limit` settled ones count, busy()
        while pending ones fill the other slots, or when others took each slot it picked.
        start: the first slot tried (requests at once that start apart seldom collide)."""
        key = key[:KEY_LENGTH]
        if self.read_first:
            with database.reading() as db:
                self._events_unless_full(db, key, refusal)
        for _ in range(self.tries):
            with database.writing() as db:
                now, events = self._events_unless_full(db, key, refusal)
                slot = free_slot(events, self.limit, start)
                if slot is None:
                    raise busy()
                params = {"kind": self.kind, "key": key, "slot": slot, "at": now}
                params.update(pending=self.pending, out_of_window=now - self.window)
                if TAKE_SLOT.run(db, params).rowcount == 1:
                    return slot, then(db) if then else None
        raise busy()

    def _events_unless_full(self, db, key, refusal):
        """(now, {slot: (at, pending)} of the key's events in the window), or refusal(wait)."""
        now = time.time()
        rows = EVENTS.rows(db, {"kind": self.kind, "key": key})
        events = {row.slot: (row.at, row.pending) for row in rows if row.at > now - self.window}
        settled = {slot: event for slot, event in events.items() if not event[1]}
        if len(settled) >= self.limit:
            raise refusal(seconds_until_one_leaves(settled, now, self.window))
        return now, events

    def settle(self, db, key, slot, happened):
        """A pending event's outcome: it stays, as of now, or its slot is freed."""
        params = {"kind": self.kind, "key": key[:KEY_LENGTH], "slot": slot}
        if happened:
            SETTLE.run(db, {**params, "at": time.time()})
        else:
            FREE_SLOT.run(db, params)


def free_slot(events, limit, start=0):
    """The first free slot beside events ({slot: ...}) from start on, going round; or None."""
    if len(events) >= limit:
        return None
    slots = itertools.chain(range(start, limit), range(start))
    return next((slot for slot in slots if slot not in events), None)


def seconds_until_one_leaves(events, now, window):
    """Whole seconds (at least 1) until the oldest of events leaves the window."""
    oldest = min(at for at, _ in events.values())
    return max(1, math.ceil(oldest + window - now))


def forget_old(db, before):
    """Forgets every event from before `before` (the sweep, with the longest window)."""
    FORGET.run(db, {"before": before})
