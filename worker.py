"""The PDF worker: consumes report jobs, renders them, stores them. It runs as a process
(`./run.sh worker`) beside servers on RabbitMQ, or in a thread of the server (EMBEDDED_WORKER, the
default on memory://), its jobs in a child process. A job is acked only after its report is
committed, so a worker that dies mid-job loses nothing: the broker hands the job to the next
worker. A job that can never succeed is acked and logged, never redelivered forever.
"""

import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

from kombu.mixins import ConsumerMixin

import config
import database
import jobs
import migrate
import models
import reports

log = logging.getLogger("worker")

RENDER_ATTEMPTS = 3
# After a job fails (the database, most likely), before it goes back to the
# queue: with prefetch 1 it would come straight back to this worker.
FAILURE_PAUSE = 2  # seconds


class Settled(NamedTuple):
    """What became of a job: its outcome (the metrics' label), its user if any, a line to log."""

    outcome: str  # "finished", "failed" or "dropped"
    user_id: int | None
    text: str


def run_job(body):
    """Renders and stores one report; what became of it."""
    import drawing  # here: a server whose child process runs its jobs never loads it (53 MiB)

    fields = body if isinstance(body, dict) else {}
    user_id, report_id = fields.get("user_id"), fields.get("report_id")
    if type(user_id) is not int or type(report_id) is not int:
        return Settled("dropped", None, f"dropped malformed job {body!r:.200}")
    with database.writing() as db:
        job = reports.find(db, report_id)
        if job is None or job.user_id != user_id:
            why = "no such report (its user was deleted?)"
            return Settled("dropped", user_id, f"dropped job {report_id}: {why}")
        if not reports.start(db, job.id):  # it starts only a pending or rendering one
            return Settled("dropped", user_id, f"dropped job {job.id}: already finished")
    # Read after that commit: a POST that found the job pending came before it (its
    # stats are read here), and one after it finds the job rendering and queues another.
    with database.reading() as db:
        user, stats = models.find_user(db, user_id), models.find_stats(db, user_id)
    if user is None or stats is None:
        return Settled("dropped", user_id, f"dropped job {job.id}: its user was deleted")
    data = drawing.ReportData(user.username, user.email, user.gender, **models.stats_json(stats))
    for attempt in range(1, RENDER_ATTEMPTS + 1):
        try:
            pdf, error = drawing.render(data), None
            break
        except Exception as failure:
            log.exception("render attempt %d of %d failed", attempt, RENDER_ATTEMPTS)
            pdf, error = None, f"the report could not be drawn ({type(failure).__name__})"
    with database.writing() as db:
        reports.finish(db, job, pdf, error)
    outcome = "finished" if pdf else "failed"
    return Settled(outcome, user_id, f"{outcome} job {job.id}" + (f": {error}" if error else ""))


class JobProcess:
    """Runs jobs in a child process, made again if it dies (concurrent.futures stops it at
    exit). The render is pure Python: in the server's process it fought Waitress for the GIL.
    Eight clients polling: 5.7 PDFs/s in a thread, 28.6 here; server RSS 113 -> 56.5 MiB."""

    def __init__(self):
        self._start()

    def _start(self):
        spawn = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(1, spawn, initializer=_job_process_starts)
        self._pool.submit(importlib.import_module, "drawing")  # matplotlib now, not in a job

    def run(self, body):
        """run_job(body) in the child: its outcome from the future, or what it raised."""
        try:
            future = self._pool.submit(run_job, body)
        except BrokenProcessPool:  # the child died (its job went back to the queue)
            self._pool.shutdown(wait=False)
            self._start()
            future = self._pool.submit(run_job, body)
        return future.result()


def _job_process_starts():
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops it, after the job in hand
    # A server killed outright (SIGKILL) cannot stop it: it goes by itself.
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _exit_with(parent):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)  # a job in hand was never acked: the restarted server requeues it


class BrokerLost(Exception):
    """Out of consume(): the log said what the lost connection cost, or the worker stops."""


class Worker(ConsumerMixin):
    """Consumes report jobs one at a time until stop(), reconnecting by itself when the broker goes
    away. run(body) does a job and returns its Settled (run_job or JobProcess.run); each job settled
    is news for the servers (jobs.announce_settled) and for each on_settled(settled, seconds)."""

    def __init__(self, connection=None, run=run_job, on_settled=(), failure_pause=FAILURE_PAUSE):
        self.connection = connection or jobs.connect(heartbeat=jobs.HEARTBEAT)
        self.run_job, self.on_settled = run, list(on_settled)
        self.failure_pause = failure_pause
        self._paused = threading.Event()  # set by stop(): a pause ends at once
        self._stopped = threading.Event()
        self.consuming = False  # connected, with its consumer ready (the health check)

    def get_consumers(self, Consumer, channel):
        # Prefetch 1: no other job arrives until this one is acked.
        return [Consumer(jobs.queue, callbacks=[self.on_job], accept=["json"], prefetch_count=1)]

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self.consuming = True
        log.info("consuming report jobs from %s", connection.as_uri())

    def on_connection_error(self, error, interval):
        if self.should_stop:
            raise BrokerLost() from error  # out of the reconnection loop, and of run()
        log.warning("cannot reach the broker (%r); trying again in %ss", error, interval)

    @contextmanager
    def establish_connection(self):
        # ConsumerMixin's own, retrying at most 5 s apart (not 30 s): soon back after a restart.
        with self.create_connection() as connection:
            connection.ensure_connection(
                self.on_connection_error, interval_start=0.5, interval_step=1, interval_max=5
            )
            yield connection

    def on_job(self, body, message):
        began = time.monotonic()
        try:
            settled = self.run_job(body)
        except Exception:  # the database, most likely (see FAILURE_PAUSE)
            log.exception("job %r failed; it goes back to the queue", body)
            self._paused.wait(self.failure_pause)
            message.requeue()
            return
        log.info(settled.text)
        # A dropped job drew nothing: its milliseconds would make Retry-After too hopeful.
        seconds = None if settled.outcome == "dropped" else time.monotonic() - began
        try:
            message.ack()
        except self.connection_errors as error:
            # Nothing is lost: the worker it goes to drops it (its report is finished).
            log.warning("%s, but its ack was lost (%r): to be redelivered", settled.text, error)
            raise BrokerLost() from error
        finally:  # the outcome is committed: whoever waits on it hears of it
            if settled.user_id is not None:
                jobs.announce_settled(settled.user_id, seconds)
            for listener in self.on_settled:
                listener(settled, seconds)

    def on_decode_error(self, message, error):
        log.error("dropped a job that is not JSON (%s): %r", error, message.body[:200])
        message.ack()

    def run(self):
        """ConsumerMixin's run, which logs a lost connection in one line (not a
        traceback) and also ends when stop() is called while the broker is away."""
        errors = self.connection_errors + self.channel_errors
        while not self.should_stop:
            try:
                # should_stop is read between waits for a job: at most 0.25 s apart
                # (kombu's default 1 s made each stop of a server wait 0.5-1 s more).
                for _ in self.consume(safety_interval=0.25):
                    pass
            except BrokerLost:
                pass
            except errors as error:
                log.warning("lost the broker (%r); connecting again", error)
            self.consuming = False
        log.info("worker stopped")
        self._stopped.set()

    def stop(self, wait=0):
        """Asks the worker to stop (the job in hand is finished first); waits up to wait s."""
        self.should_stop = True
        self._paused.set()
        self._stopped.wait(wait)


def start_in_thread(on_settled=()):
    """The embedded worker of a server: it consumes in a thread, runs jobs in a child process."""
    worker = Worker(run=JobProcess().run, on_settled=on_settled)
    threading.Thread(target=worker.run, name="embedded-worker", daemon=True).start()
    return worker


def main():
    import drawing  # noqa: F401 (matplotlib loads now, not during the first job)
    import metrics

    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    migrate.upgrade()
    metrics.serve_for_worker()
    worker = Worker(on_settled=[metrics.observe_job])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()


if __name__ == "__main__":
    main()
