"""Waiting for a report instead of polling (CONTRACT.md): `Prefer: wait=N`.

A waiting GET reads the report again only on news of its user's jobs (jobs.py, whichever server
published the job), or at the deadline: the database is never polled. At most MAX_WAITING requests
wait at once: each holds a Waitress thread, and the others must stay free for everyone else.
"""

import math
import re
import threading
import time
from collections import deque
from contextlib import contextmanager

import config

MAX_WAIT = 10  # seconds a client may ask for (CONTRACT.md)
_WAIT_PREFERENCE = re.compile(r'^\s*wait\s*=\s*"?(\d{1,6})"?\s*$', re.IGNORECASE)

_lock = threading.Lock()
_watchers = {}  # threading.Event -> user id, one per waiting request (at most MAX_WAITING)
_slots = threading.BoundedSemaphore(config.MAX_WAITING)
# When jobs settled lately (any worker's), and how long one took: the base of
# Retry-After. The pace counts workers side by side, and soon forgets a slow first
# job: one job's duration alone told a burst's clients 6 s for reports done in 1 s.
_settled_at = deque(maxlen=64)
_job_seconds = 0.05
PACE_WINDOW = 10  # seconds


def preferred_wait(environ):
    """The N of a `Prefer: wait=N` header (at most MAX_WAIT), or 0."""
    for preference in environ.get("HTTP_PREFER", "").split(","):
        found = _WAIT_PREFERENCE.match(preference.split(";")[0])
        if found:
            return min(int(found.group(1)), MAX_WAIT)
    return 0


@contextmanager
def watching(user_id):
    """Interest in the user's jobs, taken before reading their state (news
    between that read and the wait is not missed): an Event that news of the
    user sets, or None when MAX_WAITING requests already wait (answer at once)."""
    if not _slots.acquire(blocking=False):
        yield None
        return
    news = threading.Event()
    with _lock:
        _watchers[news] = user_id
    try:
        yield news
    finally:
        with _lock:
            del _watchers[news]
        _slots.release()


def wake(user_id, seconds=None):
    """News of the user: a job of theirs settled (taking seconds, if given), or they are gone."""
    global _job_seconds
    if seconds is not None and seconds > 0:
        _job_seconds = 0.8 * _job_seconds + 0.2 * seconds
        _settled_at.append(time.monotonic())
    with _lock:
        for news, watched in _watchers.items():
            if watched == user_id:
                news.set()


def wake_everyone():
    """News may have been missed (its listener was away): every waiting request reads again."""
    with _lock:
        for news in _watchers:
            news.set()


def retry_after(jobs_ahead):
    """An honest Retry-After in whole seconds (at least 1) for a report with jobs_ahead
    unfinished jobs queued before it: at one job's recent duration, or at the pace
    jobs settled in the last PACE_WINDOW seconds if that is faster."""
    now = time.monotonic()
    recent = [at for at in list(_settled_at) if at > now - PACE_WINDOW]
    per_job = _job_seconds
    if len(recent) >= 2 and recent[-1] > recent[0]:
        per_job = min(per_job, (recent[-1] - recent[0]) / (len(recent) - 1))
    return max(1, math.ceil((jobs_ahead + 1) * per_job))
