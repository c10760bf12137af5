"""The chaos run: `./run.sh soak --chaos [SECONDS]` (90 by default).

Two servers and two workers, as "Running on several machines" wires them, on
a PostgreSQL database of the run's own (made on DATABASE_URL's server, by
default the machine's postgresql+psycopg://postgres@127.0.0.1:5432/test, and
dropped at the end) and a RabbitMQ node of the run's own (chaos_broker.py).
The soak's clients (soak.py), half of them on each server, drive its mixed load
while, on a fixed schedule:

- every 20 s a worker is killed (SIGKILL, in turn) and started again,
- every 45 s a server is killed (SIGKILL, in turn) and started again on its port,
- once, at 40% of the run, RabbitMQ is stopped and started again.

A client whose request gets no answer (a kill cut its connection, or nobody
listens) sends it again to the other server, one answered 503 with Retry-After
after that (chaos_clients.py). After the load the clients wait for every PDF
requested, as the soak's do, and read each new one.

It exits 1 when a report answered 202 of a user who still exists was not
delivered within REPORT_DEADLINE s of the load's end, or failed (409); when a
PDF showed another user, stats older than those its request was made after,
or an older report than one served before; when a request got an undocumented
5xx (anything but a 503 with Retry-After) or an answer the contract does not
allow; when a request still had no answer after RETRY_FOR s; when a process
died that was not killed, or one could not be started again. The processes,
the RabbitMQ node, the database and the temporary folders are removed however
it ends (a failed run keeps a copy of the processes' logs, and says where).
"""

import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import soak
from bench_record import Section
from bench_setup import RELAXED_LIMITS, SCRYPT_N, Client, testing
from chaos_broker import PrivateRabbitMQ, free_ports
from chaos_clients import CUT, REFUSED, RETRY_FOR, ChaosClient
from soak import WEIGHTS

DEFAULT_SECONDS = 90
MINIMUM_SECONDS = 50  # a worker kill, a server kill and the broker restart at least
CLIENTS = 16  # the soak's 32 would crowd the 2 cores that 7 processes already share
SERVERS, WORKERS = 2, 2
WORKER_KILL_EVERY, SERVER_KILL_EVERY = 20, 45  # seconds
KINDS = ("worker", "server", "broker")  # of fault, each on a schedule of its own
BROKER_RESTART_AT = 0.4  # of the run
# The server's sweep publishes a job lost with a killed server once it is
# REPUBLISH_AFTER (60 s) old, within 10 s; then a worker may be starting.
REPORT_DEADLINE = 120
SERVER_START_TIMEOUT = WORKER_START_TIMEOUT = 60
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# What the service's logs say of the faults, counted for the record.
LOGGED = {
    "jobs published again by a server's sweep": "publishing its job again",
    "jobs dropped as already finished (a redelivery)": "already finished",
    "warnings": " WARNING ",
}


def progress(message):
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


# The processes, and the schedule that kills them


class Cluster:
    """Two servers on ports of their own and two workers, on the run's database and broker."""

    def __init__(self, database_url, broker_url, queue):
        self.live = testing.LiveService(
            HOST="127.0.0.1",
            DATABASE_URL=database_url,
            BROKER_URL=broker_url,
            REPORT_QUEUE=queue,
            SCRYPT_N=str(SCRYPT_N),
            **RELAXED_LIMITS,
        )
        self.broker_url, self.queue = broker_url, queue
        self.ports = free_ports(SERVERS)  # each server starts again on its own
        self.servers, self.workers = [], []
        self.killed = set()  # the processes the schedule killed
        self.turns = Counter()  # which server and worker the next kill takes

    def start(self):
        self.servers = [self.start_server(port) for port in self.ports]
        self.workers = [self.start_worker() for _ in range(WORKERS)]
        testing.wait_until(
            lambda: self.consumers() == WORKERS, 60, f"{WORKERS} workers consuming {self.queue}"
        )

    def start_worker(self):
        process = self.live.start_worker()

        def consumes():
            if process.popen.poll() is not None:
                raise RuntimeError(f"a worker exited at its start:\n{process.output()[-3000:]}")
            return "consuming report jobs" in process.output()

        testing.wait_until(consumes, WORKER_START_TIMEOUT, "a worker to consume")
        return process

    def start_server(self, port):
        process = self.live.start("server.py", PORT=str(port))

        def answers():
            if process.popen.poll() is not None:
                raise RuntimeError(f"a server exited at its start:\n{process.output()[-3000:]}")
            # Ours, not a program that took the port meanwhile: it would have exited.
            serving = f"serving on http://127.0.0.1:{port}" in process.output()
            return serving and Client(port).answers("/openapi.json")

        testing.wait_until(answers, SERVER_START_TIMEOUT, f"the server on port {port}")
        return process

    def consumers(self):
        from kombu import Connection, Queue

        with Connection(self.broker_url, connect_timeout=2) as connection:
            try:
                return (
                    Queue(self.queue)
                    .queue_declare(passive=True, channel=connection.default_channel)
                    .consumer_count
                )
            except connection.channel_errors:
                return 0

    def kill(self, kind):
        """Kills the next server or worker in turn with SIGKILL, and starts another in its place."""
        processes = self.servers if kind == "server" else self.workers
        number = self.turns[kind] % len(processes)
        self.turns[kind] += 1
        victim = processes[number]
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(10)
        self.killed.add(victim)
        if kind == "server":
            processes[number] = self.start_server(self.ports[number])
        else:
            processes[number] = self.start_worker()
        return f"{kind} {number + 1} (pid {victim.popen.pid})"

    def deaths(self):
        """The processes that exited though nobody killed or stopped them: (log name, code)."""
        return [
            (process.log_path.name, process.popen.returncode)
            for process in self.live.processes
            if process.popen.poll() is not None and process not in self.killed
        ]

    def problems(self):
        """The log lines that say something went wrong, with which process said them."""
        found = []
        for process in self.live.processes:
            for line in process.output().splitlines():
                if any(word in line for word in (" ERROR ", " CRITICAL ", "Traceback")):
                    found.append(f"{process.log_path.stem}: {line.strip()[:240]}")
        return found

    def logged(self):
        """How often the logs say what the faults cost: Counter of LOGGED's names."""
        found = Counter()
        for process in self.live.processes:
            text = process.output()
            for name, sign in LOGGED.items():
                found[name] += text.count(sign)
        return found

    def keep_logs(self):
        """A copy of every log, for a run that failed: the folder goes with stop()."""
        folder = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
        for process in self.live.processes:
            shutil.copy(process.log_path, folder)
        return folder

    def stop(self):
        self.live.stop()


def schedule(seconds):
    """[(second, what)] of the run: a worker every 20 s, a server every 45 s, the broker once."""
    return sorted(
        [(at, "worker") for at in range(WORKER_KILL_EVERY, seconds, WORKER_KILL_EVERY)]
        + [(at, "server") for at in range(SERVER_KILL_EVERY, seconds, SERVER_KILL_EVERY)]
        + [(round(seconds * BROKER_RESTART_AT), "broker")]
    )


@dataclass
class Event:
    second: float  # when it began
    what: str  # worker, server or broker
    took: float = 0  # seconds until the new process answered
    failure: str = ""


def run_schedule(events, cluster, broker, started, stop, done, clients):
    """One kind's events, each when due or as soon as the one before is over:
    a slow restart of a worker delays the next worker's kill, not a server's."""
    for at, what in events:
        if stop.wait(max(0, started + at - time.monotonic())):
            return
        event = Event(time.monotonic() - started, what)
        try:
            if what == "broker":
                broker.restart()
                victim = f"RabbitMQ node {broker.node}"
            else:
                victim = cluster.kill(what)
        except Exception as error:
            event.failure = repr(error)[:2000]
            victim = what
        event.took = time.monotonic() - started - event.second
        done.append(event)
        requests = sum(client.tally.requests for client in clients)
        progress(
            f"{event.second:4.0f} s: {'restarted' if what == 'broker' else 'killed'} {victim}"
            + (f"; FAILED: {event.failure}" if event.failure else f", back in {event.took:.1f} s")
            + f"; {requests:,} requests so far"
        )


# The run


@dataclass
class Outcome:
    seconds: int
    tally: soak.Tally
    load_requests: int
    events: list
    planned: list
    deaths: list
    problems: list
    database: str
    broker: str
    logged: Counter
    logs: Path | None = None


def drive(cluster, broker, seconds):
    run_tag = "c" + os.urandom(3).hex()
    known_ids = deque(maxlen=CLIENTS * soak.USERS_PER_CLIENT[1])
    clients = [ChaosClient(number, cluster.ports, run_tag, known_ids) for number in range(CLIENTS)]
    started = time.monotonic()
    load_until = started + seconds
    stopping, stop_chaos, events = threading.Event(), threading.Event(), []
    planned = schedule(seconds)
    chaos = [
        threading.Thread(
            target=run_schedule,
            args=([e for e in planned if e[1] == kind], cluster, broker, started, stop_chaos)
            + (events, clients),
        )
        for kind in KINDS
    ]
    for thread in chaos:
        thread.start()
    pool = ThreadPoolExecutor(CLIENTS)
    try:
        runs = [
            pool.submit(client.run, load_until, load_until + REPORT_DEADLINE, stopping)
            for client in clients
        ]
        time.sleep(max(0, load_until - time.monotonic()))
        load_requests = sum(client.tally.requests for client in clients)
        stop_chaos.set()  # events not begun by now are skipped
        for thread in chaos:  # a restart under way ends first: the reports need them all
            thread.join()
        progress("load over; waiting for the PDFs still pending, then deleting the users")
        for run in runs:
            run.result()
    finally:
        stopping.set()
        stop_chaos.set()
        pool.shutdown()
        for thread in chaos:
            thread.join()
    tally = soak.Tally()
    for client in clients:
        tally.merge(client.tally)
    return tally, load_requests, events


def run_chaos(seconds, admin_url):
    queue = f"chaos-{os.getpid()}"
    with ExitStack() as cleanup:
        database = testing.ScratchPostgres(admin_url)
        cleanup.callback(database.drop)
        broker = PrivateRabbitMQ()
        cleanup.callback(broker.close)
        broker.first_start()
        progress(f"RabbitMQ node {broker.node} up on port {broker.port}")
        cluster = Cluster(database.url, broker.url, queue)
        cleanup.callback(cluster.stop)
        cluster.start()
        progress(
            f"servers on ports {', '.join(map(str, cluster.ports))}, {WORKERS} workers on queue "
            f"{queue}, database {database.name}; {CLIENTS} clients for {seconds} s"
        )
        tally, load_requests, events = drive(cluster, broker, seconds)
        outcome = Outcome(
            seconds,
            tally,
            load_requests,
            events,
            schedule(seconds),
            cluster.deaths(),
            cluster.problems(),
            f"PostgreSQL, database {database.name} on {database.admin.url.host}",
            f"RabbitMQ node {broker.node}",
            cluster.logged(),
        )
        if not passed(outcome):
            outcome.logs = cluster.keep_logs()
    progress("processes and RabbitMQ node stopped, database dropped, folders removed")
    return outcome


# The record


def violations(outcome):
    """(what, count) of each check; a count above 0 fails the run."""
    tally, reports = outcome.tally, outcome.tally.reports
    kinds = {event.what for event in outcome.events if not event.failure}
    ended = reports["produced"] + reports["failed"] + reports["user deleted"]
    undocumented = reports["503 without Retry-After"] + sum(
        count
        for (_, status), count in tally.answers.items()
        if isinstance(status, int) and status >= 500 and status != 503
    )
    return [
        ("reports answered 202 and never delivered", reports["requested"] - ended),
        ("reports that failed (409)", reports["failed"]),
        ("PDFs of another user, or older stats than their request's", reports["wrong state"]),
        ("PDFs older than one served before", reports["older"]),
        ("undocumented 5xx (not a 503 with Retry-After)", undocumented),
        (f"requests with no answer (or still 503) after {RETRY_FOR} s", reports["gave up"]),
        ("answers the contract does not allow here, or none (listed below)", len(tally.unexpected)),
        ("processes dead though not killed", len(outcome.deaths)),
        ("kills or restarts that failed", sum(1 for e in outcome.events if e.failure)),
        ("kinds of fault that never came (worker, server, RabbitMQ)", len(KINDS) - len(kinds)),
    ]


def passed(outcome):
    return all(count == 0 for _, count in violations(outcome))


def chaos_section(outcome):
    section = Section(f"Chaos run: {outcome.seconds} s")
    tally, reports = outcome.tally, outcome.tally.reports
    answers = Counter()
    for (_, status), count in tally.answers.items():
        answers[status] += count
    section.note(
        f"`./run.sh soak --chaos {outcome.seconds}`: two servers and two workers on "
        f"{outcome.database} and a {outcome.broker} of the run's own, under the soak's mixed "
        f"load from {CLIENTS} clients (half on each server; weights "
        + ", ".join(f"{name} {weight}" for name, weight in WEIGHTS.items())
        + f"). A worker killed (SIGKILL) and started again every {WORKER_KILL_EVERY} s, a "
        f"server every {SERVER_KILL_EVERY} s (in turn), RabbitMQ stopped and started again "
        f"once, at {BROKER_RESTART_AT:.0%} of the run. A request with no answer goes again "
        f"to the other server, one answered 503 with Retry-After again after it, for up to "
        f"{RETRY_FOR} s; the PDFs requested had {REPORT_DEADLINE} s after the load to come."
    )
    names = {"worker": "worker killed", "server": "server killed", "broker": "RabbitMQ restarted"}
    rows = []
    for kind in KINDS:
        done = [event.took for event in outcome.events if event.what == kind and not event.failure]
        planned = sum(1 for _, what in outcome.planned if what == kind)
        back = f"{statistics.median(done):.1f}, {max(done):.1f}" if done else ""
        rows.append([names[kind], planned, len(done), back])
    section.table(["fault", "scheduled", "done", "back in (s): median, slowest"], rows)
    if len(outcome.events) < len(outcome.planned):
        section.note(
            "Faults not begun by the load's end (the restarts before them were slow) are skipped."
        )
    section.table(
        ["requests", "answered", "503 + Retry-After", "cut (sent again)", "refused (sent again)"],
        [
            [
                f"{tally.requests:,}",
                f"{tally.requests - answers[CUT] - answers[REFUSED]:,}",
                f"{answers[503]:,}",
                f"{answers[CUT]:,}",
                f"{answers[REFUSED]:,}",
            ]
        ],
    )
    section.table(
        ["reports requested (202)", "delivered (200 PDF)", "user deleted (404)", "PDFs read"],
        [[reports["requested"], reports["produced"], reports["user deleted"], reports["read"]]],
    )
    section.table(
        ["the logs of the servers and workers", "count"],
        [[what, outcome.logged[what]] for what in LOGGED],
    )
    section.table(
        ["check", "count", "target"],
        [[what, count, section.target(count == 0, "0")] for what, count in violations(outcome)],
    )
    for event in outcome.events:
        if event.failure:
            section.note(f"At {event.second:.0f} s the {event.what} failed: {event.failure}")
    if tally.unexpected:
        section.note("The first answers the contract does not allow:")
        section.lines += ["", *(f"    {line}" for line in tally.unexpected[:15]), ""]
    for name, code in outcome.deaths:
        section.note(f"{name} exited with {code}, though not killed.")
    if outcome.problems:
        section.note(f"The processes logged {len(outcome.problems)} problem line(s); the first:")
        section.lines += ["", *(f"    {line}" for line in outcome.problems[:15]), ""]
    if outcome.logs:
        section.note(f"Every process's log is kept in {outcome.logs}.")
    return section


def postgres_answers(url):
    from sqlalchemy import create_engine

    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()


def main(parser, seconds):
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    if seconds < MINIMUM_SECONDS:
        parser.error(f"SECONDS must be at least {MINIMUM_SECONDS} with --chaos")
    # On SIGTERM, unwind like on Ctrl-C: every process started is stopped, the rest removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_POSTGRES
    if not admin_url.startswith("postgresql"):
        parser.error("--chaos runs on PostgreSQL: DATABASE_URL must be a postgresql+psycopg:// URL")
    if not postgres_answers(admin_url):
        sys.exit(f"PostgreSQL does not answer at {admin_url}: the chaos run needs it.")
    outcome = run_chaos(seconds, admin_url)
    section = chaos_section(outcome)
    print(section.markdown(), flush=True)
    ok = passed(outcome)
    verdict = "passed" if ok else "FAILED"
    print(f"Chaos run {verdict}: {section.passed} checks met, {section.failed} missed.")
    return 0 if ok else 1
