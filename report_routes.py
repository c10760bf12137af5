"""The PDF report's routes (CONTRACT.md, PDF report): POST queues a job for a
worker; GET serves the newest finished report, waits for one (Prefer: wait=N),
or says why there is none. A report's states, and who moves it: reports.py."""

import time
from email.utils import formatdate

import bottle
from bottle import request

import auth
import database
import jobs
import reports
import waiting
from responses import ApiError, JsonAnswer, json_response


def add_routes(app):
    app.post("/users/<user_id:id>/pdf", callback=request_report, needs_token=True)
    app.get("/users/<user_id:id>/pdf", callback=get_report, needs_token=True)


def request_report(user_id):
    url = f"/users/{user_id}/pdf"
    accepted = json_response({"url": url, "status": "pending"}, 202, {"Location": url})
    # The owner's row is locked (PostgreSQL) or the write is alone (SQLite):
    # the user's POSTs come one at a time here.
    with database.writing() as db:
        auth.owned_user(db, request, user_id)
        report_id = reports.queue(db, user_id)
    if report_id is None:
        return accepted  # its job is queued, and has not read the data yet
    try:
        jobs.publish(report_id, user_id)
    except jobs.BrokerUnavailable:
        with database.writing() as db:
            reports.forget(db, report_id)
        message = "The report queue is unavailable right now; try again shortly."
        raise ApiError(503, message, Retry_After=5) from None
    return accepted


def get_report(user_id):
    wait = waiting.preferred_wait(request.environ)
    if not wait:
        return report_answer(user_id)
    with waiting.watching(user_id) as news:
        answer = report_answer(user_id)
        if answer.status_code != 202 or news is None:
            return answer  # ready, failed, or MAX_WAITING already wait: at once
        deadline = time.monotonic() + wait
        while answer.status_code == 202 and time.monotonic() < deadline:
            news.wait(deadline - time.monotonic())
            news.clear()
            answer = report_answer(user_id)
    answer.set_header("Preference-Applied", f"wait={wait}")
    return answer


def report_answer(user_id):
    """What GET /users/{id}/pdf answers now: the newest finished PDF (or 304),
    else 202 while the first report is made, 404 or the failure."""
    with database.reading() as db:
        auth.current_user(db, request)
        user = auth.user_or_404(db, user_id)
        latest, done = reports.newest_and_newest_done(db, user_id)
        if done is None:
            return report_not_ready(db, latest, user_id)
        if not_modified(done):
            return bottle.HTTPResponse(status=304, headers=report_headers(done))
        # Read again with its PDF: a newer report may have replaced this one meanwhile.
        done = reports.newest_pdf(db, user_id)
        if done is None:
            raise auth.no_such_user(user_id)  # deleted meanwhile, reports and all
    inline = f'inline; filename="{user.username}_stats.pdf"'
    headers = {"Content-Type": pdf_media_type(), "Content-Disposition": inline}
    return bottle.HTTPResponse(done.pdf, 200, {**headers, **report_headers(done)})


def pdf_media_type():
    """application/octet-stream for a client that asks for that alone (generated
    clients read a PDF as bytes only under that name), else application/pdf."""
    accept = request.environ.get("HTTP_ACCEPT", "")
    octets = "application/octet-stream" in accept and "application/pdf" not in accept
    return "application/octet-stream" if octets else "application/pdf"


def report_headers(report):
    last_modified = formatdate(report.finished_at, usegmt=True)
    return {"ETag": f'"report-{report.id}"', "Last-Modified": last_modified}


def report_not_ready(db, latest, user_id):
    post = f"POST /users/{user_id}/pdf"
    if latest is None:
        message = f"No report was ever requested for user {user_id}; {post} to request one."
        return ApiError(404, message)
    if latest.state in reports.UNFINISHED:
        retry_after = waiting.retry_after(reports.unfinished_before(db, latest.id))
        return JsonAnswer({"status": "pending"}, 202, Retry_After=retry_after)
    return ApiError(409, f"The last report failed: {latest.error}. {post} to try again.")


def not_modified(report):
    # Headers from the environ as sent: Bottle's get_header fails on non-UTF-8 bytes.
    if_none_match = request.environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return report_headers(report)["ETag"] in tags or "*" in tags
    since = bottle.parse_date(request.environ.get("HTTP_IF_MODIFIED_SINCE", ""))
    return since is not None and int(report.finished_at) <= since
