"""The HTTP API of CONTRACT.md: a Bottle app served by Waitress.

A request flows route -> body validation -> model -> (queue) -> response.
Every answer is JSON (errors included); the few headers that every response
carries, and its access-log line, come from `with_common_headers`, around
the Bottle app; `main()` serves it until SIGTERM and then stops gracefully.
"""
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from email.utils import formatdate
from urllib.parse import quote

import bottle
import waitress
import waitress.utilities
from waitress import wasyncore
from bottle import HTTPError, request, response


import auth
import config
import jobs
import models
import openapi
from errors import ApiError, error_body
from models import MAX_ID
from validation import (MAX_BODY, PASSWORD_CHANGE_FIELDS, READ_ONLY_USER_FIELDS,
                        STATS_FIELDS, USER_FIELDS, checked_fields, json_object,
                        reject_unknown_fields)

log = logging.getLogger("server")

app = bottle.Bottle()
# Bottle keeps bodies up to this size in memory; larger ones get our JSON 413.
bottle.BaseRequest.MEMFILE_MAX = MAX_BODY
# Ids are positive and fit a signed 64-bit column (checked in models.find_user);
# anything else is simply not a route, hence a 404.
app.router.add_filter("id", lambda _conf: (r"[1-9][0-9]{0,18}", int, str))


def json_response(data, status=200, headers=None):
    return json_text_response(json.dumps(data), status, headers)


def json_text_response(text, status=200, headers=None):
    response.status = status
    response.content_type = "application/json"
    for name, value in (headers or {}).items():
        response.set_header(name, str(value))
    return text


def no_such_user(user_id):
    return ApiError(404, f"There is no user {user_id}.")


def user_or_404(db, user_id):
    user = models.find_user(db, user_id)
    if user is None:
        raise no_such_user(user_id)
    return user


def owned_user(db, user_id, lock=True):
    """The user at user_id, when the caller's token is theirs: else 401, 404 or 403.

    With lock (in a write), the user stays as checked until it commits
    (see models.find_user)."""
    caller = auth.current_user(db, request, lock)
    if caller.id == user_id:
        return caller
    user_or_404(db, user_id)
    raise ApiError(403, "Only the user themself may change this resource.")


def username_taken(username):
    return ApiError(409, f"The username '{username}' is already taken.")


# Users

@app.get("/users")
def list_users():
    limit = query_int("limit", default=100, minimum=1, maximum=1000)
    offset = query_int("offset", default=0, minimum=0, maximum=MAX_ID)
    with models.reading() as db:
        total, page = models.page_of_users(db, limit, offset)
    headers = {"X-Total-Count": total}
    if offset + limit < total:
        headers["Link"] = f'</users?limit={limit}&offset={offset + limit}>; rel="next"'
    return json_text_response(page, headers=headers)


def query_int(name, default, minimum, maximum):
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and minimum <= int(raw) <= maximum):
        raise ApiError(400, f"'{name}' must be an integer from {minimum} to {maximum}.")
    return int(raw)


@app.post("/users")
def create_user():
    fields = checked_fields(json_object(), USER_FIELDS, ignored=READ_ONLY_USER_FIELDS,
                            required=("username", "password"))
    fields["password_hash"] = auth.hash_password(fields.pop("password"))
    try:
        with models.writing() as db:
            user_id = models.create_user(db, fields)
            user, representation = models.find_user(db, user_id), models.user_json(db, user_id)
    except models.IntegrityError:
        raise username_taken(fields["username"])
    body = f'{{"user": {representation}, "token": {json.dumps(auth.issue_token(user))}}}'
    return json_text_response(body, 201, {"Location": f"/users/{user_id}",
                                          "Cache-Control": "no-store"})


@app.get("/users/me")
def get_me():
    with models.reading() as db:
        representation = models.user_json(db, auth.current_user(db, request).id)
    if representation is None:  # deleted since its token was checked
        raise auth.token_no_longer_valid()
    return json_text_response(representation)


@app.get("/users/<user_id:id>")
def get_user(user_id):
    with models.reading() as db:
        representation = models.user_json(db, user_id)
    if representation is None:
        raise no_such_user(user_id)
    return json_text_response(representation)


@app.route("/users/<user_id:id>", method=["PUT", "PATCH"])
def update_user(user_id):
    with models.reading() as db:
        stored_hash = owned_user(db, user_id, lock=False).password_hash
    fields = checked_fields(json_object(), USER_FIELDS | PASSWORD_CHANGE_FIELDS,
                            ignored=READ_ONLY_USER_FIELDS)
    if "password" in fields:
        # Hash outside the write transaction: scrypt is slow on purpose.
        fields["password_hash"] = new_password_hash(fields, stored_hash)
    elif "current_password" in fields:
        raise ApiError(400, "'current_password' is accepted only beside 'password'.")
    try:
        with models.writing() as db:
            owned_user(db, user_id)  # again: a password change meanwhile revoked the token
            models.update_user(db, user_id, fields)
            representation = models.user_json(db, user_id)
    except models.IntegrityError:
        raise username_taken(fields["username"])
    return json_text_response(representation)


def new_password_hash(fields, stored_hash):
    current = fields.pop("current_password", None)
    if current is None:
        raise ApiError(400, "'current_password' is required to change 'password'.")
    if not auth.password_matches(current, stored_hash):
        raise ApiError(403, "'current_password' is not the current password.")
    return auth.hash_password(fields.pop("password"))


@app.delete("/users/<user_id:id>")
def delete_user(user_id):
    with models.writing() as db:
        owned_user(db, user_id)
        models.delete_user(db, user_id)
    response.status = 204
    return ""


# Stats

@app.get("/users/<user_id:id>/stats")
def get_stats(user_id):
    with models.reading() as db:
        auth.current_user(db, request)
        stats = models.find_stats(db, user_id)
    if stats is None:
        raise no_such_user(user_id)
    return json_response(models.stats_json(stats))


@app.route("/users/<user_id:id>/stats", method=["PUT", "PATCH"])
def update_stats(user_id):
    with models.writing() as db:
        owned_user(db, user_id)
        fields = checked_fields(json_object(), STATS_FIELDS)
        return json_response(models.stats_json(models.update_stats(db, user_id, fields)))


# PDF reports: POST queues a job for a worker; GET serves the newest finished one.

# A job still pending after this long was probably lost between commit and
# publish (a crash): the next POST queues it again. Workers drop a duplicate
# of a finished job; one of a job in hand is rendered again, as a redelivery is.
REPUBLISH_AFTER = 60  # seconds


@app.post("/users/<user_id:id>/pdf")
def request_report(user_id):
    url = f"/users/{user_id}/pdf"
    accepted = json_response({"url": url, "status": "pending"}, 202, {"Location": url})
    # The owner's row is locked (PostgreSQL) or the write is alone (SQLite):
    # the user's POSTs come one at a time here.
    with models.writing() as db:
        owned_user(db, user_id)
        pending = models.pending_report(db, user_id)
        if pending and pending.published_at > time.time() - REPUBLISH_AFTER:
            # Already queued, and no worker has read the data yet: one job will do.
            return accepted
        report_id = models.queue_report(db, user_id, pending and pending.id)
    try:
        jobs.publish(report_id, user_id)
    except jobs.BrokerUnavailable:
        with models.writing() as db:
            models.forget_pending_report(db, report_id)
        raise ApiError(503, "The report queue is unavailable right now; try again shortly.",
                       Retry_After=5)
    return accepted


@app.get("/users/<user_id:id>/pdf")
def get_report(user_id):
    with models.reading() as db:
        auth.current_user(db, request)
        user = user_or_404(db, user_id)
        # Newest first, then the newest done: a report finishing between the two
        # queries (each sees the latest commit) is then simply served.
        latest = models.newest_report(db, user_id)
        done = latest if latest and latest.state == "done" else \
            models.newest_report(db, user_id, state="done")
        if done is None:
            raise report_not_ready(latest, user_id)
        if not_modified(report_etag(done), done.finished_at):
            raise bottle.HTTPResponse(status=304, headers=report_headers(done))
        # Read again with its PDF: a newer report may have replaced this one meanwhile.
        done = models.newest_pdf(db, user_id)
        if done is None:
            raise no_such_user(user_id)  # deleted meanwhile, reports and all
    response.content_type = "application/pdf"
    response.set_header("Content-Disposition", f'inline; filename="{user.username}_stats.pdf"')
    for name, value in report_headers(done).items():
        response.set_header(name, value)
    return done.pdf


def report_etag(report):
    return f'"report-{report.id}"'


def report_headers(report):
    return {"ETag": report_etag(report),
            "Last-Modified": formatdate(report.finished_at, usegmt=True)}


def report_not_ready(latest, user_id):
    if latest is None:
        return ApiError(404, f"No report was ever requested for user {user_id}; "
                             f"POST /users/{user_id}/pdf to request one.")
    if latest.state in models.UNFINISHED:
        return bottle.HTTPResponse(json.dumps({"status": "pending"}), 202,
                                   {"Content-Type": "application/json", "Retry-After": "1"})
    return ApiError(409, f"The last report failed: {latest.error}. "
                         f"POST /users/{user_id}/pdf to try again.")


def not_modified(etag, finished_at):
    # Headers from the environ as sent: Bottle's get_header fails on non-UTF-8 bytes.
    if_none_match = request.environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in tags or "*" in tags
    since = bottle.parse_date(request.environ.get("HTTP_IF_MODIFIED_SINCE", ""))
    return since is not None and int(finished_at) <= since


# Login

BAD_LOGIN = "Bad username or password"


@app.post("/login")
def login():
    body = json_object()
    reject_unknown_fields(body, ("username", "password"))
    username, password = body.get("username"), body.get("password")
    if not (isinstance(username, str) and username and isinstance(password, str) and password):
        raise ApiError(400, BAD_LOGIN)
    if not USER_FIELDS["username"].accepts(username):
        auth.spend_one_hash(password)  # no such user can exist; answer as slowly
        raise ApiError(401, BAD_LOGIN, WWW_Authenticate="Bearer")
    wait, attempt = auth.start_login_attempt(username)
    if wait:
        raise ApiError(429, f"Too many failed logins for '{username}'; "
                            f"try again in {wait} seconds.", Retry_After=wait)
    # Should this fail (the database), the attempt is left in flight, and
    # stops counting after auth.ATTEMPT_TIMEOUT: it is never taken for a failure.
    with models.reading() as db:
        user = auth.check_login(db, username, password)
    auth.end_login_attempt(username, attempt, failed=user is None)
    if user is None:
        raise ApiError(401, BAD_LOGIN, WWW_Authenticate="Bearer")
    return json_response({"success": True, "token": auth.issue_token(user),
                          "user": f"/users/{user.id}"},
                         headers={"Cache-Control": "no-store"})


# Service

@app.get("/healthz")
def healthz():
    parts = {"database": "ok" if models.database_is_up() else "down",
             "broker": "ok" if jobs.broker_is_up() else "down"}
    up = all(state == "ok" for state in parts.values())
    return json_response({"status": "ok" if up else "down", **parts}, 200 if up else 503)


@app.get("/openapi.json")
def openapi_document():
    return json_response(openapi.DOCUMENT)


# What every route shares: OPTIONS, 405's Allow, JSON error pages, headers.

ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(path):
    allowed = []
    for method in ROUTE_METHODS:
        try:
            app.router.match({"PATH_INFO": path, "REQUEST_METHOD": method})
            allowed.append(method)
        except HTTPError:
            pass
    if "GET" in allowed:
        allowed.insert(1, "HEAD")
    return ", ".join(allowed + ["OPTIONS"]) if allowed else ""


@app.hook("before_request")
def refuse_large_bodies_and_answer_options():
    if request.content_length > MAX_BODY:  # on every route, body read or not
        raise ApiError(413, "The request body is larger than 1 MiB.")
    if request.method == "OPTIONS":
        allow = allowed_methods(request.path)
        if not allow:
            raise ApiError(404, f"There is nothing at {request.path}.")
        raise bottle.HTTPResponse(status=204, Allow=allow)


ERROR_MESSAGES = {
    400: "The request is malformed.",
    404: "There is nothing at this path.",
    405: "This method is not allowed here; the Allow header lists those that are.",
    413: "The request body is larger than 1 MiB.",
    500: "Internal server error; it has been logged.",
}


def json_error_page(error):
    """Bottle's own errors (no route, wrong method, uncaught exception) as JSON."""
    if error.status_code == 405:
        response.set_header("Allow", allowed_methods(request.path))
    if error.status_code == 500:
        log.error("Unhandled error on %s %s\n%s", request.method, request.path,
                  error.traceback)
    response.content_type = "application/json"
    return error_body(ERROR_MESSAGES.get(error.status_code, error.status_line))


app.default_error_handler = json_error_page
app.catchall = True


EXPOSED_HEADERS = "Location, Link, X-Total-Count, ETag, Last-Modified, Retry-After"


# Characters a path keeps as they are in the log; any other is percent-encoded.
PATH_AS_IS = "/!$&'()*+,;=:@"
ACCESS_PATH_LIMIT = 1024  # characters: a long path cannot push the line's end out


def log_access(method, path, status, milliseconds, user_id):
    """One line per request on stderr: "<epoch> access GET /users/1 200 0.4ms user=1".

    The path (without its query, so never a token) is percent-encoded again
    from the bytes that came: a space or a newline in it cannot forge a field
    or a line. Written straight to the file descriptor, not through logging: a
    log record cost 15% of a GET /users/{id} (py-spy). A line is one write(),
    under 4 KiB, which a pipe never mixes with another thread's.
    """
    # PEP 3333: PATH_INFO holds the request's bytes, decoded as latin-1.
    path = quote(path[:ACCESS_PATH_LIMIT].encode("latin-1", "replace"), safe=PATH_AS_IS)
    line = f"{time.time():.3f} access {method} {path} {status} {milliseconds:.1f}ms user={user_id}\n"
    try:
        os.write(2, line.encode("ascii", "replace"))
    except OSError:
        pass  # a log that cannot be written must not fail a request that succeeded


def with_common_headers(wsgi_app):
    """Adds nosniff everywhere and CORS headers for the allowed origins; logs each request."""
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
        log_access(environ["REQUEST_METHOD"][:16], environ.get("PATH_INFO", ""),
                   answered[0] if answered else "-",
                   (time.perf_counter() - started) * 1000, environ.get(auth.USER_ID_KEY, "-"))
        return body
    return wrapped


def cors_headers(origin, environ, headers):
    extra = [("Access-Control-Allow-Origin", origin),
             ("Access-Control-Expose-Headers", EXPOSED_HEADERS)]
    if environ["REQUEST_METHOD"] == "OPTIONS":
        allow = dict((k.lower(), v) for k, v in headers).get("allow")
        if allow:
            extra += [("Access-Control-Allow-Methods", allow),
                      ("Access-Control-Allow-Headers",
                       "Authorization, Content-Type, If-None-Match"),
                      ("Access-Control-Max-Age", "600")]
    return extra


def json_waitress_errors():
    """Waitress answers malformed HTTP itself, in plain text; make that JSON too."""
    def to_response(self, ident=None):
        body = error_body(f"{self.reason}: {self.body}").encode("utf-8")
        return (f"{self.code} {self.reason}",
                [("Content-Type", "application/json"),
                 ("X-Content-Type-Options", "nosniff")], body)
    waitress.utilities.Error.to_response = to_response


application = with_common_headers(app)


def limit_malloc_arenas():
    """glibc gives each thread its own malloc arena; with 8+ threads that is
    megabytes of mostly empty memory. Two arenas serve a GIL-bound process."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to limit


def main():
    limit_malloc_arenas()
    # Every SQLite call lets go of the GIL, and taking it back waits out the
    # switch interval of whichever thread holds it (5 ms by default): with 8
    # threads that convoy cut throughput sevenfold. Hand the GIL over sooner.
    sys.setswitchinterval(0.00002)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # "Task queue depth is N" on every request while all threads are busy: load, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    models.create_tables()
    auth.spend_one_hash("")  # the first unknown-user login must not pay for its setup
    json_waitress_errors()
    if config.BROKER_URL.startswith("memory://"):
        requeue_unfinished_reports()
    embedded_worker = None
    if config.EMBEDDED_WORKER:
        import worker  # only here: a server on RabbitMQ never loads matplotlib
        embedded_worker = worker.start_in_thread()
    server = waitress.create_server(application, host=config.HOST, port=config.PORT,
                                    threads=config.WEB_THREADS, ident="")
    log.info("serving on http://%s:%s", config.HOST, config.PORT)
    serve_until_signalled(server, embedded_worker)


def requeue_unfinished_reports():
    """The in-process broker lost its jobs with the last process: queue them again."""
    with models.reading() as db:
        unfinished = models.all_unfinished_reports(db)
    for report in unfinished:
        jobs.publish(report.id, report.user_id)
    if unfinished:
        log.info("queued %d unfinished report(s) again", len(unfinished))


def serve_until_signalled(server, embedded_worker, drain_seconds=8):
    """Serve until SIGTERM or SIGINT; then stop accepting, finish what is in
    flight (at most drain_seconds), and stop the embedded worker."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    # waitress.serve() has no graceful stop: run its event loop ourselves.
    # (server._map, its channels, is what that loop serves.)
    while not stopping.is_set():
        wasyncore.loop(timeout=0.2, map=server._map, count=1)
    log.info("stopping: no new connections, finishing requests in flight")
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + drain_seconds
    # Until two polls in a row find nothing in flight: a request whose bytes
    # had arrived but were not read yet shows up only after a poll.
    quiet_polls = 0
    while quiet_polls < 2 and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=server._map, count=1)
        quiet_polls = 0 if requests_in_flight(server) else quiet_polls + 1
    server.task_dispatcher.shutdown(timeout=1)
    if embedded_worker:
        embedded_worker.stop(wait=deadline - time.monotonic())
    log.info("stopped")


def requests_in_flight(server):
    dispatcher = server.task_dispatcher
    return (dispatcher.active_count or dispatcher.queue
            or any(getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
                   for channel in list(server._map.values())))


if __name__ == "__main__":
    main()
