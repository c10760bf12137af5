"""The Under abuse section: one client against everyone else, on the service as deployed.

`./run.sh bench --only abuse`; `--only floods` or `--only half-open` for one
of its parts. Floods: reads (wrk) while one client floods sign-ups or logins,
on a server with every default (its abuse limits, production scrypt).
Half-open: a new client's wait beside 300 and 2,000 half-open connections.
"""

import http.client
import json
import os
import resource
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from bench_load import LOAD_THREADS, Load, apply_load, failures, processes_of_threads
from bench_proc import children_peak_mib, proc_status_mib
from bench_record import Section, spread
from bench_setup import PRODUCTION_SCRYPT_N, progress

TITLE = "Under abuse: one client against everyone else"

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


def reads_under_flood(port, load, flood, seconds, folder):
    """The reads' LoadResult while flood runs; the flood's answers, and its requests per second."""
    per_process = ABUSE_CONNECTIONS // FLOOD_PROCESSES
    flood_seconds = FLOOD_RAMP + seconds + FLOOD_RAMP
    start = time.perf_counter()
    with processes_of_threads(
        FLOOD_PROCESSES, _flood_connection, (port, flood), flood_seconds, per_process
    ) as parts:
        time.sleep(FLOOD_RAMP)
        result = apply_load(port, load, seconds, folder, connections=ABUSE_CONNECTIONS)
        answers = sum((answers for part in parts for answers in part.result()), Counter())
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
        peak = proc_status_mib(service.server.popen.pid, "VmHWM")
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


@dataclass
class Reads:
    """One of the four runs of reads on the same server."""

    condition: str
    flood: Flood | None
    result: object  # the reads' LoadResult
    answers: Counter | None  # the flood's
    rate: float | None  # the flood's requests per second
    peak_mib: float  # the server process's VmHWM after the run
    children_mib: float | None  # its children's, summed


def measure(run, parts=None):
    """Both parts, or those of parts: "floods", "half-open"."""
    section = Section(TITLE)
    problems = []
    if parts is None or "floods" in parts:
        problems += measure_floods(run, section)
    if parts is None or "half-open" in parts:
        problems += measure_half_open(run, section)
    section.problems(problems)
    return section


def measure_floods(run, section):
    seconds = run.settings.load_seconds
    conditions = [
        ("alone", None),
        *((f"during a {flood.name}", flood) for flood in FLOODS),
        ("alone again, after the floods", None),
    ]
    runs = []
    with run.service("abuse", production=True) as service:
        service.start()
        read = Load("GET", f"/users/{service.sign_up(1)[0].id}")
        service.wait_until_idle()
        for condition, flood in conditions:
            if flood is None:
                result = apply_load(
                    service.port, read, seconds, run.folder, connections=ABUSE_CONNECTIONS
                )
                answers, rate = None, None
            else:
                result, answers, rate = reads_under_flood(
                    service.port, read, flood, seconds, run.folder
                )
            service.check_running()
            server = service.server.popen.pid
            peak, children = proc_status_mib(server, "VmHWM"), children_peak_mib(server)
            runs.append(Reads(condition, flood, result, answers, rate, peak, children))
            progress(
                f"abuse: GET {condition}: {result.requests_per_second:,.0f} req/s, "
                f"p99 {result.p99_ms:.1f} ms"
                + (f"; the flood's answers {dict(answers)}" if answers is not None else "")
            )
        problems = service.problems()
    write_reads(section, runs, seconds)
    write_floods(section, [reads for reads in runs if reads.flood is not None])
    return problems


def write_reads(section, runs, seconds):
    alone = runs[0].result
    rows = []
    for reads in runs:
        result = reads.result
        share = result.requests_per_second / alone.requests_per_second
        targets = ""
        if reads.flood is not None:
            targets = ", ".join(
                [
                    section.target(share >= 0.5, "≥ 0.5x alone"),
                    section.target(result.p99_ms <= 100, "p99 ≤ 100 ms"),
                    section.target(reads.peak_mib <= 120, "peak RSS ≤ 120 MiB"),
                ]
            )
        rows.append(
            [
                reads.condition,
                f"{result.requests_per_second:,.0f}",
                f"{result.p50_ms:.1f}",
                f"{result.p99_ms:.1f}",
                f"{share:.2f}x",
                failures([result]),
                f"{reads.peak_mib:.1f}",
                "unknown" if reads.children_mib is None else f"{reads.children_mib:.1f}",
                targets,
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
        rows,
    )


def write_floods(section, floods):
    rows, odd_answers = [], Counter()
    for reads in floods:
        flood, answers = reads.flood, reads.answers
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
        rows.append(
            [
                flood.name,
                f"POST {flood.path}",
                f"{answers.total():,}",
                f"{reads.rate:,.0f}",
                *(f"{answers[status]:,}" for status in (201, 401, 429, 503)),
                f"{others.total():,}",
                f"{answers[TRANSPORT_ERROR]:,}",
                section.target(bad_5xx == 0, "no 5xx but the documented 503"),
            ]
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
        rows,
    )
    if odd_answers:
        section.note(
            "Other answers: " + ", ".join(f"{kind}: {n:,}" for kind, n in odd_answers.items())
        )
    for reads in floods:
        flood, answers = reads.flood, reads.answers
        if not answers[429]:
            section.note(
                f"No 429 in the {flood.name}: its {answers[flood.checked]:,} checked "
                f"requests in {answers.total() / reads.rate:.0f} s stayed under "
                f"{flood.rate}={flood.per_minute} a minute, and a 503 does not count toward it."
            )


def measure_half_open(run, section):
    raise_open_files_limit(max(HALF_OPEN_COUNTS) + 100)
    with run.service("abuse-connections", production=True) as service:
        service.start()
        service.wait_until_idle()
        half_open = []
        for number in HALF_OPEN_COUNTS:
            half_open.append(new_client_beside_half_open(service, number))
            service.check_running()
            progress(
                f"abuse: {number:,} half-open connections: new client in "
                f"{statistics.median(half_open[-1].new_client_seconds) * 1000:.1f} ms"
            )
        problems = service.problems()

    rows = []
    for result in half_open:
        median = statistics.median(result.new_client_seconds)
        rows.append(
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
        rows,
    )
    return problems
