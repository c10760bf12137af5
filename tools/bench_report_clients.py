"""The reports section's clients: how a report is asked for and waited for, and timed.

A gentle client (POST, then GET every POLL_INTERVAL until 200), one by one and
in a burst; the polled burst (POLLERS threads deaf to Retry-After); the waiting
burst and one waiting client at a time (Prefer: wait, following Retry-After);
and Reader, a thread reading one user beside a burst. bench_reports.py runs
them and writes their tables.
"""

import http.client
import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench_proc import cpu_since, cpu_time_counters
from bench_record import percentile
from bench_setup import Client

POLL_INTERVAL = 0.005  # between GETs of a pending report: tight, yet not starving the worker
POLLERS = 8  # client threads polling a burst's pending reports, round-robin
POLL_GRID = 0.020  # each poller's GETs, ignoring Retry-After
READ_INTERVAL = 0.010  # GET /users/{id} beside a burst
WAIT = 10  # Prefer: wait=N, the most CONTRACT.md allows
GIVE_UP = 60  # seconds after the first POST: a report not delivered by then is lost


def post_report(client, user):
    client.expect(202, "POST", f"/users/{user.id}/pdf", token=user.token)


def wait_for_report(client, user, interval=POLL_INTERVAL, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, data = client.request("GET", f"/users/{user.id}/pdf", token=user.token)
        if status == 200:
            return data
        if status != 202:
            raise RuntimeError(f"GET /users/{user.id}/pdf: {status} {data[:300]!r}")
        time.sleep(interval)
    raise RuntimeError(f"no report for user {user.id} after {timeout}s")


def reports_in_burst(client, users, interval=POLL_INTERVAL):
    """POST a report for every user, then wait for all: PDFs per second, and
    how busy all the machine's cores were meanwhile (server, broker, workers
    and this client share them)."""
    counters = cpu_time_counters()
    start = time.perf_counter()
    for user in users:
        post_report(client, user)
    for user in users:  # jobs finish about in order: the later ones are mostly ready
        wait_for_report(client, user, interval)
    seconds = time.perf_counter() - start
    cpu = cpu_since(counters)
    return len(users) / seconds, None if cpu is None else cpu[0] / cpu[1]


def reports_one_by_one(client, users):
    """Seconds from POST to PDF, for each user in turn."""
    durations = []
    for user in users:
        start = time.perf_counter()
        post_report(client, user)
        wait_for_report(client, user)
        durations.append(time.perf_counter() - start)
    return durations


def is_pdf(status, data):
    return status == 200 and data.startswith(b"%PDF")


def next_tick(tick, interval):
    """The grid point after tick that is still to come: a late client skips
    the points it missed instead of catching up in a rush."""
    tick += interval
    now = time.perf_counter()
    if tick < now:
        tick += math.ceil((now - tick) / interval) * interval
    return tick


def burst_counters(service):
    """The machine's CPU counters, and the CPU time the service's processes used so far."""
    return cpu_time_counters(), service.cpu_seconds()


class Reader:
    """GET /users/{id} every READ_INTERVAL, in a thread, beside a burst: its latencies."""

    def __init__(self, port, user_id):
        self._client = Client(port)
        self._path = f"/users/{user_id}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self.latencies, self.failures = [], 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _read(self):
        tick = time.perf_counter()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                status, _ = self._client.request("GET", self._path)
                self.latencies.append(time.perf_counter() - start)
                self.failures += status != 200
            except (OSError, http.client.HTTPException):
                self.failures += 1
                self._client.close()  # the next request connects again
            tick = next_tick(tick, READ_INTERVAL)
            self._stop.wait(max(0, tick - time.perf_counter()))


@dataclass
class BurstResult:
    pdfs_per_second: float  # delivered / seconds from the first POST to the last PDF
    seconds: list  # POST to PDF, of each report delivered
    lost: int  # not delivered within GIVE_UP, or answered with an error
    report_gets: int  # GET /users/{id}/pdf sent
    read_latencies: list  # GET /users/{id} beside the burst, seconds
    read_failures: int
    cpu_seconds: float | None  # busy CPU time of all cores from the first POST to the last PDF
    service_cpu_seconds: float  # of which the server, its children and the workers used
    odd_answers: Counter  # answers other than a PDF and a 202
    first_get_pdfs: int = 0  # waiting: PDFs that came from the GET right after the POST
    at_once_202: int = 0  # waiting: 202s without Preference-Applied (beyond MAX_WAITING)
    waited_202: int = 0  # waiting: 202s after waiting WAIT seconds
    retry_afters: Counter = field(default_factory=Counter)  # waiting: seconds, how often

    def ms(self, fraction):
        return percentile(self.seconds, fraction) * 1000 if self.seconds else math.inf

    def read_p99_ms(self):
        return percentile(self.read_latencies, 0.99) * 1000 if self.read_latencies else math.nan

    def cpu_ms_per_pdf(self):
        if self.cpu_seconds is None or not self.seconds:
            return None
        return self.cpu_seconds * 1000 / len(self.seconds)

    def service_cpu_ms_per_pdf(self):
        return self.service_cpu_seconds * 1000 / len(self.seconds) if self.seconds else None


def burst_result(service, posted, delivered, gets, reader, before, odd, **waiting):
    """posted and delivered: perf_counter times by user id; before: burst_counters()."""
    first, last = min(posted.values()), max(delivered.values(), default=math.inf)
    counters, service_cpu = before
    cpu = cpu_since(counters)
    return BurstResult(
        pdfs_per_second=len(delivered) / (last - first) if delivered else 0,
        seconds=[delivered[user] - posted[user] for user in delivered],
        lost=len(posted) - len(delivered),
        report_gets=gets,
        read_latencies=reader.latencies,
        read_failures=reader.failures,
        cpu_seconds=None if cpu is None else cpu[0],
        service_cpu_seconds=service.cpu_seconds() - service_cpu,
        odd_answers=odd,
        **waiting,
    )


class PendingReports:
    """A burst's reports not delivered yet, handed to the pollers round-robin."""

    def __init__(self, users):
        self._lock = threading.Lock()
        self._queue = deque(users)
        self.delivered = {}  # user id: perf_counter when its PDF came
        self.odd_answers = Counter()
        self.gets = 0

    def next(self):
        with self._lock:
            if not self._queue:
                return None
            user = self._queue[0]
            self._queue.rotate(-1)
            return user

    def answered(self, user, status, data):
        now = time.perf_counter()
        with self._lock:
            self.gets += 1
            if status == 202:
                return
            if is_pdf(status, data):
                self.delivered.setdefault(user.id, now)
            else:
                self.odd_answers[status] += 1  # an error: the report is lost
            if user in self._queue:
                self._queue.remove(user)


def _poller(port, pending, start, deadline):
    client = Client(port)
    tick = start
    try:
        while time.perf_counter() < deadline:
            time.sleep(max(0, tick - time.perf_counter()))
            user = pending.next()
            if user is None:
                return
            try:
                status, _, data = client.exchange("GET", f"/users/{user.id}/pdf", token=user.token)
            except (OSError, http.client.HTTPException) as error:
                status, data = type(error).__name__, b""
                client.close()
            pending.answered(user, status, data)
            tick = next_tick(tick, POLL_GRID)
    finally:
        client.close()


def polled_burst(service, users, reader_id):
    """POST a report for every user, then POLLERS threads GET the pending ones
    round-robin every POLL_GRID, deaf to Retry-After, until every PDF came."""
    port, pending, posted = service.port, PendingReports(users), {}
    client = Client(port)
    try:
        with Reader(port, reader_id) as reader:
            before = burst_counters(service)
            for user in users:
                posted[user.id] = time.perf_counter()
                post_report(client, user)
            start = time.perf_counter()
            deadline = min(posted.values()) + GIVE_UP
            with ThreadPoolExecutor(POLLERS) as pollers:
                # Each on the grid, a slice of it after the one before: not all at once.
                runs = [
                    pollers.submit(
                        _poller, port, pending, start + number * POLL_GRID / POLLERS, deadline
                    )
                    for number in range(POLLERS)
                ]
                for run in runs:
                    run.result()
            return burst_result(
                service,
                posted,
                pending.delivered,
                pending.gets,
                reader,
                before,
                pending.odd_answers,
            )
    finally:
        client.close()


@dataclass
class Waited:
    """How one client's report came with Prefer: wait (GETs that follow Retry-After)."""

    delivered: float | None = None  # perf_counter when its PDF came; None: lost
    gets: int = 0
    at_once_202: int = 0
    waited_202: int = 0
    retry_afters: Counter = field(default_factory=Counter)  # those of its 202s
    odd_answers: Counter = field(default_factory=Counter)


def fetch_waiting(client, user, deadline):
    """GET with Prefer: wait until the PDF comes; after a 202, sleep its Retry-After."""
    waited = Waited()
    while time.perf_counter() < deadline:
        status, headers, data = client.exchange(
            "GET", f"/users/{user.id}/pdf", token=user.token, headers={"Prefer": f"wait={WAIT}"}
        )
        waited.gets += 1
        if is_pdf(status, data):
            waited.delivered = time.perf_counter()
            break
        if status != 202:
            waited.odd_answers[status] += 1
            break
        if headers.get("Preference-Applied"):
            waited.waited_202 += 1
        else:
            waited.at_once_202 += 1
        retry_after = headers.get("Retry-After", "")
        if not retry_after.isdigit():
            waited.odd_answers["202 without a Retry-After in seconds"] += 1
        seconds = int(retry_after) if retry_after.isdigit() else 1
        waited.retry_afters[seconds] += 1
        time.sleep(seconds)
    return waited


def _waiting_client(port, user, barrier):
    client = Client(port)
    barrier.wait(timeout=60)
    posted = time.perf_counter()
    try:
        post_report(client, user)
        return posted, fetch_waiting(client, user, posted + GIVE_UP)
    except (OSError, http.client.HTTPException, RuntimeError) as error:
        return posted, Waited(odd_answers=Counter([type(error).__name__]))
    finally:
        client.close()


def waiting_burst(service, users, reader_id):
    """A client (thread) per user, all at once: each POSTs, then GETs with
    Prefer: wait right after, following Retry-After after a 202."""
    port, barrier = service.port, threading.Barrier(len(users) + 1)
    with Reader(port, reader_id) as reader, ThreadPoolExecutor(len(users)) as clients:
        runs = [clients.submit(_waiting_client, port, user, barrier) for user in users]
        before = burst_counters(service)
        barrier.wait(timeout=60)
        outcomes = {user.id: run.result() for user, run in zip(users, runs, strict=True)}
        results = [waited for _, waited in outcomes.values()]
        return burst_result(
            service,
            {user: posted for user, (posted, _) in outcomes.items()},
            {user: w.delivered for user, (_, w) in outcomes.items() if w.delivered is not None},
            sum(w.gets for w in results),
            reader,
            before,
            sum((w.odd_answers for w in results), Counter()),
            first_get_pdfs=sum(w.delivered is not None and w.gets == 1 for w in results),
            at_once_202=sum(w.at_once_202 for w in results),
            waited_202=sum(w.waited_202 for w in results),
            retry_afters=sum((w.retry_afters for w in results), Counter()),
        )


def waiting_one_by_one(client, users):
    """For each user in turn, POST then GET with Prefer: wait: seconds from POST
    to PDF, and how many PDFs that one GET brought."""
    durations, from_one_get = [], 0
    for user in users:
        start = time.perf_counter()
        post_report(client, user)
        waited = fetch_waiting(client, user, start + GIVE_UP)
        if waited.delivered is None:
            raise RuntimeError(f"no report for user {user.id}: {dict(waited.odd_answers)}")
        durations.append(waited.delivered - start)
        from_one_get += waited.gets == 1
    return durations, from_one_get
