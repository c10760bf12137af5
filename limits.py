"""What one client, or a flood, may take (CONTRACT.md, Under pressure).

- The hashing budget: at most HASH_CONCURRENCY password hashes at once
  (scrypt takes 16 MiB and a core's worth of time each). A request that
  finds it full waits briefly, and only a few wait at once, so that a flood
  of sign-ups or logins cannot hold the Waitress threads that reads need;
  the others get 503 at once.
- Per-client rates: SIGNUP_RATE sign-ups and LOGIN_RATE logins per client
  address per minute, then 429 (every request counts, a 503 too). Counted
  in this process's memory: behind a load balancer of N servers a client
  may get up to N times the rate (the README says so). A refused request
  costs a dictionary lookup, never the database.
- The client address: the peer's, or the right-most hop of X-Forwarded-For
  that is not a trusted proxy, when the peer is one (TRUSTED_PROXIES).
"""

import ipaddress
import math
import threading
import time
from collections import deque
from contextlib import contextmanager

import config
from responses import ApiError

# How long a request may wait for the budget (a production hash takes 0.2 s
# of a core here), and how many may wait at once, beyond whom it is 503 at
# once: a waiting request holds a Waitress thread, and reads need the rest.
HASH_WAIT = 0.5  # seconds
HASH_WAITERS = max(1, config.WEB_THREADS // 2)


class _HashBudget:
    def __init__(self, size, waiters):
        self._slots = threading.BoundedSemaphore(size)
        self._waiters = threading.BoundedSemaphore(waiters)
        self._lock = threading.Lock()
        self.in_flight = 0  # both read by metrics.py
        self.refused = 0

    def _acquire(self):
        if self._slots.acquire(blocking=False):
            return True
        if not self._waiters.acquire(blocking=False):
            return False
        try:
            return self._slots.acquire(timeout=HASH_WAIT)
        finally:
            self._waiters.release()

    @contextmanager
    def held(self):
        """A slot of the budget for one hash; ApiError 503 when none comes soon."""
        if not self._acquire():
            with self._lock:
                self.refused += 1
            raise ApiError(
                503,
                "The server is busy checking other passwords; try again in a moment.",
                Retry_After=1,
            )
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()


hash_budget = _HashBudget(config.HASH_CONCURRENCY, HASH_WAITERS)


class _Rate:
    """At most `limit` events per client in any 60 s (a sliding window)."""

    WINDOW = 60  # seconds

    def __init__(self, name, limit):
        self.name, self.limit = name, limit
        self._events = {}  # client -> deque of event times, oldest first
        self._lock = threading.Lock()
        self.refused = 0

    def take(self, client):
        """Counts one event of client; ApiError 429 (counting nothing) beyond the limit."""
        now = time.monotonic()
        with self._lock:
            events = self._events.get(client)
            if events is None:
                if len(self._events) >= 10_000:
                    self._forget_idle_clients(now)
                events = self._events[client] = deque()
            while events and events[0] <= now - self.WINDOW:
                events.popleft()
            if len(events) >= self.limit:
                self.refused += 1
                wait = max(1, math.ceil(events[0] + self.WINDOW - now))
                raise ApiError(
                    429,
                    f"Too many {self.name} from your address; try again in {wait} seconds.",
                    Retry_After=wait,
                )
            events.append(now)

    def _forget_idle_clients(self, now):
        for client in [
            c for c, events in self._events.items() if not events or events[-1] <= now - self.WINDOW
        ]:
            del self._events[client]


sign_ups = _Rate("sign-ups", config.SIGNUP_RATE)
logins = _Rate("logins", config.LOGIN_RATE)


def count(rate, environ):
    """Counts the request toward its client's rate; ApiError 429 beyond it.
    Every request counts, a 503 too: a flooding client then meets the 429
    within a minute (and serving.py's pause after it), and stops competing
    with everyone else for the budget."""
    rate.take(client_address(environ))


def _trusted(address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in config.TRUSTED_PROXIES)


def client_address(environ):
    """The address that rates count: the peer, unless it is a trusted proxy;
    then the right-most X-Forwarded-For hop that is not one (the left-most
    is whatever the client chose to write)."""
    peer = environ.get("REMOTE_ADDR", "")
    if not config.TRUSTED_PROXIES or not _trusted(peer):
        return peer
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer
