"""The PDF worker: consumes report jobs, renders them, stores them.

Run it as a process (`./run.sh worker`) beside servers on RabbitMQ, or let
the server run it in a thread (EMBEDDED_WORKER, the default on memory://);
the embedded worker runs its jobs in a child process (JobProcess).

A job is acked only after its report is committed, so a worker that dies
mid-job loses nothing: the broker hands the job to the next worker. A job
that can never succeed is acked and logged, never redelivered forever.
"""

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as StillRunning
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

from kombu import Consumer

import config
import database
import jobs
import metrics
import models
import reports
import schema

# report (matplotlib, 53 MiB) is imported where a job runs, so that a server
# whose embedded worker runs its jobs in a child process never loads it.

log = logging.getLogger("worker")

RENDER_ATTEMPTS = 3
RECONNECT_DELAYS = (0.5, 1, 2, 5)  # then 5 s between attempts


def report_data(db, user_id):
    import report

    user, stats = models.find_user(db, user_id), models.find_stats(db, user_id)
    if user is None or stats is None:
        return None
    return report.ReportData(
        username=user.username,
        email=user.email,
        gender=user.gender,
        **{name: getattr(stats, name) for name in models.STAT_FIELDS},
    )


class Settled(NamedTuple):
    """What became of a job: outcome "finished", "failed" or "dropped" (the
    metrics' label), its user when the job named one, and a line for the log."""

    outcome: str
    user_id: int | None
    text: str


def run_job(body):
    """Render and store one report."""
    if not (
        isinstance(body, dict)
        and type(body.get("report_id")) is int
        and type(body.get("user_id")) is int
    ):
        return Settled("dropped", None, f"dropped malformed job {body!r:.200}")
    user_id = body["user_id"]
    with database.writing() as db:
        job = reports.find(db, body["report_id"])
        if job is None or job.user_id != user_id:
            return Settled(
                "dropped",
                user_id,
                f"dropped job {body['report_id']}: no such report (its user was deleted?)",
            )
        if not reports.start(db, job.id):  # it starts only a pending or rendering one
            return Settled("dropped", user_id, f"dropped job {job.id}: already finished")
    # The data is read only after that commit. A POST that still found the job
    # pending came before it, so its stats change is read here; a POST after it
    # finds the job rendering and queues another.
    with database.reading() as db:
        data = report_data(db, job.user_id)
    if data is None:
        return Settled("dropped", user_id, f"dropped job {job.id}: its user was deleted")
    pdf, error = render_with_retries(data)
    with database.writing() as db:
        reports.finish(db, job, pdf, error)
    outcome = "finished" if pdf else "failed"
    return Settled(outcome, user_id, f"{outcome} job {job.id}" + (f": {error}" if error else ""))


def render_with_retries(data):
    import report

    for attempt in range(1, RENDER_ATTEMPTS + 1):
        try:
            return report.render(data), None
        except Exception as error:
            log.exception("render attempt %d of %d failed", attempt, RENDER_ATTEMPTS)
            reason = f"the report could not be drawn ({type(error).__name__})"
    return None, reason


class JobProcess:
    """Runs jobs in a child process, made again if it dies.

    The render is pure Python: in the server's own process it fought the
    Waitress threads for the GIL, and under polling clients the embedded
    worker made a tenth of the PDFs a worker process made (BENCHMARKS.md)."""

    def __init__(self):
        self._pool = self._start()

    def _start(self):
        pool = ProcessPoolExecutor(
            1, multiprocessing.get_context("spawn"), initializer=_job_process_starts
        )
        pool.submit(_ready)  # matplotlib loads now, not during the first job
        return pool

    def submit(self, function, *args):
        try:
            return self._pool.submit(function, *args)
        except BrokenProcessPool:  # the child died (its job went back to the queue)
            self._pool.shutdown(wait=False)
            self._pool = self._start()
            return self._pool.submit(function, *args)

    def shutdown(self):
        self._pool.shutdown()


def _job_process_starts():
    # The server stops its child, after the job in hand: Ctrl-C is the server's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A server killed outright (SIGKILL) cannot stop it: it goes by itself.
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)


def _exit_with(parent):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)  # a job in hand was never acked: the restarted server requeues it


def _ready():
    import report  # noqa: F401 (loading it is the point)


class Worker:
    """Consumes jobs until stop(); reconnects by itself when the broker goes away."""

    def __init__(self, job_runner=None):
        self._stopping = threading.Event()
        # Jobs run in a thread (or process) of their own so that this one keeps
        # the connection's heartbeats going, however long a render takes.
        self._job_runner = job_runner or ThreadPoolExecutor(1, thread_name_prefix="render")
        self._job = None  # (message, future, when it began) of the job in hand
        self._stopped = threading.Event()

    def stop(self, wait=0):
        """Asks the worker to stop (the job in hand is finished first); waits up to wait s."""
        self._stopping.set()
        self._stopped.wait(wait)

    def run(self):
        failures = 0
        while not self._stopping.is_set():
            try:
                with jobs.connect(heartbeat=jobs.HEARTBEAT) as connection:
                    connection.ensure_connection(max_retries=1, timeout=jobs.CONNECT_TIMEOUT)
                    failures = 0
                    self._consume(connection)
            except Exception as error:
                self._job = None  # unacked, so the broker gives it to a worker again
                # Above all the broker going away; whatever it was, the worker carries on.
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "consuming stopped (%r); reconnecting in %ss",
                    error,
                    delay,
                    exc_info=not isinstance(error, jobs.connection_errors()),
                )
                self._stopping.wait(delay)
        self._job_runner.shutdown()
        log.info("worker stopped")
        self._stopped.set()

    def _consume(self, connection):
        with Consumer(
            connection,
            queues=[jobs.queue],
            callbacks=[self._take_job],
            accept=["json"],
            prefetch_count=1,
            on_decode_error=self._on_undecodable,
        ):
            log.info("consuming report jobs from %s", connection.as_uri())
            # On stop, the job in hand is finished and acked before leaving.
            while not (self._stopping.is_set() and self._job is None):
                if self._job is None:
                    jobs.drain(connection, timeout=1)
                elif not self._settle_job(wait=1):
                    # Still rendering: keep reading the broker's heartbeats meanwhile.
                    jobs.drain(connection, timeout=0.01)
                connection.heartbeat_check()

    def _take_job(self, body, message):
        # Prefetch 1: no other job arrives until this one is acked.
        self._job = (message, self._job_runner.submit(run_job, body), time.monotonic())

    def _settle_job(self, wait):
        """Ack the job in hand once it is done; False while it is still running."""
        message, running, began = self._job
        try:
            settled = running.result(timeout=wait)
            log.info(settled.text)
            message.ack()
        except StillRunning:
            return False
        except Exception:
            # The database, most likely: leave the job for later, or another worker.
            log.exception("job %r failed; it goes back to the queue", message.payload)
            self._stopping.wait(2)
            message.requeue()
            self._job = None
            return True
        self._job = None
        # A dropped job drew nothing: its few milliseconds are no render's
        # duration, and would make waiting.py's Retry-After too hopeful.
        seconds = None if settled.outcome == "dropped" else time.monotonic() - began
        metrics.observe_job(settled.outcome, seconds)
        if settled.user_id is not None:
            jobs.announce_settled(settled.user_id, seconds)
        return True

    def _on_undecodable(self, message, error):
        log.error("dropped a job that is not JSON (%s): %r", error, message.body[:200])
        message.ack()


def start_in_thread():
    """The embedded worker of a server process: it consumes in a thread, and
    runs the jobs in a child process."""
    worker = Worker(JobProcess())
    threading.Thread(target=worker.run, name="embedded-worker", daemon=True).start()
    return worker


def main():
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    schema.ensure_newest()
    _ready()  # matplotlib loads now, not during the first job
    metrics.serve_for_worker()
    worker = Worker()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()


if __name__ == "__main__":
    main()
