"""The benchmark: `./run.sh bench [--quick] [--only SECTION]`.

Every figure comes from real processes started from this checkout, each on a
data folder of its own in a temporary directory:

  api      wrk (or, without wrk, a stdlib client) on GET /users/{id},
           GET /users?limit=100 and PATCH /users/{id}/stats, interleaved with
           the same load on a bare Bottle + Waitress app that serves constant
           data of the same shape: the framework's ceiling.
  reports  report.render against a naive matplotlib page, in this process;
           then POST-to-PDF over HTTP, with the embedded worker and with one
           and two worker processes on RabbitMQ: a gentle client one user
           after another and in a burst; a polled burst (8 clients polling,
           deaf to Retry-After); a waiting burst (Prefer: wait) and one
           waiting client at a time.
  growth   read latency with 1,000 and with 100,000 users in the database.
  memory   peak RSS of the servers, and a worker's RSS after 50 and 200 jobs.
  abuse    on the service as deployed (its abuse limits, production scrypt):
           reads while one client floods sign-ups or logins, and a new
           client's wait beside 300 and 2,000 half-open connections.

It prints markdown tables, each figure beside its target; a full run
also writes them to BENCHMARKS.md with the machine, the command and the date.
"""

import argparse
import http.client
import io
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from itertools import count
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent  # the service, one folder up
# --seed-users imports the service's own modules.
sys.path.insert(0, str(PROJECT))
PYTHON = sys.executable
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
PACKAGES = ("bottle", "waitress", "SQLAlchemy", "PyJWT", "kombu", "matplotlib")
SECTIONS = ("api", "reports", "growth", "memory", "abuse")

# Sign-ups only prepare the benchmark (no measured request hashes a password),
# and at the production cost (2**14) each takes 0.3 s: hundreds of them would
# take minutes. Stated in BENCHMARKS.md.
SCRYPT_N = 1024
PRODUCTION_SCRYPT_N = 2**14  # config.py's default; the "Under abuse" section's
# The set-up's sign-ups and logins outrun the defaults; "Under abuse" measures those, as deployed.
RELAXED_LIMITS = {"SIGNUP_RATE": "1000000", "LOGIN_RATE": "1000000", "HASH_CONCURRENCY": "8"}
WEB_THREADS = 8  # the service's default, and the ceiling's
LOAD_THREADS, LOAD_CONNECTIONS = 2, 32
POLL_INTERVAL = 0.005  # between GETs of a pending report: tight, yet not starving the worker


@dataclass(frozen=True)
class Settings:
    load_seconds: int  # each wrk run
    repetitions: int  # interleaved: service, ceiling, service, ceiling...
    render_samples: int  # report.render against the naive render, in this process
    sequential_reports: int  # POST-to-PDF timed one user after another
    burst_reports: int  # POSTed at once, then PDFs per second
    growth_sizes: tuple  # users in the database
    memory_jobs: tuple  # a worker's RSS is read after this many jobs, then after this many
    memory_load_seconds: int  # each API load run before reading the servers' peak RSS


FULL = Settings(
    load_seconds=10,
    repetitions=3,
    render_samples=30,
    sequential_reports=20,
    burst_reports=50,
    growth_sizes=(1_000, 100_000),
    memory_jobs=(50, 200),
    memory_load_seconds=5,
)
QUICK = Settings(
    load_seconds=2,
    repetitions=1,
    render_samples=5,
    sequential_reports=5,
    burst_reports=10,
    growth_sizes=(1_000, 10_000),
    memory_jobs=(10, 40),
    memory_load_seconds=1,
)


def progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# Small helpers


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def percentile(values, fraction):
    """Linear interpolation between the closest ranks, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def proc_status_mib(pid, field_name):
    """A field of /proc/<pid>/status in MiB: VmRSS is now, VmHWM the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024  # given in kB
    raise RuntimeError(f"no {field_name} for process {pid}")


def child_pids(pid):
    """The process's children (of any of its threads); None if /proc cannot tell."""
    try:
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return None


def children_peak_mib(pid):
    """The children's VmHWM summed (a server may render in a child); None if /proc cannot tell."""
    children = child_pids(pid)
    if children is None:
        return None
    total = 0
    for child in children:
        try:
            total += proc_status_mib(child, "VmHWM")
        except OSError:
            pass  # gone meanwhile
    return total


def children_peaks(pid):
    """(what each child is, its VmHWM in MiB), for each child of the process."""
    peaks = []
    for child in child_pids(pid) or []:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            peak = proc_status_mib(child, "VmHWM")
            if "resource_tracker" in command:
                kind = "multiprocessing's resource tracker"
            elif maps_matplotlib(child):
                kind = "render child (matplotlib mapped)"
            else:
                kind = f"a child: {command[:60]}"
        except OSError:
            continue  # gone meanwhile
        peaks.append((kind, peak))
    return peaks


def cpu_seconds(pid):
    """CPU time used so far by the process and its living children."""
    total = 0
    for each in [pid, *(child_pids(pid) or [])]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid, timeout=60):
    """Until the process and its children use under a tenth of a core: a server's
    start-up goes on after it answers (its render child loads matplotlib)."""

    def idle():
        before = cpu_seconds(pid)
        time.sleep(0.5)
        return cpu_seconds(pid) - before < 0.05

    wait_until(idle, timeout, f"process {pid} to be idle", interval=0)


def maps_matplotlib(pid):
    """Whether any file of matplotlib (its C extensions, above all) is mapped in the process."""
    return any("matplotlib" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def sample_user_fields(number):
    return {
        "username": f"player{number}",
        "email": f"player{number}@example.com",
        "gender": ("female", "male")[number % 2],
    }


def sample_stats(number):
    return {
        "victory_count": 10 + number % 40,
        "loss_count": 5 + number % 25,
        "session_count": 15 + number % 60,
        "total_time": 3_600 + 97 * number,
    }


def user_json(number):
    """A user as the service's GET /users/{id} answers it."""
    path = f"/users/{number}"
    return {
        "id": number,
        **sample_user_fields(number),
        "profile_pic": None,
        "self": path,
        "stats": path + "/stats",
        "pdf": path + "/pdf",
    }


# Output: markdown tables, each target with a pass or FAIL mark


@dataclass
class Section:
    title: str
    lines: list = field(default_factory=list)
    passed: int = 0
    failed: int = 0

    def table(self, header, rows):
        widths = [
            max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)
        ]

        def line(cells):
            return (
                "| "
                + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
                + " |"
            )

        self.lines += [
            "",
            line(header),
            line(["-" * w for w in widths]),
            *(line(row) for row in rows),
            "",
        ]

    def note(self, text):
        self.lines.append(text)

    def target(self, passed, description):
        """A table cell: the target and whether the figure meets it."""
        if passed:
            self.passed += 1
        else:
            self.failed += 1
        return f"{description}: {'pass' if passed else '**FAIL**'}"

    def markdown(self):
        text = "\n".join([f"## {self.title}", "", *self.lines]).strip()
        return re.sub(r"\n{3,}", "\n\n", text) + "\n"


def repetitions_text(settings):
    if settings.repetitions == 1:
        return "one repetition"
    return f"{settings.repetitions} interleaved repetitions: median (min–max)"


def spread(values, digits=0):
    """The median, with min and max when there are several values."""

    def show(value):
        return f"{value:,.{digits}f}"

    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


# HTTP: a keep-alive client, for setting up and for timing reports


class Client:
    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method, path, body=None, token=None):
        status, _, data = self.exchange(method, path, body, token)
        return status, data

    def exchange(self, method, path, body=None, token=None, headers=None):
        """(status, headers, body) of one request; headers: more request headers."""
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closed the idle keep-alive connection: reconnect once.
            self.connection.close()
            self.connection.request(method, path, body=data, headers=headers)
            response = self.connection.getresponse()
        return response.status, response.headers, response.read()

    def expect(self, status, method, path, body=None, token=None):
        answer, data = self.request(method, path, body, token)
        if answer != status:
            raise RuntimeError(f"{method} {path}: expected {status}, got {answer}: {data[:300]!r}")
        return data

    def close(self):
        self.connection.close()


@dataclass(frozen=True)
class User:
    id: int
    token: str


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


def cpu_time_counters():
    """(busy, all) CPU time of the whole machine so far, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            times = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = times[3] + times[4]  # idle and iowait
    return sum(times) - idle, sum(times)


def cpu_busy_since(counters):
    """The share of the machine's CPU time that was busy since counters; None if unknown."""
    now = cpu_time_counters()
    if counters is None or now is None or now[1] == counters[1]:
        return None
    return (now[0] - counters[0]) / (now[1] - counters[1])


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
    return len(users) / (time.perf_counter() - start), cpu_busy_since(counters)


def reports_one_by_one(client, users):
    """Seconds from POST to PDF, for each user in turn."""
    durations = []
    for user in users:
        start = time.perf_counter()
        post_report(client, user)
        wait_for_report(client, user)
        durations.append(time.perf_counter() - start)
    return durations


# Reports under real clients: pollers deaf to Retry-After, and clients that wait

POLLERS = 8  # client threads polling a burst's pending reports, round-robin
POLL_GRID = 0.020  # each poller's GETs, ignoring Retry-After
READ_INTERVAL = 0.010  # GET /users/{id} beside a burst
WAIT = 10  # Prefer: wait=N, the most CONTRACT.md allows
GIVE_UP = 60  # seconds after the first POST: a report not delivered by then is lost


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


def cpu_busy_seconds_since(counters):
    """Busy CPU-seconds of all the machine's cores since counters; None if unknown."""
    now = cpu_time_counters()
    if counters is None or now is None:
        return None
    return (now[0] - counters[0]) / os.sysconf("SC_CLK_TCK")


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
    return BurstResult(
        pdfs_per_second=len(delivered) / (last - first) if delivered else 0,
        seconds=[delivered[user] - posted[user] for user in delivered],
        lost=len(posted) - len(delivered),
        report_gets=gets,
        read_latencies=reader.latencies,
        read_failures=reader.failures,
        cpu_seconds=cpu_busy_seconds_since(counters),
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


# Processes: the service's server and workers, and the ceiling


class Process:
    def __init__(self, args, env, log_path):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                args, env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self.popen.pid
        self.stopped = False

    def running(self):
        return self.popen.poll() is None

    def stop(self):
        self.stopped = True
        if self.running():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log(self):
        return self.log_path.read_text(errors="replace")


def answers(port, path):
    client = Client(port)
    try:
        return client.request("GET", path)[0] == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        client.close()


def wait_for_http(process, port, path, name):
    def ready():
        if not process.running():
            raise RuntimeError(f"{name} exited:\n{process.log()[-3000:]}")
        # Running still once it answers: not some other process that took the port first.
        return answers(port, path) and process.running()

    wait_until(ready, timeout=60, what=f"{name} on port {port}")


# Variables of config.py that bench sets itself or leaves at their defaults.
SERVICE_VARIABLES = (
    "HOST",
    "PORT",
    "WEB_THREADS",
    "DATA_DIR",
    "DATABASE_URL",
    "BROKER_URL",
    "REPORT_QUEUE",
    "EMBEDDED_WORKER",
    "JWT_SECRET",
    "JWT_TTL",
    "CORS_ORIGINS",
    "SCRYPT_N",
    "HASH_CONCURRENCY",
    "SIGNUP_RATE",
    "LOGIN_RATE",
    "HEADER_TIMEOUT",
    "TRUSTED_PROXIES",
)


class Service:
    """server.py, and any worker.py processes, on a data folder of their own.

    production: the production scrypt cost and the service's own abuse limits,
    instead of the benchmark's cheap hashes and relaxed limits.
    """

    def __init__(self, folder, name, broker_url="memory://", production=False):
        self.name = name
        self.dir = folder / name
        self.dir.mkdir()
        self.port = free_port()
        self.on_rabbitmq = broker_url.startswith("amqp")
        # A queue (and exchange) of this run alone, deleted by stop().
        self.queue_name = f"bench-{name}-{os.getpid()}-{int(time.time())}"
        environment = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
        self.env = {
            **environment,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(self.dir),
            "DATABASE_URL": f"sqlite:///{self.dir}/app.db",
            "BROKER_URL": broker_url,
            "REPORT_QUEUE": self.queue_name,
            "JWT_SECRET": "bench-" + os.urandom(32).hex(),
            "SCRYPT_N": str(PRODUCTION_SCRYPT_N if production else SCRYPT_N),
            **({} if production else RELAXED_LIMITS),
            "PYTHONUNBUFFERED": "1",
        }
        self.server = None
        self.workers = []
        self._processes = []
        self._numbers = count(1)
        self._client = None

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        if error_type is not None and issubclass(error_type, Exception):  # not on Ctrl-C
            for process in self._processes:
                progress(
                    f"the end of {self.name}/{process.log_path.name}:\n{process.log()[-2000:]}"
                )
        self.stop()

    def _start(self, script):
        log_path = self.dir / f"{Path(script).stem}-{len(self._processes) + 1}.log"
        process = Process([PYTHON, script], self.env, log_path)
        self._processes.append(process)
        return process

    def start(self):
        self.server = self._start(PROJECT / "server.py")
        wait_for_http(self.server, self.port, "/healthz", f"the {self.name} server")
        self._client = Client(self.port)

    def start_worker(self):
        worker = self._start(PROJECT / "worker.py")
        self.workers.append(worker)
        self.wait_for_consumers(len(self.workers))
        return worker

    def stop_worker(self, worker):
        worker.stop()
        self.workers.remove(worker)
        self.wait_for_consumers(len(self.workers))

    def wait_for_consumers(self, number):
        wait_until(
            lambda: self._consumers() == number,
            timeout=60,
            interval=0.1,
            what=f"{number} worker(s) consuming {self.queue_name}",
        )

    def _consumers(self):
        from kombu import Connection

        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            try:
                queue = self._queue(connection.default_channel)
                return queue.queue_declare(passive=True).consumer_count
            except connection.channel_errors:  # no queue: no worker has declared it yet
                return 0

    def _queue(self, channel):
        from kombu import Exchange, Queue

        exchange = Exchange(self.queue_name, type="direct", durable=True)
        return Queue(self.queue_name, exchange, routing_key="report", durable=True)(channel)

    def seed_users(self, number):
        """number users straight into a fresh database (see seed_database); seconds taken."""
        start = time.perf_counter()
        subprocess.run(
            [PYTHON, __file__, "--seed-users", str(number)], env=self.env, cwd=PROJECT, check=True
        )
        return time.perf_counter() - start

    def sign_up(self, number):
        """number new users through the API, each with some stats."""
        users = []
        for _ in range(number):
            n = next(self._numbers)
            answer = json.loads(
                self._client.expect(
                    201, "POST", "/users", {**sample_user_fields(n), "password": "bench-password"}
                )
            )
            user = User(answer["user"]["id"], answer["token"])
            self._client.expect(
                200, "PATCH", f"/users/{user.id}/stats", sample_stats(n), user.token
            )
            users.append(user)
        return users

    def cpu_seconds(self):
        """CPU time used so far by the server (and its children) and the running workers."""
        return sum(cpu_seconds(process.pid) for process in [self.server, *self.workers])

    def check_running(self):
        for process in self._processes:
            if not process.stopped and not process.running():
                raise RuntimeError(
                    f"{process.log_path.name} of {self.name} died:\n{process.log()[-3000:]}"
                )

    def problems(self):
        """The log lines that say something went wrong, with which process said them."""
        found = []
        for process in self._processes:
            in_traceback = False
            for line in process.log().splitlines():
                # A traceback's last line, unindented, says what was raised.
                ends_traceback = in_traceback and line[:1] not in ("", " ")
                if ends_traceback or re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line):
                    found.append(f"{self.name}/{process.log_path.stem}: {line.strip()[:240]}")
                if "Traceback (most recent call last)" in line:
                    in_traceback = True
                elif ends_traceback:
                    in_traceback = False
            if process.popen.returncode not in (None, 0, -signal.SIGTERM):
                found.append(
                    f"{self.name}/{process.log_path.stem}: exited with {process.popen.returncode}"
                )
        return found

    def stop(self):
        if self._client:
            self._client.close()
        for process in reversed(self._processes):
            process.stop()
        if self.on_rabbitmq:
            self._delete_queue()

    def _delete_queue(self):
        from kombu import Connection

        try:
            with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
                queue = self._queue(connection.default_channel)
                queue.delete()
                queue.exchange.delete()
        except Exception as error:
            progress(f"could not delete the queue {self.queue_name}: {error!r}")


def rabbitmq_version():
    """The version of the RabbitMQ at RABBITMQ_URL, or None when it does not answer."""
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)
            properties = connection.connection.server_properties
            return str(properties.get("version", "unknown version"))
    except Exception:
        return None


# The ceiling: the same routes on bare Bottle + Waitress, with constant data


def ceiling_app():
    import bottle

    app = bottle.Bottle()
    one_user = user_json(1)
    hundred_users = [user_json(n) for n in range(1, 101)]
    stats = dict(sorted(sample_stats(1).items()))

    @app.get("/users/<user_id:int>")
    def get_user(user_id):
        bottle.response.content_type = "application/json"
        return json.dumps(one_user)

    @app.get("/users")
    def list_users():
        bottle.response.content_type = "application/json"
        return json.dumps(hundred_users)

    @app.route("/users/<user_id:int>/stats", method="PATCH")
    def update_stats(user_id):
        json.loads(bottle.request.body.read())
        bottle.response.content_type = "application/json"
        return json.dumps(stats)

    return app


def serve_ceiling(port):
    import waitress

    waitress.serve(ceiling_app(), host="127.0.0.1", port=port, threads=WEB_THREADS, ident="")


class Ceiling:
    def __init__(self, folder):
        self.port = free_port()
        self.process = Process(
            [PYTHON, __file__, "--ceiling", str(self.port)], os.environ, folder / "ceiling.log"
        )

    def __enter__(self):
        wait_for_http(self.process, self.port, "/users/1", "the ceiling app")
        return self

    def __exit__(self, *_):
        self.process.stop()


# Load: wrk, or a stdlib client with the same shape, and the same figures


@dataclass(frozen=True)
class Load:
    method: str
    path: str  # "{id}" in it: a random id from 1 to max_id, per request
    body: str | None = None  # "{n}" in it: a number new with each request
    token: str | None = None
    max_id: int = 1

    def headers(self):
        headers = {"Content-Type": "application/json"} if self.body else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def varies(self):
        return "{id}" in self.path or "{n}" in (self.body or "")

    def request(self, rng, n):
        path = self.path.replace("{id}", str(rng.randint(1, self.max_id)))
        return path, self.body.replace("{n}", str(n)).encode() if self.body else None


@dataclass
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # answers outside 2xx and 3xx
    socket_errors: int  # connect, read, write errors and timeouts


def lua_string(text):
    return json.dumps(text)  # ASCII only here: JSON's escapes are Lua's


def lua_template(text, max_id):
    """A Lua expression for a path or body with {id} and {n} in it."""
    pieces = {"{id}": f"math.random(1, {max_id})", "{n}": "n"}
    return " .. ".join(
        pieces.get(part) or lua_string(part) for part in re.split(r"(\{id\}|\{n\})", text) if part
    )


def wrk_script(load):
    lines = [f"wrk.method = {lua_string(load.method)}"]
    lines += [
        f"wrk.headers[{lua_string(name)}] = {lua_string(value)}"
        for name, value in load.headers().items()
    ]
    if not load.varies():
        if load.body:
            lines.append(f"wrk.body = {lua_string(load.body)}")
        return "\n".join(lines) + "\n"
    body = lua_template(load.body, load.max_id) if load.body else "nil"
    return (
        "\n".join(
            lines
            + [
                "local threads = 0",
                "function setup(thread)",
                "  threads = threads + 1",
                "  thread:set('number', threads)",
                "end",
                "function init(args)",  # each thread its own random ids and its own body numbers
                "  math.randomseed(number)",
                "  n = number * 1000000",
                "end",
                "function request()",
                "  n = n + 1",
                f"  return wrk.format(nil, {lua_template(load.path, load.max_id)}, nil, {body})",
                "end",
            ]
        )
        + "\n"
    )


def parse_wrk(output):
    def number(pattern, default=None):
        match = re.search(pattern, output)
        if match is None and default is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{output}")
        return match.groups() if match else default

    def milliseconds(percent):
        value, unit = number(rf"\n\s*{percent}%\s+([\d.]+)(us|ms|s)\b")
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    socket_errors = number(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", default=("0",)
    )
    return LoadResult(
        requests_per_second=float(number(r"Requests/sec:\s+([\d.]+)")[0]),
        p50_ms=milliseconds(50),
        p99_ms=milliseconds(99),
        non_2xx=int(number(r"Non-2xx or 3xx responses: (\d+)", ("0",))[0]),
        socket_errors=sum(int(n) for n in socket_errors),
    )


def wrk_load(port, load, seconds, folder, connections=LOAD_CONNECTIONS):
    script = folder / "load.lua"
    script.write_text(wrk_script(load))
    path = "/" if load.varies() else load.path
    # A 10 s timeout, not wrk's 2 s: slow answers belong in p99, not among the errors.
    command = [
        "wrk",
        f"-t{LOAD_THREADS}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def python_load(port, load, seconds, folder, connections=LOAD_CONNECTIONS):
    """wrk's figures from the standard library: processes of keep-alive connections in threads."""
    per_process = connections // LOAD_THREADS
    with ProcessPoolExecutor(LOAD_THREADS) as processes:
        parts = [
            processes.submit(_load_process, port, load, seconds, per_process, number)
            for number in range(LOAD_THREADS)
        ]
        parts = [part.result() for part in parts]
    latencies = [latency for part in parts for latency in part[0]]
    if not latencies:
        raise RuntimeError(f"no answer at all from port {port}")
    return LoadResult(
        requests_per_second=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        non_2xx=sum(part[1] for part in parts),
        socket_errors=sum(part[2] for part in parts),
    )


def _load_process(port, load, seconds, connections, process_number):
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(connections) as threads:
        parts = list(
            threads.map(
                lambda number: _load_connection(port, load, deadline, number),
                range(process_number * connections, (process_number + 1) * connections),
            )
        )
    return (
        [latency for part in parts for latency in part[0]],
        sum(part[1] for part in parts),
        sum(part[2] for part in parts),
    )


def _load_connection(port, load, deadline, number):
    rng = random.Random(number)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = load.headers()
    latencies, non_2xx, errors, n = [], 0, 0, number * 1_000_000
    while time.monotonic() < deadline:
        n += 1
        path, body = load.request(rng, n)
        start = time.perf_counter()
        try:
            connection.request(load.method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            continue
        latencies.append(time.perf_counter() - start)
        non_2xx += response.status >= 400
    connection.close()
    return latencies, non_2xx, errors


def api_loads(user):
    """The three routes of the API section: (name, load, least share of the ceiling)."""
    return [
        ("GET /users/{id}", Load("GET", f"/users/{user.id}"), 0.5),
        ("GET /users?limit=100", Load("GET", "/users?limit=100"), 0.3),
        # A new value each time: every PATCH is a real UPDATE, as a game's would be.
        (
            "PATCH /users/{id}/stats",
            Load("PATCH", f"/users/{user.id}/stats", '{"victory_count": {n}}', user.token),
            0.25,
        ),
    ]


# 1. API: the service against the ceiling


def measure_api(settings, folder, run_load):
    section = Section("API: the service against a bare Bottle + Waitress app (the ceiling)")
    results = {}
    with Service(folder, "api") as service, Ceiling(folder) as ceiling:
        service.start()
        users = service.sign_up(100)  # a full page for GET /users?limit=100
        routes = api_loads(users[0])
        for repetition in range(1, settings.repetitions + 1):
            for name, load, _ in routes:
                for app, port in (("service", service.port), ("ceiling", ceiling.port)):
                    result = run_load(port, load, settings.load_seconds, folder)
                    results.setdefault((name, app), []).append(result)
                    progress(
                        f"api {repetition}/{settings.repetitions} {name} {app}: "
                        f"{result.requests_per_second:,.0f} req/s, p99 {result.p99_ms:.1f} ms"
                    )
            service.check_running()
        problems = service.problems()

    rows = []
    for name, _, least_share in routes:
        service_runs, ceiling_runs = results[name, "service"], results[name, "ceiling"]
        share = statistics.median(r.requests_per_second for r in service_runs) / statistics.median(
            r.requests_per_second for r in ceiling_runs
        )
        p99 = statistics.median(r.p99_ms for r in service_runs)
        failures = sum(r.non_2xx + r.socket_errors for r in service_runs)
        targets = ", ".join(
            [
                section.target(share >= least_share, f"≥ {least_share}x"),
                section.target(p99 <= 50, "p99 ≤ 50 ms"),
                section.target(failures == 0, "no non-2xx"),
            ]
        )
        rows.append(api_row(name, "service", service_runs, f"{share:.2f}x", targets))
        rows.append(api_row(name, "ceiling", ceiling_runs, "", ""))
    section.note(
        f"{LOAD_THREADS} threads, {LOAD_CONNECTIONS} keep-alive connections, "
        f"{settings.load_seconds} s per run, {repetitions_text(settings)}."
    )
    section.table(
        [
            "route",
            "app",
            "req/s",
            "p50 ms",
            "p99 ms",
            "non-2xx / socket errors",
            "service / ceiling",
            "targets",
        ],
        rows,
    )
    add_problems(section, problems)
    return section


def api_row(name, app, runs, share, targets):
    return [
        name,
        app,
        spread([r.requests_per_second for r in runs]),
        spread([r.p50_ms for r in runs], 1),
        spread([r.p99_ms for r in runs], 1),
        failures(runs),
        share,
        targets,
    ]


def failures(runs):
    return f"{sum(r.non_2xx for r in runs)} / {sum(r.socket_errors for r in runs)}"


def add_problems(section, problems):
    if problems:
        section.note(f"The service logged {len(problems)} problem line(s); the first ones:")
        section.lines += ["", *(f"    {line}" for line in problems[:10]), ""]


# 2. Reports: the render, then POST-to-PDF end to end

SAMPLE_REPORT = {
    "username": "player1",
    "email": "player1@example.com",
    "gender": "female",
    "victory_count": 37,
    "loss_count": 21,
    "session_count": 58,
    "total_time": 98_765,
}
A4_INCHES = (8.27, 11.69)


def naive_render(data):
    """The page as matplotlib draws it with nothing tuned: the baseline."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=A4_INCHES)
    figure.text(
        0.1,
        0.95,
        "\n".join(
            [
                f"Game statistics of {data.username}",
                f"Email: {data.email}",
                f"Gender: {data.gender}",
                f"Sessions: {data.session_count}",
                f"Total time: {data.total_time} s",
            ]
        ),
        va="top",
        fontsize=14,
    )
    bars = figure.add_subplot(3, 1, 2)
    bars.bar(["Victories", "Losses"], [data.victory_count, data.loss_count])
    bars.set_title("Victories against losses")
    pie = figure.add_subplot(3, 1, 3)
    pie.pie(
        [data.victory_count, data.loss_count], labels=["Victories", "Losses"], autopct="%1.0f%%"
    )
    pie.set_title("Share of games won")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf")
    return buffer.getvalue()


def time_renders(samples):
    """Median milliseconds of report.render and of the naive render, and both PDFs."""
    import matplotlib

    import report  # sets its fonts in matplotlib's global settings, hence rc_context below

    data = report.ReportData(**SAMPLE_REPORT)

    def service():
        return report.render(data)

    def naive():
        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            return naive_render(data)

    service_ms, naive_ms = [], []
    for _ in range(3):  # warm-up: font loading and first-use imports
        service(), naive()
    for _ in range(samples):
        for render, times in ((service, service_ms), (naive, naive_ms)):
            start = time.perf_counter()
            render()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(service_ms), statistics.median(naive_ms), service(), naive()


def pdf_has_text(pdf, text):
    from pypdf import PdfReader

    return text in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


@dataclass
class FlowResults:
    p50_ms: list = field(default_factory=list)
    p95_ms: list = field(default_factory=list)
    pdfs_per_second: list = field(default_factory=list)
    cpu_busy: list = field(default_factory=list)  # share of all cores, during the bursts
    wait_one_p50_ms: list = field(default_factory=list)  # POST, then one Prefer: wait GET
    wait_one_p95_ms: list = field(default_factory=list)
    wait_one_from_get: list = field(default_factory=list)  # PDFs from that one GET
    polled: list = field(default_factory=list)  # BurstResult of each repetition
    waiting: list = field(default_factory=list)


def measure_reports(settings, folder, rabbitmq):
    section = Section("Reports: the render, and POST to PDF end to end")
    service_ms, naive_ms, service_pdf, naive_pdf = time_renders(settings.render_samples)
    progress(f"render: service {service_ms:.1f} ms, naive {naive_ms:.1f} ms")
    ratio = naive_ms / service_ms
    text_stays_text = pdf_has_text(service_pdf, SAMPLE_REPORT["username"])
    section.note(f"Render, in this process, median of {settings.render_samples} after a warm-up:")
    section.table(
        ["render", "ms", "PDF KiB", "text extractable", "naive / service", "target"],
        [
            [
                "report.render (the service)",
                f"{service_ms:.1f}",
                f"{len(service_pdf) / 1024:.1f}",
                "yes" if text_stays_text else "no",
                f"{ratio:.1f}x",
                section.target(ratio >= 4 and text_stays_text, "≥ 4x, text stays text"),
            ],
            [
                "naive matplotlib page",
                f"{naive_ms:.1f}",
                f"{len(naive_pdf) / 1024:.1f}",
                "yes" if pdf_has_text(naive_pdf, SAMPLE_REPORT["username"]) else "no",
                "",
                "",
            ],
        ],
    )

    setups = [("embedded worker", 0)] + (
        [("RabbitMQ, 1 worker", 1), ("RabbitMQ, 2 workers", 2)] if rabbitmq else []
    )
    results, problems = measure_report_flow(settings, folder, setups)
    gentle_rows(section, settings, setups, results, service_ms)
    polled_rows(section, settings, setups, results)
    waiting_rows(section, settings, setups, results)
    wait_one_rows(section, settings, setups, results, service_ms)
    if not rabbitmq:
        section.note(f"RabbitMQ did not answer at {RABBITMQ_URL}: its rows were skipped.")
    add_problems(section, problems)
    return section


def gentle_rows(section, settings, setups, results, service_ms):
    rows = []
    for name, workers in setups:
        result = results[name]
        slack = 25 if workers == 0 else 40
        p50 = statistics.median(result.p50_ms)
        targets = [
            section.target(
                p50 <= service_ms + slack, f"p50 ≤ {service_ms + slack:.1f} ms (render + {slack})"
            )
        ]
        rate = statistics.median(result.pdfs_per_second)
        if workers == 1:
            targets.append(section.target(rate >= 25, "≥ 25 PDFs/s"))
        share = ""
        if workers == 2:  # no target: two cores shared with the server and RabbitMQ cannot show it
            one_worker = statistics.median(results["RabbitMQ, 1 worker"].pdfs_per_second)
            share = f"{rate / one_worker:.2f}x"
        rows.append(
            [
                name,
                spread(result.p50_ms, 1),
                spread(result.p95_ms, 1),
                spread(result.pdfs_per_second, 1),
                share,
                spread(result.cpu_busy) if result.cpu_busy else "n/a",
                ", ".join(targets),
            ]
        )
    section.note(
        f"End to end over HTTP, a gentle client: POST, then GET every "
        f"{POLL_INTERVAL * 1000:.0f} ms until 200. One by one: {settings.sequential_reports} "
        f"users in turn; burst: {settings.burst_reports} POSTs (distinct users), then one "
        f"client waits for each PDF in turn; {repetitions_text(settings)}."
    )
    section.table(
        [
            "worker",
            "one by one p50 ms",
            "one by one p95 ms",
            "burst PDFs/s",
            "burst / 1 worker",
            "CPU busy in the burst %",
            "targets",
        ],
        rows,
    )
    section.note(
        "CPU busy: the share of the time of all the machine's cores that was not "
        "idle during the burst (/proc/stat), whoever used it: the server, RabbitMQ, "
        "the workers and this client share the cores. Near 100%, more workers on "
        "this machine cannot make PDFs faster; hence no target on two workers against one."
    )


def burst_cells(runs):
    """PDFs/s, p50, p95 and max POST to PDF, GET /users/{id} p99, CPU per PDF."""
    cpu = [run.cpu_ms_per_pdf() for run in runs if run.cpu_ms_per_pdf() is not None]
    service_cpu = [r.service_cpu_ms_per_pdf() for r in runs if r.service_cpu_ms_per_pdf()]
    return [
        spread([run.pdfs_per_second for run in runs], 1),
        spread([run.ms(0.50) for run in runs]),
        spread([run.ms(0.95) for run in runs]),
        spread([run.ms(1) for run in runs]),
        spread([run.read_p99_ms() for run in runs], 1),
        spread(cpu, 1) if cpu else "n/a",
        spread(service_cpu, 1) if service_cpu else "n/a",
    ]


BURST_HEADER = [
    "worker",
    "PDFs/s",
    "p50 ms",
    "p95 ms",
    "max ms",
    "GET /users/{id} p99 ms",
    "CPU ms per PDF",
    "service CPU ms per PDF",
]


def note_odd_answers(section, name, burst, runs):
    odd = sum((run.odd_answers for run in runs), Counter())
    read_failures = sum(run.read_failures for run in runs)
    if odd:
        section.note(
            f"{name}, {burst}: answers other than a PDF or a 202: "
            + ", ".join(f"{kind}: {n:,}" for kind, n in odd.items())
        )
    if read_failures:
        section.note(f"{name}, {burst}: {read_failures} GET /users/{{id}} failed beside it.")


def polled_rows(section, settings, setups, results):
    rows = []
    for name, workers in setups:
        runs = results[name].polled
        targets = ""
        if workers == 0:
            targets = ", ".join(
                [
                    section.target(
                        statistics.median(r.pdfs_per_second for r in runs) >= 40, "≥ 40 PDFs/s"
                    ),
                    section.target(statistics.median(r.ms(0.5) for r in runs) <= 1000, "p50 ≤ 1 s"),
                    section.target(
                        statistics.median(r.read_p99_ms() for r in runs) <= 50,
                        "GET /users/{id} p99 ≤ 50 ms",
                    ),
                ]
            )
        gets_per_second = [
            run.report_gets * run.pdfs_per_second / len(run.seconds) for run in runs if run.seconds
        ]
        rows.append(
            [
                name,
                *burst_cells(runs),
                spread(gets_per_second),
                f"{sum(run.lost for run in runs)}",
                targets,
            ]
        )
    section.note(
        f"Polled burst, clients as a browser page or a script: {settings.burst_reports} POSTs "
        f"(distinct users, signed up before), then {POLLERS} client threads GET the pending "
        f"reports round-robin, each every {POLL_GRID * 1000:.0f} ms (staggered), deaf to "
        f"Retry-After, until every PDF came. PDFs/s: the PDFs over the time from the first "
        f"POST to the last PDF; p50, p95 and max: POST to PDF of each report; "
        f"GET /users/{{id}}: a thread of this benchmark reading one user every "
        f"{READ_INTERVAL * 1000:.0f} ms from before the first POST to the last PDF; CPU ms "
        f"per PDF: the busy CPU time of all the machine's cores meanwhile (/proc/stat: the "
        f"server and its render child, RabbitMQ, the workers, these clients, and anything "
        f"else running) over the PDFs; service CPU: of that, what the server, its children "
        f"and the workers used (/proc/<pid>/stat), which other work on the machine does not "
        f"add to. Lost: not delivered within {GIVE_UP} s, or an error, "
        f"summed over the repetitions; {repetitions_text(settings)}."
    )
    section.table([*BURST_HEADER, "PDF GETs/s", "lost", "targets"], rows)
    for name, _ in setups:
        note_odd_answers(section, name, "polled burst", results[name].polled)


def waiting_rows(section, settings, setups, results):
    rows = []
    for name, _ in setups:
        runs = results[name].waiting
        worst = max(run.ms(1) for run in runs)
        lost = sum(run.lost for run in runs)
        reports = sum(len(run.seconds) + run.lost for run in runs)
        retry_afters = sum((run.retry_afters for run in runs), Counter())
        rows.append(
            [
                name,
                *burst_cells(runs),
                f"{sum(run.first_get_pdfs for run in runs)} of {reports}",
                f"{sum(run.at_once_202 for run in runs)} / {sum(run.waited_202 for run in runs)}",
                " ".join(f"{s} s ×{n}" for s, n in sorted(retry_afters.items())) or "none",
                f"{lost}",
                ", ".join(
                    [
                        section.target(worst <= 3000, "max ≤ 3 s"),
                        section.target(lost == 0, "none lost"),
                    ]
                ),
            ]
        )
    section.note(
        f"Waiting burst: {settings.burst_reports} clients (a thread each) at once, each POSTs "
        f"a report (distinct users) and right after GETs it with `Prefer: wait={WAIT}`; after "
        f"a 202 (beyond MAX_WAITING at once, or after {WAIT} s of waiting) it sleeps the "
        f"202's Retry-After, then GETs with `Prefer: wait={WAIT}` again. The figures as in "
        f"the polled burst; first GET: the PDFs that the GET right after the POST brought, "
        f"summed over the repetitions, as are the 202s and the Retry-After values they "
        f"carried (seconds ×how often); {repetitions_text(settings)}."
    )
    section.table(
        [
            *BURST_HEADER,
            "PDFs from the first GET",
            "202s at once / after waiting",
            "their Retry-After",
            "lost",
            "targets",
        ],
        rows,
    )
    for name, _ in setups:
        note_odd_answers(section, name, "waiting burst", results[name].waiting)


def wait_one_rows(section, settings, setups, results, service_ms):
    rows = []
    bound = service_ms + 30
    for name, _ in setups:
        result = results[name]
        from_get = sum(result.wait_one_from_get)
        reports = settings.sequential_reports * len(result.wait_one_from_get)
        rows.append(
            [
                name,
                spread(result.wait_one_p50_ms, 1),
                spread(result.wait_one_p95_ms, 1),
                f"{from_get} of {reports}",
                ", ".join(
                    [
                        section.target(
                            statistics.median(result.wait_one_p50_ms) <= bound,
                            f"p50 ≤ {bound:.1f} ms (render + 30)",
                        ),
                        section.target(from_get == reports, "every PDF from the one GET"),
                    ]
                ),
            ]
        )
    section.note(
        f"Prefer: wait, one client at a time: {settings.sequential_reports} users in turn, "
        f"each a POST, then one GET with `Prefer: wait={WAIT}` (had it brought a 202, the "
        f"client would follow Retry-After and wait again); POST to PDF; "
        f"{repetitions_text(settings)}."
    )
    section.table(["worker", "p50 ms", "p95 ms", "PDFs from the one waiting GET", "targets"], rows)


def measure_report_flow(settings, folder, setups):
    results = {name: FlowResults() for name, _ in setups}
    with ExitStack() as stack:
        services = {"embedded": stack.enter_context(Service(folder, "reports-embedded"))}
        if any(workers for _, workers in setups):
            services["rabbitmq"] = stack.enter_context(
                Service(folder, "reports-rabbitmq", RABBITMQ_URL)
            )
        for service in services.values():
            service.start()
        if "rabbitmq" in services:
            services["rabbitmq"].start_worker()

        for repetition in range(1, settings.repetitions + 1):
            for name, workers in setups:
                service = services["rabbitmq" if workers else "embedded"]
                second_worker = service.start_worker() if workers == 2 else None
                try:
                    time_report_flow(settings, service, results[name], max(workers, 1))
                finally:
                    if second_worker:
                        service.stop_worker(second_worker)
                service.check_running()
                result = results[name]
                polled, waited = result.polled[-1], result.waiting[-1]
                progress(
                    f"reports {repetition}/{settings.repetitions} {name}: "
                    f"p50 {result.p50_ms[-1]:.1f} ms, {result.pdfs_per_second[-1]:.1f} PDFs/s; "
                    f"waiting one by one p50 {result.wait_one_p50_ms[-1]:.1f} ms; polled burst "
                    f"{polled.pdfs_per_second:.1f} PDFs/s, p50 {polled.ms(0.5):.0f} ms, "
                    f"reads p99 {polled.read_p99_ms():.1f} ms; waiting burst "
                    f"{waited.pdfs_per_second:.1f} PDFs/s, max {waited.ms(1):.0f} ms, "
                    f"{waited.lost} lost; load average {os.getloadavg()[0]:.2f}"
                )
        problems = [line for service in services.values() for line in service.problems()]
    return results, problems


def time_report_flow(settings, service, results, workers):
    warm_up = service.sign_up(2 * workers)  # so that every worker has rendered before
    sequential, burst = settings.sequential_reports, settings.burst_reports
    users = service.sign_up(2 * sequential + 3 * burst)
    gentle_one, gentle_burst = users[:sequential], users[sequential : sequential + burst]
    waiting_one = users[sequential + burst : 2 * sequential + burst]
    polled, waiting = users[2 * sequential + burst :][:burst], users[2 * sequential + 2 * burst :]
    reader = warm_up[0].id  # GET /users/{id} beside the bursts
    client = Client(service.port)
    try:
        reports_in_burst(client, warm_up)
        durations = reports_one_by_one(client, gentle_one)
        results.p50_ms.append(percentile(durations, 0.50) * 1000)
        results.p95_ms.append(percentile(durations, 0.95) * 1000)
        rate, busy = reports_in_burst(client, gentle_burst)
        results.pdfs_per_second.append(rate)
        if busy is not None:
            results.cpu_busy.append(busy * 100)
        durations, from_one_get = waiting_one_by_one(client, waiting_one)
        results.wait_one_p50_ms.append(percentile(durations, 0.50) * 1000)
        results.wait_one_p95_ms.append(percentile(durations, 0.95) * 1000)
        results.wait_one_from_get.append(from_one_get)
    finally:
        client.close()
    results.polled.append(polled_burst(service, polled, reader))
    results.waiting.append(waiting_burst(service, waiting, reader))


# 3. Growth: reads with few and with many users in the database

SEED_BATCH = 5_000


def seed_database(number):
    """--seed-users: users and their stats straight into the database of DATABASE_URL.

    Runs in a process of its own, with the service's environment: models
    builds its engine from DATABASE_URL when first imported.
    """
    import auth
    import database
    import models
    import schema

    schema.upgrade()
    # One hash for every row: scrypt for each of 100,000 users would take hours.
    password_hash = auth.hash_password("bench-password")
    insert_user = database.Statement(models.users.insert())
    insert_stats = database.Statement(models.stats.insert())
    with database.writing() as db:
        cursor = db.cursor()
        for first in range(1, number + 1, SEED_BATCH):
            numbers = range(first, min(first + SEED_BATCH, number + 1))
            cursor.executemany(
                insert_user.sql,
                [
                    {
                        "id": n,
                        **sample_user_fields(n),
                        "password_hash": password_hash,
                        "profile_pic": None,
                        "token_version": 0,
                    }
                    for n in numbers
                ],
            )
            cursor.executemany(
                insert_stats.sql, [{"user_id": n, **sample_stats(n)} for n in numbers]
            )
        models.recount_users(db)


def measure_growth(settings, folder, run_load):
    section = Section("Growth: reads with few and with many users")
    sizes = settings.growth_sizes
    results = {}
    with ExitStack() as stack:
        services = {}
        for size in sizes:
            service = stack.enter_context(Service(folder, f"growth-{size}"))
            seconds = service.seed_users(size)
            progress(f"growth: seeded {size:,} users in {seconds:.1f} s")
            service.start()
            services[size] = service
        routes = {
            "GET /users/{id}": lambda size: Load("GET", "/users/{id}", max_id=size),
            "GET /users?limit=100": lambda size: Load("GET", "/users?limit=100"),
        }
        for repetition in range(1, settings.repetitions + 1):
            for route, load_for in routes.items():
                for size, service in services.items():
                    result = run_load(service.port, load_for(size), settings.load_seconds, folder)
                    results.setdefault((route, size), []).append(result)
                    progress(
                        f"growth {repetition}/{settings.repetitions} {route} {size:,} users: "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
                    )
        for service in services.values():
            service.check_running()
        problems = [line for service in services.values() for line in service.problems()]

    rows = []
    for route in routes:
        smallest = statistics.median(r.p50_ms for r in results[route, sizes[0]])
        for size in sizes:
            runs = results[route, size]
            growth = statistics.median(r.p50_ms for r in runs) / smallest
            target = (
                ""
                if size == sizes[0]
                else section.target(growth <= 1.3, f"p50 ≤ 1.3x of {sizes[0]:,} users")
            )
            rows.append(
                [
                    route,
                    f"{size:,}",
                    spread([r.requests_per_second for r in runs]),
                    spread([r.p50_ms for r in runs], 1),
                    spread([r.p99_ms for r in runs], 1),
                    failures(runs),
                    f"{growth:.2f}x",
                    target,
                ]
            )
    section.note(
        f"Users seeded straight into SQLite; GET /users/{{id}} asks for random ids. "
        f"The same load as the API section ({LOAD_CONNECTIONS} connections, "
        f"{settings.load_seconds} s), {repetitions_text(settings)}."
    )
    section.table(
        [
            "route",
            "users",
            "req/s",
            "p50 ms",
            "p99 ms",
            "non-2xx / socket errors",
            f"p50 / {sizes[0]:,} users",
            "target",
        ],
        rows,
    )
    add_problems(section, problems)
    return section


# 4. Memory: the servers' peak RSS, and a worker's growth


def apply_api_load(service, run_load, seconds, folder):
    """The API section's three loads, for their effect on memory."""
    user = service.sign_up(100)[0]
    for _, load, _ in api_loads(user):
        run_load(service.port, load, seconds, folder)


def run_report_jobs(service, number):
    users = service.sign_up(number)
    client = Client(service.port)
    try:
        reports_in_burst(client, users, interval=0.05)
    finally:
        client.close()


def measure_memory(settings, folder, run_load, rabbitmq):
    section = Section("Memory")
    first_jobs, all_jobs = settings.memory_jobs
    rows, problems = [], []
    with Service(folder, "memory-embedded") as service:
        service.start()
        apply_api_load(service, run_load, settings.memory_load_seconds, folder)
        run_report_jobs(service, first_jobs)
        peak = proc_status_mib(service.server.pid, "VmHWM")
        children = children_peaks(service.server.pid)
        matplotlib_loaded = maps_matplotlib(service.server.pid)
        rows += [
            [
                "server, embedded worker",
                "peak (VmHWM)",
                f"{peak:.1f}",
                section.target(peak <= 120, "≤ 120 MiB"),
            ],
            [
                "server, embedded worker",
                "matplotlib mapped (/proc/pid/maps)",
                "yes" if matplotlib_loaded else "no",
                "",
            ],
            *(
                [f"server's child: {kind}", "peak (VmHWM)", f"{peak:.1f}", ""]
                for kind, peak in sorted(children)
            ),
        ]
        problems += service.problems()

    if rabbitmq:
        with Service(folder, "memory-rabbitmq", RABBITMQ_URL) as service:
            service.start()
            worker = service.start_worker()
            apply_api_load(service, run_load, settings.memory_load_seconds, folder)
            run_report_jobs(service, first_jobs)
            after_first = proc_status_mib(worker.pid, "VmRSS")
            run_report_jobs(service, all_jobs - first_jobs)
            after_all = proc_status_mib(worker.pid, "VmRSS")
            peak = proc_status_mib(service.server.pid, "VmHWM")
            matplotlib_loaded = maps_matplotlib(service.server.pid)
            problems += service.problems()
        growth = after_all - after_first
        rows += [
            [
                "server on RabbitMQ",
                "peak (VmHWM)",
                f"{peak:.1f}",
                section.target(peak <= 60, "≤ 60 MiB"),
            ],
            [
                "server on RabbitMQ",
                "matplotlib mapped (/proc/pid/maps)",
                "yes" if matplotlib_loaded else "no",
                section.target(not matplotlib_loaded, "not imported"),
            ],
            ["worker process", f"VmRSS after {first_jobs} jobs", f"{after_first:.1f}", ""],
            [
                "worker process",
                f"VmRSS after {all_jobs} jobs",
                f"{after_all:.1f}",
                section.target(
                    growth <= 5, f"grows ≤ 5 MiB from job {first_jobs} (grew {growth:+.1f})"
                ),
            ],
        ]
    else:
        section.note(f"RabbitMQ did not answer at {RABBITMQ_URL}: its rows were skipped.")
    section.note(
        f"Each server after the API section's three loads "
        f"({settings.memory_load_seconds} s each) and {first_jobs} reports (on RabbitMQ, "
        f"{all_jobs}); the worker's jobs count from its start. With the embedded worker the "
        "jobs run in a child process of the server, which holds matplotlib: the server "
        "process (the target's) and its children are counted apart."
    )
    section.table(["process", "measure", "MiB", "target"], rows)
    add_problems(section, problems)
    return section


# 5. Under abuse: one client against everyone else, on the service as deployed

ABUSE_CONNECTIONS = 16  # the readers' (wrk's), and the flood's
FLOOD_PROCESSES = 2  # so that one Python process's GIL does not slow the flood down
FLOOD_RAMP = 1  # seconds of flood before the reads are timed, and the flood outlasts them by
FLOODER = "127.0.0.1"  # the readers' address too: the limits count sign-ups and logins only
HOARDER = "127.0.0.2"  # another client: loopback answers on every 127.x address
HALF_OPEN_COUNTS = (300, 2_000)
HALF_OPEN_REQUEST = b"GET /users/1 HTTP/1.1\r\nHost: x\r\n"  # never the blank line that ends it
HEADER_TIMEOUT = 10  # config.py's default, which this section leaves alone
NEW_CLIENT_TRIES, NEW_CLIENT_TIMEOUT = 5, 10
# The kinds of answer a flood gets, besides statuses.
UNDOCUMENTED_503 = "503 without Retry-After or the error body"
TRANSPORT_ERROR = "transport error"


@dataclass(frozen=True)
class Flood:
    name: str
    path: str
    body: str  # "{n}" in it: a name that no request of the run used before
    checked: int  # the status of a request whose password was hashed
    rate: str  # the limit it counts toward, and that limit's default (config.py's)
    per_minute: int


FLOODS = (
    Flood(
        "sign-up flood",
        "/users",
        '{"username": "s{n}", "password": "flood-pass"}',
        201,
        "SIGNUP_RATE",
        60,
    ),
    # Names nobody signed up: each still costs a hash, as a wrong password does.
    Flood(
        "login flood",
        "/login",
        '{"username": "ghost{n}", "password": "flood-pass"}',
        401,
        "LOGIN_RATE",
        120,
    ),
)


def answer_kind(status, headers, data):
    """The status; a 503 only if it is the documented one, with Retry-After and the error body."""
    if status != 503:
        return status
    try:
        documented = bool(headers.get("Retry-After")) and json.loads(data)["success"] is False
    except (ValueError, KeyError, TypeError):
        documented = False
    return 503 if documented else UNDOCUMENTED_503


def _flood_connection(port, flood, deadline, number):
    # Keep-alive, as fast as answers come, and deaf to Retry-After: an abuser's manners.
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(FLOODER, 0)
    )
    headers = {"Content-Type": "application/json"}
    answers, n = Counter(), 0
    while time.monotonic() < deadline:
        n += 1
        body = flood.body.replace("{n}", f"{number}x{n}").encode()
        try:
            connection.request("POST", flood.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            answers[TRANSPORT_ERROR] += 1
            connection.close()  # the next request opens a new connection
            continue
        answers[answer_kind(response.status, response.headers, data)] += 1
    connection.close()
    return answers


def _flood_process(port, flood, seconds, connections, process_number):
    deadline = time.monotonic() + seconds
    numbers = range(process_number * connections, (process_number + 1) * connections)
    with ThreadPoolExecutor(connections) as threads:
        parts = threads.map(lambda n: _flood_connection(port, flood, deadline, n), numbers)
        return sum(parts, Counter())


def reads_under_flood(port, load, flood, seconds, folder, run_load):
    """The reads' LoadResult while flood runs; the flood's answers, and its requests per second."""
    per_process = ABUSE_CONNECTIONS // FLOOD_PROCESSES
    flood_seconds = FLOOD_RAMP + seconds + FLOOD_RAMP
    start = time.perf_counter()
    with ProcessPoolExecutor(FLOOD_PROCESSES) as processes:
        parts = [
            processes.submit(_flood_process, port, flood, flood_seconds, per_process, number)
            for number in range(FLOOD_PROCESSES)
        ]
        time.sleep(FLOOD_RAMP)
        result = run_load(port, load, seconds, folder, connections=ABUSE_CONNECTIONS)
        answers = sum((part.result() for part in parts), Counter())
    return result, answers, answers.total() / (time.perf_counter() - start)


def raise_open_files_limit(wanted):
    """The soft limit of open files up to the hard one, if wanted sockets would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else hard, hard)
        )


def open_half_open(port, number):
    """number connections from HOARDER, each with a request whose headers never end;
    and how many could not connect."""
    sockets, unconnected = [], 0
    for _ in range(number):
        sock = socket.socket()
        sock.settimeout(10)
        try:
            sock.bind((HOARDER, 0))
            sock.connect(("127.0.0.1", port))
        except OSError:
            unconnected += 1
            sock.close()
            continue
        try:
            sock.sendall(HALF_OPEN_REQUEST)
        except OSError:
            pass  # shed already: closed_by_server counts it
        sock.setblocking(False)  # for closed_by_server's peek, which must not wait
        sockets.append(sock)
    return sockets, unconnected


def closed_by_server(sockets):
    """How many of sockets the server has closed (or answered: done with them either way)."""
    closed = 0
    for sock in sockets:
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            continue  # open, and silent: the server still waits for the headers
        except OSError:
            pass  # reset
        closed += 1
    return closed


def time_new_client(port):
    """Seconds for a new connection from another address to get GET /healthz; whether it did."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=NEW_CLIENT_TIMEOUT, source_address=(FLOODER, 0)
    )
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        served = response.status == 200
    except (OSError, http.client.HTTPException):
        served = False
    finally:
        connection.close()
    return time.perf_counter() - start, served


@dataclass
class HalfOpenResult:
    number: int
    unconnected: int
    closed_when_timed: int
    new_client_seconds: list
    new_client_failures: int
    closed_after_timeout: int
    peak_mib: float


def new_client_beside_half_open(service, number):
    sockets, unconnected = open_half_open(service.port, number)
    try:
        opened = time.monotonic()
        time.sleep(1)  # the server has accepted (and shed) them before the new client comes
        tries = [time_new_client(service.port) for _ in range(NEW_CLIENT_TRIES)]
        closed_when_timed = closed_by_server(sockets)
        peak = proc_status_mib(service.server.pid, "VmHWM")
        # Then the headers of every one of them are late: each should be dropped.
        time.sleep(max(0, opened + HEADER_TIMEOUT + 2 - time.monotonic()))
        closed_after_timeout = closed_by_server(sockets)
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.5)  # idle again, its closes seen, before the next number
    return HalfOpenResult(
        number,
        unconnected,
        closed_when_timed,
        [seconds for seconds, _ in tries],
        sum(not served for _, served in tries),
        closed_after_timeout,
        peak,
    )


def measure_abuse(settings, folder, run_load):
    section = Section("Under abuse: one client against everyone else")
    seconds = settings.load_seconds
    conditions = [
        ("alone", None),
        *((f"during a {flood.name}", flood) for flood in FLOODS),
        ("alone again, after the floods", None),
    ]
    # (condition, flood, the reads' LoadResult, the flood's answers and rate,
    #  the server's peak MiB, its children's)
    runs = []
    with Service(folder, "abuse", production=True) as service:
        service.start()
        read = Load("GET", f"/users/{service.sign_up(1)[0].id}")
        wait_until_idle(service.server.pid)
        for condition, flood in conditions:
            if flood is None:
                result = run_load(
                    service.port, read, seconds, folder, connections=ABUSE_CONNECTIONS
                )
                answers, rate = None, None
            else:
                result, answers, rate = reads_under_flood(
                    service.port, read, flood, seconds, folder, run_load
                )
            service.check_running()
            peak = proc_status_mib(service.server.pid, "VmHWM")
            children = children_peak_mib(service.server.pid)
            runs.append((condition, flood, result, answers, rate, peak, children))
            progress(
                f"abuse: GET {condition}: {result.requests_per_second:,.0f} req/s, "
                f"p99 {result.p99_ms:.1f} ms"
                + (f"; the flood's answers {dict(answers)}" if answers is not None else "")
            )
        problems = service.problems()

    raise_open_files_limit(max(HALF_OPEN_COUNTS) + 100)
    with Service(folder, "abuse-connections", production=True) as service:
        service.start()
        wait_until_idle(service.server.pid)
        half_open = []
        for number in HALF_OPEN_COUNTS:
            half_open.append(new_client_beside_half_open(service, number))
            service.check_running()
            progress(
                f"abuse: {number:,} half-open connections: new client in "
                f"{statistics.median(half_open[-1].new_client_seconds) * 1000:.1f} ms"
            )
        problems += service.problems()

    alone = runs[0][2]
    read_rows = []
    for condition, flood, result, _, _, peak, children in runs:
        share = result.requests_per_second / alone.requests_per_second
        targets = ""
        if flood is not None:
            targets = ", ".join(
                [
                    section.target(share >= 0.5, "≥ 0.5x alone"),
                    section.target(result.p99_ms <= 100, "p99 ≤ 100 ms"),
                    section.target(peak <= 120, "peak RSS ≤ 120 MiB"),
                ]
            )
        read_rows.append(
            [
                condition,
                f"{result.requests_per_second:,.0f}",
                f"{result.p50_ms:.1f}",
                f"{result.p99_ms:.1f}",
                f"{share:.2f}x",
                failures([result]),
                f"{peak:.1f}",
                "unknown" if children is None else f"{children:.1f}",
                targets,
            ]
        )
    flood_rows, odd_answers = [], Counter()
    for _, flood, _, answers, rate, _, _ in runs:
        if flood is None:
            continue
        others = Counter(
            {kind: n for kind, n in answers.items() if kind not in (201, 401, 429, 503)}
        )
        others.pop(TRANSPORT_ERROR, None)
        odd_answers.update(others)
        bad_5xx = sum(
            n
            for kind, n in others.items()
            if kind == UNDOCUMENTED_503 or (isinstance(kind, int) and kind >= 500)
        )
        flood_rows.append(
            [
                flood.name,
                f"POST {flood.path}",
                f"{answers.total():,}",
                f"{rate:,.0f}",
                *(f"{answers[status]:,}" for status in (201, 401, 429, 503)),
                f"{others.total():,}",
                f"{answers[TRANSPORT_ERROR]:,}",
                section.target(bad_5xx == 0, "no 5xx but the documented 503"),
            ]
        )
    hash_concurrency = max(1, (os.cpu_count() or 2) // 2)  # config.py's default
    section.note(
        f"One server as `./run.sh` runs it: every default (SCRYPT_N={PRODUCTION_SCRYPT_N}, "
        f"HASH_CONCURRENCY={hash_concurrency} on these {os.cpu_count()} cores, "
        + ", ".join(f"{flood.rate}={flood.per_minute} a minute" for flood in FLOODS)
        + f", HEADER_TIMEOUT={HEADER_TIMEOUT} s), "
        f"the embedded worker. The reads: wrk ({LOAD_THREADS} threads, "
        f"{ABUSE_CONNECTIONS} keep-alive connections, {seconds} s) on GET /users/{{id}} "
        f"of a user that exists, in four runs one after the other on the same server, "
        "the first once the server and its children were idle after start-up. "
        f"A flood: one client ({FLOODER}, the readers' address too) POSTing fresh names "
        f"as fast as it is answered, on {ABUSE_CONNECTIONS} keep-alive connections "
        f"({FLOOD_PROCESSES} processes of threads), deaf to Retry-After (the server reads "
        "a connection it answered 429 again only after a pause: README, Under pressure); "
        "it starts "
        f"{FLOOD_RAMP} s before the reads and stops {FLOOD_RAMP} s after them. The reads, "
        "the flood and the server share this machine's cores. Peak RSS: the server "
        "process's VmHWM so far (the target's), and its child processes' summed. One "
        "repetition: the rate windows make a second flood on the same server a different one."
    )
    section.table(
        [
            "GET /users/{id}",
            "req/s",
            "p50 ms",
            "p99 ms",
            "/ alone",
            "non-2xx / socket errors",
            "server peak RSS MiB",
            "its children's MiB",
            "targets",
        ],
        read_rows,
    )
    section.note("How the flood's own requests were answered, over all its run:")
    section.table(
        [
            "flood",
            "request",
            "requests",
            "req/s",
            "201",
            "401",
            "429",
            "503",
            "other",
            "transport errors",
            "target",
        ],
        flood_rows,
    )
    if odd_answers:
        section.note(
            "Other answers: " + ", ".join(f"{kind}: {n:,}" for kind, n in odd_answers.items())
        )
    for _, flood, _, answers, rate, _, _ in runs:
        if flood is not None and not answers[429]:
            section.note(
                f"No 429 in the {flood.name}: its {answers[flood.checked]:,} checked "
                f"requests in {answers.total() / rate:.0f} s stayed under "
                f"{flood.rate}={flood.per_minute} a minute, and a 503 does not count toward it."
            )

    half_open_rows = []
    for result in half_open:
        median = statistics.median(result.new_client_seconds)
        half_open_rows.append(
            [
                f"{result.number:,}",
                f"{result.number - result.unconnected:,}",
                f"{result.closed_when_timed:,}",
                spread([s * 1000 for s in result.new_client_seconds], 1),
                f"{result.new_client_failures} of {NEW_CLIENT_TRIES}",
                f"{result.closed_after_timeout:,}",
                f"{result.peak_mib:.1f}",
                section.target(median < 1 and result.new_client_failures == 0, "served in < 1 s"),
            ]
        )
    section.note(
        f"Half-open connections: with the server idle (a fresh one), one client "
        f"({HOARDER}) opens N connections, each sending {HALF_OPEN_REQUEST.decode()!r} "
        f"and never the blank line that ends the headers, and keeps them; 1 s later a "
        f"new client ({FLOODER}) opens a connection and GETs /healthz, {NEW_CLIENT_TRIES} "
        f"times in turn, each with a {NEW_CLIENT_TIMEOUT} s timeout: median (min–max). "
        f"Closed: of the N, those the server had closed when the new client was done, "
        f"and {HEADER_TIMEOUT + 2} s after the last one was opened."
    )
    section.table(
        [
            "half-open N",
            "connected",
            "closed when timed",
            "new client ms",
            "failed tries",
            f"closed after {HEADER_TIMEOUT + 2} s",
            "server peak RSS MiB",
            "target",
        ],
        half_open_rows,
    )
    add_problems(section, problems)
    return section


# The run: sections, machine, BENCHMARKS.md


def machine_lines(load_generator, rabbitmq, load_average):
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return [
        f"- Machine: {os.cpu_count()} cores, {cpu}",
        f"- Python {platform.python_version()}; {versions}",
        f"- Load generator: {load_generator}",
        f"- RabbitMQ: {rabbitmq or 'not answering (its parts skipped)'}",
        # Anything else running on the machine shows up here, and in the figures.
        f"- Load average when the run started: {load_average:.2f} (1 minute)",
        f"- Service revision: {git_revision()}",
        f"- Service settings: defaults ({WEB_THREADS} Waitress threads, SQLite in WAL), "
        f"except SCRYPT_N={SCRYPT_N} (production: {PRODUCTION_SCRYPT_N}) to make the "
        "benchmark's sign-ups fast, and "
        + ", ".join(f"{name}={value}" for name, value in RELAXED_LIMITS.items())
        + " because its set-up signs up and logs in from one address far faster than the "
        "defaults allow; no measured request hashes a password. The Under abuse section "
        f"alone runs with every default, SCRYPT_N={PRODUCTION_SCRYPT_N} and the abuse "
        "limits included.",
    ]


def git_revision():
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
        ).stdout
        files = ", ".join(line[3:] for line in changed.splitlines())
        return revision + (f" with uncommitted changes to {files}" if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"


def load_generator_name():
    if shutil.which("wrk") is None:
        return (
            f"stdlib client ({LOAD_THREADS} processes × "
            f"{LOAD_CONNECTIONS // LOAD_THREADS} keep-alive connections; wrk not installed)"
        )
    head = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return (head.splitlines() or ["wrk"])[0].split(" Copyright")[
        0
    ] + f" (-t{LOAD_THREADS} -c{LOAD_CONNECTIONS} --latency)"


def run(options):
    settings = QUICK if options.quick else FULL
    sections = [options.only] if options.only else list(SECTIONS)
    run_load = wrk_load if shutil.which("wrk") else python_load
    rabbitmq = rabbitmq_version()
    if rabbitmq is None:
        progress(f"RabbitMQ does not answer at {RABBITMQ_URL}: its parts are skipped")
    started, date, load_average = time.monotonic(), datetime.now(UTC), os.getloadavg()[0]
    if load_average > os.cpu_count() / 2:
        progress(
            f"the machine is busy already (load average {load_average:.2f}): expect noisy figures"
        )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as temporary:
        folder = Path(temporary)
        for name in sections:
            progress(f"section {name}")
            if name == "api":
                section = measure_api(settings, folder, run_load)
            elif name == "reports":
                section = measure_reports(settings, folder, rabbitmq)
            elif name == "growth":
                section = measure_growth(settings, folder, run_load)
            elif name == "memory":
                section = measure_memory(settings, folder, run_load, rabbitmq)
            else:
                section = measure_abuse(settings, folder, run_load)
            print(section.markdown(), flush=True)
            results.append(section)

    minutes = (time.monotonic() - started) / 60
    passed = sum(s.passed for s in results)
    failed = sum(s.failed for s in results)
    command = " ".join(["./run.sh bench", *sys.argv[1:]])
    document = "\n".join(
        [
            "# Benchmarks",
            "",
            f"`{command}`, {date:%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes"
            + (" (quick smoke run: not the figures of record)" if options.quick else "")
            + ".",
            "",
            *machine_lines(load_generator_name(), rabbitmq, load_average),
            "",
            f"Targets: {passed} met, {failed} missed.",
            "",
            *(section.markdown() for section in results),
        ]
    )
    print(f"Targets: {passed} met, {failed} missed. Run time {minutes:.1f} minutes.")
    output = options.output or (None if options.quick or options.only else "BENCHMARKS.md")
    if output:
        (PROJECT / output).write_text(document)
        print(f"Wrote {output}.")
    else:
        print("No file written (a --quick or --only run); --output FILE writes one.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: short loads, 1 repetition, fewer users and jobs",
    )
    parser.add_argument("--only", choices=SECTIONS, help="run this section alone")
    parser.add_argument(
        "--output",
        help="write the markdown here (default: BENCHMARKS.md "
        "for a full run, nothing for --quick or --only)",
    )
    parser.add_argument("--ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seed-users", type=int, metavar="N", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.ceiling:
        serve_ceiling(options.ceiling)
    elif options.seed_users:
        seed_database(options.seed_users)
    else:
        # On SIGTERM, unwind like on Ctrl-C: every process started is stopped, the folder removed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        run(options)


if __name__ == "__main__":
    main()
