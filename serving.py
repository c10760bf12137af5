"""Serving the WSGI app on Waitress: the headers and the access log of every
response, Waitress's own errors as JSON, connections that no client can
hoard, refusals paced, and the graceful stop.

The routes are server.py's; this module knows nothing of them. Waitress has
no public API for two things done here: its error pages (`Error.to_response`)
and a graceful stop (its event loop, `server._map`, and `task_dispatcher`).
The paced refusals subclass its channel and task classes. Those reaches
into its internals live in this module only, and each has a test that fails
when an upgrade breaks it (the malformed-HTTP test of test_conventions, the
SIGTERM tests of test_faults, the deaf-to-429 test of test_under_pressure).
"""

import logging
import resource
import signal
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


# The headers of every response, and its line in the access log

# CONTRACT.md's six, and Preference-Applied: a page that waits for a report
# (Prefer: wait=N) reads whether it waited.
EXPOSED_HEADERS = (
    "Location, Link, X-Total-Count, ETag, Last-Modified, Retry-After, Preference-Applied"
)
# What a page may send beyond the safe headers: the token, JSON, the
# conditional GETs of a report, and Prefer: wait=N.
ALLOWED_HEADERS = "Authorization, Content-Type, If-None-Match, If-Modified-Since, Prefer"


def with_common_headers(wsgi_app, on_answered=None):
    """Adds nosniff everywhere and CORS headers for the allowed origins; logs each
    request, and tells on_answered(environ, status, seconds) of it (the metrics)."""

    def wrapped(environ, start_response):
        started = time.perf_counter()
        answered = []

        def start(status, headers, exc_info=None):
            answered.append(status[:3])
            headers.append(("X-Content-Type-Options", "nosniff"))
            if status.startswith(("204", "304")):
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            origin = environ.get("HTTP_ORIGIN", "").rstrip("/")
            if config.CORS_ORIGINS:
                headers.append(("Vary", "Origin"))
            if origin and origin in config.CORS_ORIGINS:
                headers += cors_headers(origin, environ, headers)
            return start_response(status, headers, exc_info)

        body = wsgi_app(environ, start)  # Bottle has the whole body ready by now
        seconds = time.perf_counter() - started
        status = answered[0] if answered else "-"
        log_access(
            environ["REQUEST_METHOD"][:16],
            environ.get("PATH_INFO", ""),
            status,
            seconds * 1000,
            environ.get(USER_ID_KEY, "-"),
        )
        if on_answered:
            on_answered(environ, status, seconds)
        return body

    return wrapped


def cors_headers(origin, environ, headers):
    extra = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
    ]
    if environ["REQUEST_METHOD"] == "OPTIONS":
        allow = dict((k.lower(), v) for k, v in headers).get("allow")
        if allow:
            extra += [
                ("Access-Control-Allow-Methods", allow),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ]
    return extra


# Characters a path keeps as they are in the log; any other is percent-encoded.
PATH_AS_IS = "/!$&'()*+,;=:@"
ACCESS_PATH_LIMIT = 1024  # characters: a long path cannot push the line's end out


access_log = logging.getLogger("access")


def log_access(method, path, status, milliseconds, user_id):
    """One line per request on stderr: "<epoch> access GET /users/1 200 0.4ms user=1".

    The path (without its query, so never a token) is percent-encoded again
    from the bytes that came: a space or a newline in it cannot forge a field
    or a line. (Written with os.write instead of logging, it was 4% faster on
    GET /users/{id} in bench --only api: not worth a trick.)
    """
    # PEP 3333: PATH_INFO holds the request's bytes, decoded as latin-1.
    path = quote(path[:ACCESS_PATH_LIMIT].encode("latin-1", "replace"), safe=PATH_AS_IS)
    access_log.info("%s %s %s %.1fms user=%s", method, path, status, milliseconds, user_id)


def log_access_lines_alone():
    """The access log's lines as they were always written, whatever logging's format."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(created).3f access %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def json_waitress_errors():
    """Waitress answers malformed HTTP itself, in plain text; make that JSON too."""

    def to_response(self, ident=None):
        body = error_body(f"{self.reason}: {self.body}").encode("utf-8")
        return (
            f"{self.code} {self.reason}",
            [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")],
            body,
        )

    waitress.utilities.Error.to_response = to_response


# Connections that no client can hoard
#
# Waitress stops accepting at connection_limit, and keeps a silent connection
# for channel_timeout (120 s): 100 idle sockets from one client used to lock
# everyone else out. Here a new connection is always accepted; when its
# address holds too many, or the server too many in all, the oldest idle one
# (no request being served: silent, between requests, or headers still
# coming) is shed. A request whose headers take over HEADER_TIMEOUT is dropped.

# Open connections in all (each costs a socket and a few KiB): 1,000, or what
# the process may open (ulimit -n) less room for the database's and the broker's.
_open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
CONNECTION_LIMIT = 1000 if _open_files == resource.RLIM_INFINITY else min(1000, _open_files - 200)
ADDRESS_LIMIT = 100  # one address's; a class behind one NAT still fits, idle ones are shed


def idle(channel):
    """No request of the channel is being served, and nothing waits to be sent."""
    return not channel.requests and not channel.total_outbufs_len and not channel.will_close


# A connection that was just told 429 (over its rate) is not read again for
# REFUSED_PAUSE: a client deaf to Retry-After then gets 1 answer per pause
# per connection instead of as many as the server can make. The 429 itself
# goes out at once, and the pause holds no thread, only the socket. Without
# it a refusal costs about what a read costs (480 us of server CPU each,
# measured with wrk), and a 16-connection flood of them left GET /users/{id}
# at 0.34x-0.44x of its rate alone (bench --only abuse); with it, 1.03x-1.18x,
# the flood down from 1,428-1,724 answers a second to 36-40.
REFUSED_PAUSE = 0.5  # seconds


class PacedTask(WSGITask):
    """Waitress's WSGI task, which pauses its connection after a 429."""

    def execute(self):
        super().execute()
        if self.status.startswith("429"):
            self.channel.read_after = time.monotonic() + REFUSED_PAUSE


class GuardedChannel(HTTPChannel):
    """Waitress's channel, which also tells the guard of its address and since
    when its current request's headers have been arriving, and is not read
    while paused (PacedTask)."""

    task_class = PacedTask

    def __init__(self, server, sock, addr, adj, map=None):
        self.request_started = None
        self.read_after = 0.0  # time.monotonic(): before it, the channel is paused
        self.address = addr[0] if isinstance(addr, tuple) else addr
        super().__init__(server, sock, addr, adj, map)
        server.guard.opened(self)

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
        self.server.guard.closed(self)
        super().del_channel(map)


class ConnectionGuard:
    """Keeps count of each address's connections; sheds idle ones under pressure."""

    def __init__(self, server):
        self.server = server
        self.by_address = defaultdict(dict)  # address -> {channel: None}, oldest first
        self.shed = 0

    def opened(self, channel):
        mine = self.by_address[channel.address]
        mine[channel] = None
        if len(mine) > ADDRESS_LIMIT:
            self._shed_oldest_idle(list(mine), or_else=channel)
        elif len(self.server.active_channels) > CONNECTION_LIMIT:
            self._shed_oldest_idle(list(self.server.active_channels.values()), or_else=channel)

    def closed(self, channel):
        mine = self.by_address.get(channel.address)
        if mine is not None:
            mine.pop(channel, None)
            if not mine:
                del self.by_address[channel.address]

    def _shed_oldest_idle(self, channels, or_else):
        """Closes the oldest idle channel of channels; if all are busy, or_else."""
        victim = next((c for c in channels if c is not or_else and idle(c)), or_else)
        self.shed += 1
        victim.handle_close()

    def drop_slow_headers(self):
        """Closes the connections whose request's headers have not all come in time."""
        too_old = time.monotonic() - config.HEADER_TIMEOUT
        for channel in list(self.server.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if (
                started is not None
                and started < too_old
                and idle(channel)
                and channel.request is not None
                and not channel.request.headers_finished
            ):
                self.shed += 1
                channel.handle_close()


# Serving, and the graceful stop


def serve(wsgi_app, on_stop=None, on_answered=None):
    """Serve wsgi_app on HOST:PORT until SIGTERM or SIGINT, then stop gracefully;
    on_stop(seconds left) stops what else runs in the process (the embedded worker);
    on_answered(environ, status, seconds) hears of every request answered."""
    json_waitress_errors()
    log_access_lines_alone()
    # "Task queue depth is N" on every request while all threads are busy: load, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = waitress.create_server(
        with_common_headers(wsgi_app, on_answered),
        host=config.HOST,
        port=config.PORT,
        threads=config.WEB_THREADS,
        ident="",
        # The guard sheds first; Waitress's own limit is only a backstop.
        connection_limit=CONNECTION_LIMIT + 50,
        # X-Forwarded-For reaches the app, which trusts it only from TRUSTED_PROXIES
        # (CIDR ranges, right-most untrusted hop: limits.client_address); Waitress's
        # own trusted_proxy takes one address and would strip the header otherwise.
        clear_untrusted_proxy_headers=False,
    )
    server.channel_class = GuardedChannel
    server.guard = ConnectionGuard(server)
    log.info("serving on http://%s:%s", config.HOST, config.PORT)
    serve_until_signalled(server, on_stop)


def serve_until_signalled(server, on_stop, drain_seconds=8):
    """Serve until SIGTERM or SIGINT; then stop accepting, finish what is in
    flight (at most drain_seconds), and call on_stop with the time left."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    # waitress.serve() has no graceful stop: run its event loop ourselves.
    # (server._map, its channels, is what that loop serves.) poll, not select:
    # select cannot watch a socket numbered over 1023.
    next_sweep = 0
    while not stopping.is_set():
        wasyncore.loop(timeout=0.2, map=server._map, count=1, use_poll=True)
        if time.monotonic() >= next_sweep:
            server.guard.drop_slow_headers()
            next_sweep = time.monotonic() + 0.5
    log.info("stopping: no new connections, finishing requests in flight")
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + drain_seconds
    # Until two polls in a row find nothing in flight: a request whose bytes
    # had arrived but were not read yet shows up only after a poll.
    quiet_polls = 0
    while quiet_polls < 2 and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=server._map, count=1, use_poll=True)
        quiet_polls = 0 if requests_in_flight(server) else quiet_polls + 1
    server.task_dispatcher.shutdown(timeout=1)
    if on_stop:
        on_stop(deadline - time.monotonic())
    log.info("stopped")


def requests_in_flight(server):
    dispatcher = server.task_dispatcher
    return (
        dispatcher.active_count
        or dispatcher.queue
        or any(
            getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
            for channel in list(server._map.values())
        )
    )
