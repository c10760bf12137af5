"""A report's life in one place: its states, who moves it between them, and
when a POST queues a new job.

    POST ──▶ pending ──(a worker takes the job)──▶ rendering ──▶ done | failed
               │  ▲                                   │
               │  └── POST: published again, if its   └── POST: a new pending
               │      job was queued over              report (the job in hand
               │      REPUBLISH_AFTER ago; else        may have read the data
               │      nothing (one job will do)        before the change)
               └── the broker refuses the job: forgotten (the POST is a 503)

- pending: the row is committed before its job {report_id, user_id} is
  published; at most one per user (a unique partial index).
- rendering: a worker marked it so *before* reading the user's data, so a
  stats change that a POST meant to include is never left out.
- done: holds the PDF and replaces (deletes) the user's older finished
  reports; failed: holds the reason, and GET says it until a new POST.
- A worker acks the job only after the outcome is committed; a job whose
  report is done (or gone with its user) is dropped.
"""

import logging
import time

from sqlalchemy import bindparam, func, or_, select

import config
import database
import models
from database import Statement
from models import reports as table

log = logging.getLogger("reports")

# Pending this long, a job was probably lost between commit and publish (a server died): the
# sweep and the next POST queue it again. A duplicate is dropped if done, else rendered again.
REPUBLISH_AFTER = config.REPUBLISH_AFTER  # seconds (60)

UNFINISHED = ("pending", "rendering")
# Spelt out, not IN (...): that compiles to an expanding parameter, which Statement cannot fill.
_unfinished = or_(*(table.c.state == state for state in UNFINISHED))
_pending = table.c.state == "pending"
_rendering = table.c.state == "rendering"
_done = table.c.state == "done"
_by_id = table.c.id == bindparam("id")
_of_user = table.c.user_id == bindparam("user_id")
REPORT_SUMMARY = (table.c.id, table.c.user_id, table.c.state, table.c.finished_at, table.c.error)

PENDING_REPORT = Statement(select(table.c.id, table.c.published_at).where(_of_user, _pending))
_new_report = table.insert().values(user_id=bindparam("user_id"), published_at=bindparam("at"))
INSERT_REPORT = Statement(_new_report.returning(table.c.id))
# When its job was last queued: now, or 0 for the next sweep to queue it again.
SET_PUBLISHED_AT = Statement(
    table.update().where(_by_id, _pending).values(published_at=bindparam("at"))
)
FORGET_PENDING = Statement(table.delete().where(_by_id, _pending))


def _newest_id(*conditions):
    return select(func.max(table.c.id)).where(_of_user, *conditions).scalar_subquery()


NEWEST_AND_NEWEST_DONE = Statement(
    select(*REPORT_SUMMARY).where(or_(table.c.id == _newest_id(), table.c.id == _newest_id(_done)))
)
NEWEST_DONE_PDF = Statement(
    select(*REPORT_SUMMARY, table.c.pdf).where(_of_user, _done).order_by(table.c.id.desc()).limit(1)
)
REPORT_BY_ID = Statement(select(*REPORT_SUMMARY).where(_by_id))
START_REPORT = Statement(table.update().where(_by_id, _unfinished).values(state="rendering"))
_outcome = {name: bindparam(name) for name in ("state", "pdf", "error", "finished_at")}
FINISH_REPORT = Statement(table.update().where(_by_id, _rendering).values(_outcome))
DROP_REPLACED_REPORTS = Statement(
    table.delete().where(_of_user, table.c.id < bindparam("id"), table.c.state != "pending")
)
CLAIM_LOST_JOBS = Statement(
    table.update()
    .where(_pending, table.c.published_at < bindparam("before"))
    .values(published_at=bindparam("at"))
    .returning(table.c.id, table.c.user_id)
)
COUNT_BY_STATE = Statement(select(table.c.state, func.count()).group_by(table.c.state))
UNFINISHED_BEFORE = Statement(
    select(func.count()).select_from(table).where(_unfinished, table.c.id < bindparam("id"))
)
ALL_UNFINISHED_REPORTS = Statement(select(table.c.id, table.c.user_id).where(_unfinished))


def queue(db, user_id):
    """For a POST: the id of the report whose job to publish now (a new pending one, or one
    published too long ago), or None: a job queued moments ago has not read the data yet."""
    pending = PENDING_REPORT.first(db, {"user_id": user_id})
    now = time.time()
    if pending is None:
        return INSERT_REPORT.scalar(db, {"user_id": user_id, "at": now})
    if pending.published_at > now - REPUBLISH_AFTER:
        return None
    SET_PUBLISHED_AT.run(db, {"id": pending.id, "at": now})
    return pending.id


def republish_lost_jobs(publish):
    """Publishes again the jobs of reports pending over REPUBLISH_AFTER (their server died
    between commit and publish), so that every POST answered 202 ends in a report. They are
    claimed in one statement: of servers sweeping at once, one publishes each."""
    now = time.time()
    with database.writing() as db:
        lost = CLAIM_LOST_JOBS.rows(db, {"before": now - REPUBLISH_AFTER, "at": now})
    for report in lost:
        log.warning("report %s was pending too long: publishing its job again", report.id)
        try:
            publish(report.id, report.user_id)
        except Exception:  # the broker away: the next sweep tries again
            with database.writing() as db:
                SET_PUBLISHED_AT.run(db, {"id": report.id, "at": 0})


def republish_unfinished(publish):
    """Publishes every unfinished report's job again (an in-process broker's jobs die with it)."""
    with database.reading() as db:
        unfinished = ALL_UNFINISHED_REPORTS.rows(db)
    for report in unfinished:
        publish(report.id, report.user_id)
    if unfinished:
        log.info("queued %d unfinished report(s) again", len(unfinished))


def forget(db, report_id):
    """A pending report whose job the broker would not take: as if never asked for."""
    FORGET_PENDING.run(db, {"id": report_id})


def newest_and_newest_done(db, user_id):
    """(the user's newest report, their newest done one: maybe None, maybe the same), without
    PDFs. One statement, one snapshot: a report finishing meanwhile is in both or neither."""
    rows = NEWEST_AND_NEWEST_DONE.rows(db, {"user_id": user_id})
    latest = max(rows, key=lambda row: row.id, default=None)
    done = max((row for row in rows if row.state == "done"), key=lambda row: row.id, default=None)
    return latest, done


def count_by_state():
    """[(state, how many reports are in it)], for the metrics."""
    with database.reading() as db:
        return [tuple(row) for row in COUNT_BY_STATE.rows(db)]


def unfinished_before(db, report_id):
    """How many unfinished reports were queued before this one (any user's)."""
    return UNFINISHED_BEFORE.scalar(db, {"id": report_id})


def find(db, report_id):
    return REPORT_BY_ID.first(db, {"id": report_id})


def newest_pdf(db, user_id):
    """The user's newest done report with its PDF, read together: a report
    that finishes deletes the one it replaces, so an id read earlier may be gone."""
    return NEWEST_DONE_PDF.first(db, {"user_id": user_id})


def start(db, report_id):
    """Marks the report as taken by a worker (from now on a POST queues another);
    False when it was finished or deleted meanwhile."""
    return START_REPORT.run(db, {"id": report_id}).rowcount == 1


def finish(db, report, pdf, error):
    """Stores a started report's outcome; a done one replaces the user's older reports."""
    # PostgreSQL: the user row first, as a deletion of the user takes it: two
    # jobs of one user finishing at once would otherwise lock each other's rows.
    if models.find_user(db, report.user_id, lock=True) is None:
        return  # deleted meanwhile, reports and all
    outcome = {"state": "done" if pdf else "failed", "pdf": pdf, "error": error}
    finished = FINISH_REPORT.run(db, {"id": report.id, **outcome, "finished_at": time.time()})
    if finished.rowcount and pdf:
        DROP_REPLACED_REPORTS.run(db, {"user_id": report.user_id, "id": report.id})
