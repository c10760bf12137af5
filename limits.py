"""What one client, or a flood, may take (CONTRACT.md, Under pressure).

- The hashing budget: at most HASH_CONCURRENCY password hashes at once (scrypt takes
  16 MiB and a core's worth of time each); a few may wait briefly, the others get 503.
- Per-client rates: SIGNUP_RATE sign-ups and LOGIN_RATE logins per address per minute, then
  429, counted in the database every server shares: the limit holds behind a load balancer too.
"""

import ipaddress
import random
import threading
from contextlib import contextmanager

import config
import throttle
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
        self.in_flight = self.refused = 0  # both read by metrics.py

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
            message = "The server is busy checking other passwords; try again in a moment."
            raise ApiError(503, message, Retry_After=1)
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1
            self._slots.release()


hash_budget = _HashBudget(config.HASH_CONCURRENCY, HASH_WAITERS)


class Rate(throttle.Throttle):
    WINDOW = 60  # seconds

    def __init__(self, kind, name, limit):
        super().__init__(kind, limit, self.WINDOW, read_first=True, tries=10)
        self.name = name
        self.refused = 0  # by this process (metrics.py)

    def refusal(self, wait=1):
        self.refused += 1
        message = f"Too many {self.name} from your address; try again in {wait} seconds."
        return ApiError(429, message, Retry_After=wait)


sign_ups = Rate("sign-up", "sign-ups", config.SIGNUP_RATE)
logins = Rate("login", "logins", config.LOGIN_RATE)


def count(rate, environ):
    """Counts the request toward its client's rate; ApiError 429 beyond it. Every request
    counts, a 503 too: a flooding client then meets the 429 within a minute (and
    serving.py's pause after it), and stops competing with everyone else for the budget."""
    # Busy (others of the client took the slot it picked, every time): a second's refusal.
    start = random.randrange(rate.limit)
    rate.take(client_address(environ), rate.refusal, busy=rate.refusal, start=start)


def _trusted(address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in config.TRUSTED_PROXIES)


def client_address(environ):
    """The address that rates count: the peer, unless it is a trusted proxy; then the right-most
    X-Forwarded-For hop that is not one (the left-most is whatever the client wrote)."""
    peer = environ.get("REMOTE_ADDR", "")
    if not config.TRUSTED_PROXIES or not _trusted(peer):
        return peer
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer
