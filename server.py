"""The HTTP API of CONTRACT.md, route by route: a Bottle app. A request flows route -> body
validation -> model -> (queue) -> response, and every answer is JSON in one style (responses.py).
main() starts it all on Waitress (serving.py)."""

import logging
import threading
import time

from bottle import request, response

import auth
import config
import conventions
import database
import jobs
import leaderboard
import limits
import metrics
import migrate
import models
import openapi
import pages
import report_routes
import reports
import serving
import throttle
import validation
import waiting
from models import MAX_ID
from responses import ApiError, json_response, json_text_response, to_json

log = logging.getLogger("server")

# Its ids, 413s, OPTIONS, 405s and JSON error pages: conventions.py.
app = conventions.new_app()


@app.hook("after_request")
def keep_private_answers_private():
    """CONTRACT.md: what a route that needs a token answers is the caller's own, kept by no
    shared cache and asked again by a browser. An answer carrying a token says no-store."""
    route = request.environ.get("bottle.route")
    if route is not None and route.config.get("needs_token") and "Cache-Control" not in response:
        response.set_header("Cache-Control", "private, no-cache")


def username_taken(username):
    return ApiError(409, f"The username '{username}' is already taken.")


# Users
@app.get("/users")
def list_users():
    limit = query_int("limit", default=100, minimum=1, maximum=1000)
    offset = query_int("offset", default=0, minimum=0, maximum=MAX_ID)
    with database.reading() as db:
        total, page = models.page_of_users(db, limit, offset)
    return json_text_response(page, headers=page_headers("/users?", total, limit, offset))


def page_headers(path, total, limit, offset):
    headers = {"X-Total-Count": total}
    if offset + limit < total:
        headers["Link"] = f'<{path}limit={limit}&offset={offset + limit}>; rel="next"'
    return headers


def query_int(name, default, minimum, maximum):
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and minimum <= int(raw) <= maximum):
        raise ApiError(400, f"'{name}' must be an integer from {minimum} to {maximum}.")
    return int(raw)


@app.post("/users")
def create_user():
    # The rate first: a refused sign-up reads no body and waits for no hash.
    limits.count(limits.sign_ups, request.environ)
    fields = validation.checked_fields(
        validation.json_object(),
        validation.USER_FIELDS,
        ignored=validation.READ_ONLY_USER_FIELDS,
        required=("username", "password"),
    )
    with limits.hash_budget.held():
        fields["password_hash"] = auth.hash_password(fields.pop("password"))
    try:
        with database.writing() as db:
            user_id = models.create_user(db, fields)
            user, representation = models.find_user(db, user_id), models.user_json(db, user_id)
    except database.IntegrityError:
        raise username_taken(fields["username"]) from None
    body = f'{{"user":{representation},"token":{to_json(auth.issue_token(user))}}}'
    headers = {"Location": f"/users/{user_id}", "Cache-Control": "no-store"}
    return json_text_response(body, 201, headers)


@app.get("/users/me", needs_token=True)
def get_me():
    with database.reading() as db:
        representation = models.user_json(db, auth.current_user(db, request).id)
    if representation is None:  # deleted since its token was checked
        raise auth.token_no_longer_valid()
    return json_text_response(representation)


@app.get("/users/<user_id:id>")
def get_user(user_id):
    with database.reading() as db:
        representation = models.user_json(db, user_id)
    if representation is None:
        raise auth.no_such_user(user_id)
    return json_text_response(representation)


@app.route("/users/<user_id:id>", method=["PUT", "PATCH"], needs_token=True)
def update_user(user_id):
    with database.reading() as db:
        stored_hash = auth.owned_user(db, request, user_id, lock=False).password_hash
    fields = validation.checked_fields(
        validation.json_object(),
        validation.USER_CHANGE_FIELDS,
        ignored=validation.READ_ONLY_USER_FIELDS,
    )
    current = fields.pop("current_password", None)
    if "password" in fields:
        if current is None:
            raise ApiError(400, "'current_password' is required to change 'password'.")
        # Hashed outside the write transaction: scrypt is slow on purpose.
        with limits.hash_budget.held():  # two hashes, one after the other
            if not auth.password_matches(current, stored_hash):
                raise ApiError(403, "'current_password' is not the current password.")
            fields["password_hash"] = auth.hash_password(fields.pop("password"))
    elif current is not None:
        raise ApiError(400, "'current_password' is accepted only beside 'password'.")
    try:
        with database.writing() as db:
            # Again: a password change meanwhile revoked the token.
            auth.owned_user(db, request, user_id)
            models.update_user(db, user_id, fields)
            representation = models.user_json(db, user_id)
    except database.IntegrityError:
        raise username_taken(fields["username"]) from None
    return json_text_response(representation)


@app.delete("/users/<user_id:id>", needs_token=True)
def delete_user(user_id):
    with database.writing() as db:
        auth.owned_user(db, request, user_id)
        models.delete_user(db, user_id)
    waiting.wake(user_id)  # requests waiting on their report end now (401)
    response.status = 204
    return ""


# Stats
@app.get("/users/<user_id:id>/stats", needs_token=True)
def get_stats(user_id):
    with database.reading() as db:
        auth.current_user(db, request)
        stats = models.find_stats(db, user_id)
    if stats is None:
        raise auth.no_such_user(user_id)
    return json_response(models.stats_json(stats))


@app.route("/users/<user_id:id>/stats", method=["PUT", "PATCH"], needs_token=True)
def update_stats(user_id):
    with database.writing() as db:
        auth.owned_user(db, request, user_id)
        fields = validation.checked_fields(validation.json_object(), validation.STATS_FIELDS)
        return json_response(models.stats_json(models.update_stats(db, user_id, fields)))


# Leaderboard
@app.get("/leaderboard", needs_token=True)
def get_leaderboard():
    with database.reading() as db:
        auth.current_user(db, request)
        by = request.query.get("by", "victory_count")
        if by not in leaderboard.ORDERS:
            raise ApiError(400, f"'by' must be one of {', '.join(leaderboard.ORDERS)}.")
        limit = query_int("limit", default=10, minimum=1, maximum=100)
        offset = query_int("offset", default=0, minimum=0, maximum=MAX_ID)
        total, entries = leaderboard.page(db, by, limit, offset)
    headers = page_headers(f"/leaderboard?by={by}&", total, limit, offset)
    return json_response(entries, headers=headers)


# PDF reports: report_routes.py.
report_routes.add_routes(app)


# Login
BAD_LOGIN = "Bad username or password"


@app.post("/login")
def login():
    limits.count(limits.logins, request.environ)  # first: see create_user
    body = validation.json_object()
    validation.reject_unknown_fields(body, ("username", "password"))
    username, password = body.get("username"), body.get("password")
    if not (isinstance(username, str) and username and isinstance(password, str) and password):
        raise ApiError(400, BAD_LOGIN)
    user = auth.log_in(username, password, hashing=limits.hash_budget.held)
    if user is None:
        raise ApiError(401, BAD_LOGIN, WWW_Authenticate="Bearer")
    body = {"success": True, "token": auth.issue_token(user), "user": f"/users/{user.id}"}
    return json_response(body, headers={"Cache-Control": "no-store"})


@app.post("/logout", needs_token=True)
def log_out():
    body = validation.json_object(optional=True)
    validation.reject_unknown_fields(body, ("everywhere",))
    everywhere = body.get("everywhere", False)
    if type(everywhere) is not bool:
        raise ApiError(400, "'everywhere' must be true or false.")
    with database.writing() as db:
        auth.log_out(db, request, everywhere)
    response.status = 204
    return ""


# The browser pages (CONTRACT.md): the console at /, Swagger UI at /docs.
pages.add_routes(app)


# Service
embedded_worker = None  # worker.Worker, when this server runs one (main)


@app.get("/healthz")
def healthz():
    # With the embedded worker, the broker is of no use unless it consumes.
    consuming = embedded_worker is None or embedded_worker.consuming
    parts = {"database": models.database_is_up(), "broker": jobs.broker_is_up() and consuming}
    up = all(parts.values())
    body = {name: "ok" if part else "down" for name, part in {"status": up, **parts}.items()}
    return json_response(body, 200 if up else 503)


@app.get("/metrics")
def metrics_page():
    if not config.METRICS:
        raise ApiError(404, "There is nothing at /metrics (METRICS is off).")
    body, content_type = metrics.exposition()
    response.content_type = content_type
    return body


@app.get("/openapi.json")
def openapi_document():
    return json_text_response(openapi.document_json())


def main():
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    migrate.upgrade()
    auth.secret()  # made now, if it must be generated: not on the first request
    auth.spend_one_hash("")  # the first unknown-user login must not pay for its setup
    jobs.on_settled(waiting.wake)
    if config.IN_PROCESS_BROKER:  # it lost its jobs with the last process
        reports.republish_unfinished(jobs.publish)
    else:  # the workers' news comes through the broker
        threading.Thread(
            target=jobs.listen_for_news, args=(waiting.wake_everyone,), name="job-news", daemon=True
        ).start()
    threading.Thread(target=sweep, name="sweep", daemon=True).start()
    global embedded_worker
    if config.EMBEDDED_WORKER:
        import worker  # only here: a server on RabbitMQ never loads matplotlib

        counted = [metrics.observe_job] if config.METRICS else []
        embedded_worker = worker.start_in_thread(on_settled=counted)
    if config.METRICS:
        metrics.watch_service(reports.count_by_state, jobs.waiting_count)
        if not config.EMBEDDED_WORKER:  # render durations: the separate workers' news
            jobs.on_settled(metrics.observe_heard_job)
    on_answered = metrics.observe_request if config.METRICS else None
    serving.serve(app, on_stop=embedded_worker and embedded_worker.stop, on_answered=on_answered)


def sweep():
    """Every server, every 10 s (a sixth of REPUBLISH_AFTER, if less): publishes again
    the jobs that were lost, and forgets the throttles' old events."""
    longest_window = max(auth.FAILURE_WINDOW, limits.Rate.WINDOW)
    while True:
        time.sleep(min(10, reports.REPUBLISH_AFTER / 6))
        try:
            with database.writing() as db:
                throttle.forget_old(db, before=time.time() - longest_window)
            reports.republish_lost_jobs(jobs.publish)
        except Exception as error:  # the database away: the next sweep tries again
            log.warning("could not sweep: %r", error)


if __name__ == "__main__":
    main()
