"""Serving the WSGI app on Waitress: the headers and access log of every response, Waitress's own
errors as JSON, connections no client can hoard, paced refusals, and the graceful stop. It knows
nothing of the routes.

Waitress has no public API for its error pages (`Error.to_response`) or a graceful stop
(`server._map`, `task_dispatcher`), and the paced refusals subclass its channel and task: those
reaches live here only, each with a test that fails if an upgrade breaks it (test_conventions'
malformed HTTP, test_faults' SIGTERM, test_under_pressure)."""

import contextlib
import ctypes
import logging
import resource
import signal
import sys
import threading
import time
from collections import defaultdict
from urllib.parse import quote

import waitress
import waitress.utilities
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import WSGITask

import config
from auth import USER_ID_KEY
from responses import error_body

log = logging.getLogger("serving")
access_log = logging.getLogger("access")

# CONTRACT.md's six, and Preference-Applied (whether a Prefer: wait=N GET waited).
EXPOSED_HEADERS = "Location, Link, X-Total-Count, ETag, Last-Modified, Retry-After, "
EXPOSED_HEADERS += "Preference-Applied"
# Beyond the safe headers: the token, JSON, a report's conditional GETs, Prefer: wait=N.
ALLOWED_HEADERS = "Authorization, Content-Type, If-None-Match, If-Modified-Since, Prefer"
# Characters a path keeps as they are in the access log; any other is percent-encoded.
PATH_AS_IS = "/!$&'()*+,;=:@"
ACCESS_PATH_LIMIT = 1024  # characters: a long path cannot push the line's end out


def with_common_headers(wsgi_app, on_answered=None):
    """Adds nosniff everywhere and CORS headers for the allowed origins; logs each
    request, and tells on_answered(environ, status, seconds) of it (the metrics)."""

    def wrapped(environ, start_response):
        started = time.perf_counter()
        answered = []

        def start(status, headers, exc_info=None):
            answered.append(status[:3])
            headers.append(("X-Content-Type-Options", "nosniff"))
            origin = environ.get("HTTP_ORIGIN", "").rstrip("/")
            if config.CORS_ORIGINS:
                headers.append(("Vary", "Origin"))
            if origin and origin in config.CORS_ORIGINS:
                allow = dict((k.lower(), v) for k, v in headers).get("allow")
                headers.append(("Access-Control-Allow-Origin", origin))
                headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
                if environ["REQUEST_METHOD"] == "OPTIONS" and allow:
                    headers.append(("Access-Control-Allow-Methods", allow))
                    headers.append(("Access-Control-Allow-Headers", ALLOWED_HEADERS))
                    headers.append(("Access-Control-Max-Age", "600"))
            return start_response(status, headers, exc_info)

        body = wsgi_app(environ, start)  # Bottle has the whole body ready by now
        seconds = time.perf_counter() - started
        status = answered[0] if answered else "-"
        # "<epoch> access GET /users/1 200 0.4ms user=1". The path (without its query,
        # so never a token) is percent-encoded again from the bytes that came (PEP 3333:
        # latin-1): a space or a newline cannot forge a field or a line.
        method, path = environ["REQUEST_METHOD"][:16], environ.get("PATH_INFO", "")
        path = quote(path[:ACCESS_PATH_LIMIT].encode("latin-1", "replace"), safe=PATH_AS_IS)
        user = environ.get(USER_ID_KEY, "-")
        access_log.info("%s %s %s %.1fms user=%s", method, path, status, seconds * 1000, user)
        if on_answered:
            on_answered(environ, status, seconds)
        return body

    return wrapped


def json_error_response(error, ident=None):
    """Replaces Waitress's Error.to_response (malformed HTTP in plain text): CONTRACT.md has
    every body JSON, and Waitress has no hook for it."""
    headers = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")]
    body = error_body(f"{error.reason}: {error.body}").encode("utf-8")
    return f"{error.code} {error.reason}", headers, body


# Connections that no client can hoard. Waitress stops accepting at connection_limit and keeps a
# silent connection for 120 s: 100 idle sockets of one client locked everyone else out. Here a new
# connection is always accepted; when its address holds too many, or the server too many in all, its
# oldest idle one is shed. A request whose headers take over HEADER_TIMEOUT is dropped.

# In all: 1,000, or what ulimit -n allows, less room for the database's and broker's.
_open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
CONNECTION_LIMIT = 1000 if _open_files == resource.RLIM_INFINITY else min(1000, _open_files - 200)
ADDRESS_LIMIT = 100  # one address's; a class behind one NAT still fits, idle ones are shed

# A connection just told 429 is not read again for REFUSED_PAUSE: a client deaf to
# Retry-After gets one answer per pause per connection, and the pause holds no thread.
# Reads beside a flood of 429s: 0.34x-0.44x of their rate alone without it, 0.89x-0.95x with.
REFUSED_PAUSE = 0.5  # seconds


def idle(channel):
    """No request of the channel is being served, and nothing waits to be sent."""
    return not channel.requests and not channel.total_outbufs_len and not channel.will_close


def shed_oldest_idle(channels, or_else):
    """Closes the oldest idle channel of channels; if all are busy, or_else."""
    next((c for c in list(channels) if c is not or_else and idle(c)), or_else).handle_close()


class PacedTask(WSGITask):
    """Waitress's WSGI task, which pauses its connection after a 429."""

    def execute(self):
        super().execute()
        if self.status.startswith("429"):
            self.channel.read_after = time.monotonic() + REFUSED_PAUSE


class GuardedChannel(HTTPChannel):
    """Waitress's channel, which sheds an idle one of its address's (or of all) when there
    are too many, knows since when its headers are arriving, and is not read while paused."""

    task_class = PacedTask
    by_address = defaultdict(dict)  # address -> {channel: None}, oldest first

    def __init__(self, server, sock, addr, adj, map=None):
        self.request_started = None
        self.read_after = 0.0  # time.monotonic(): before it, the channel is paused
        super().__init__(server, sock, addr, adj, map)
        mine = self.by_address[addr[0]]
        mine[self] = None
        if len(mine) > ADDRESS_LIMIT:
            shed_oldest_idle(mine, or_else=self)
        elif len(server.active_channels) > CONNECTION_LIMIT:
            shed_oldest_idle(server.active_channels.values(), or_else=self)

    def readable(self):
        return super().readable() and time.monotonic() >= self.read_after

    def received(self, data):
        if self.request is None and data:
            self.request_started = time.monotonic()
        handled = super().received(data)
        if self.request is None:  # none under way: complete, or handed to a thread
            self.request_started = None
        return handled

    def del_channel(self, map=None):
        mine = self.by_address[self.addr[0]]
        mine.pop(self, None)
        if not mine:
            del self.by_address[self.addr[0]]
        super().del_channel(map)


def drop_slow_headers(server):
    """Closes the connections whose request's headers have not all come in time."""
    too_old = time.monotonic() - config.HEADER_TIMEOUT
    for channel in list(server.active_channels.values()):
        slow = channel.request_started is not None and channel.request_started < too_old
        if slow and idle(channel) and not channel.request.headers_finished:
            channel.handle_close()


def serve(wsgi_app, on_stop=None, on_answered=None, drain_seconds=8):
    """Serve wsgi_app on HOST:PORT until SIGTERM or SIGINT; then stop accepting, finish what is in
    flight (at most drain_seconds), and call on_stop(seconds left) (the embedded worker)."""
    waitress.utilities.Error.to_response = json_error_response
    # Each request passes from Waitress's event loop to a worker thread: at the default 5 ms
    # switch interval they queue on the GIL. GET /users/{id}: 507-726 req/s, 1,678-1,818 here.
    sys.setswitchinterval(0.00002)
    # glibc keeps freed 16 MiB scrypt buffers in per-thread arenas: peak RSS under a login
    # flood 166 MiB without these, 86 MiB with them (the ceiling is 120).
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to limit
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: larger blocks by mmap, given back on free
    handler = logging.StreamHandler()  # the access log's lines, whatever logging's format
    handler.setFormatter(logging.Formatter("%(created).3f access %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    # "Task queue depth is N" on every request while all threads are busy: load, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = waitress.create_server(
        with_common_headers(wsgi_app, on_answered),
        host=config.HOST,
        port=config.PORT,
        threads=config.WEB_THREADS,
        ident="",
        # The channels shed first; Waitress's own limit is only a backstop.
        connection_limit=CONNECTION_LIMIT + 50,
        # X-Forwarded-For reaches the app, which trusts it from TRUSTED_PROXIES (CIDR ranges:
        # limits.client_address); Waitress's trusted_proxy takes one address, strips it else.
        clear_untrusted_proxy_headers=False,
    )
    server.channel_class = GuardedChannel
    log.info("serving on http://%s:%s", config.HOST, config.PORT)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    # waitress.serve() has no graceful stop (README: SIGTERM finishes requests in flight
    # within 10 s): run its event loop ourselves. poll: select cannot watch fds over 1023.
    next_sweep = 0
    while not stopping.is_set():
        wasyncore.loop(timeout=0.2, map=server._map, count=1, use_poll=True)
        if time.monotonic() >= next_sweep:
            drop_slow_headers(server)
            next_sweep = time.monotonic() + 0.5
    log.info("stopping: no new connections, finishing requests in flight")
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + drain_seconds
    # Two polls in a row with nothing in flight: bytes not read yet show up after a poll.
    quiet_polls, dispatcher = 0, server.task_dispatcher
    while quiet_polls < 2 and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=server._map, count=1, use_poll=True)
        busy = any(c.requests or c.total_outbufs_len for c in server.active_channels.values())
        quiet_polls = 0 if busy or dispatcher.active_count or dispatcher.queue else quiet_polls + 1
    dispatcher.shutdown(timeout=1)
    if on_stop:
        on_stop(deadline - time.monotonic())
    log.info("stopped")
