"""The soak test: `./run.sh soak [SECONDS]` (60 by default).

Starts server.py and two worker.py processes on RabbitMQ (a queue of this run
alone, deleted at the end), on SQLite in a temporary folder or on the
DATABASE_URL of the environment, then drives mixed traffic from 32 clients,
each a thread with a keep-alive connection and users of its own: sign-ups,
logins, reads, stats writes, PDF requests and deletes. Then it waits for every
requested PDF and prints tables: requests by route and status, PDFs requested
against how each ended, and the RSS of every process over time.

It exits 1 when a request got a 5xx or an answer the contract does not allow,
a requested PDF neither came nor visibly failed, a process died, or a
process's RSS grew 10% or more after the warm-up. Processes, the temporary
folder and the queue are cleaned up however it ends.

The processes, the client and the tables are the benchmark's (tools/bench_*.py).
`--chaos` runs the chaos run instead (tools/chaos.py): this load, while servers,
workers and RabbitMQ are killed and restarted.
"""

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count

import bench_setup
from bench_proc import proc_status_mib
from bench_record import Section, percentile
from bench_setup import (
    PRODUCTION_SCRYPT_N,
    RABBITMQ_URL,
    RELAXED_LIMITS,
    SCRYPT_N,
    rabbitmq_version,
    running,
)
from bench_users import sample_stats

CLIENTS = 32
WORKERS = 2
USERS_PER_CLIENT = (2, 8)  # a client signs up and deletes users within these bounds
WRONG_PASSWORD_SHARE = 0.1  # of logins
WARM_UP_SHARE = 0.2  # of the run, before RSS counts as settled
MAX_RSS_GROWTH = 0.10
REPORT_DEADLINE = 120  # seconds after the load for the last PDFs to come
POLL_INTERVAL = 0.2  # between GETs of a pending PDF, after the load

# How often each action is picked; reads dominate, as in a game's traffic.
WEIGHTS = {
    "read_user": 20,
    "read_stats": 15,
    "read_me": 10,
    "list_users": 8,
    "patch_stats": 15,
    "put_stats": 5,
    "log_in": 5,
    "request_report": 3,
    "fetch_report": 6,
    "sign_up": 4,
    "delete_user": 4,
}

NO_ANSWER = "no answer"  # a status for transport errors: refused, reset, timed out


def progress(message):
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# HTTP


class Client(bench_setup.Client):
    """bench_setup's keep-alive client, answering headers too: a PDF's ETag tells reports apart."""

    def call(self, method, path, body=None, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException) as error:
            self.connection.close()  # the next request opens a new connection
            return self.no_answer(error), {}, repr(error).encode()

    def no_answer(self, error):
        """The status recorded for a request that got no answer."""
        return NO_ANSWER


# What the clients saw


@dataclass
class Tally:
    answers: Counter = field(default_factory=Counter)  # (route, status): count
    seconds: dict = field(default_factory=lambda: defaultdict(list))  # route: durations
    reports: Counter = field(default_factory=Counter)  # requested, produced, failed...
    unexpected: list = field(default_factory=list)  # lines that say what and where
    requests: int = 0  # read by the progress line while the clients write it

    def merge(self, other):
        self.answers.update(other.answers)
        for route, durations in other.seconds.items():
            self.seconds[route] += durations
        self.reports.update(other.reports)
        self.unexpected += other.unexpected
        self.requests += other.requests


@dataclass
class Player:
    """A user signed up by one client, the only one that changes it."""

    id: int
    username: str
    password: str
    token: str
    report_etag: str | None = None  # of the newest PDF seen
    report_asked: bool = False  # a PDF was ever requested
    report_waiting: bool = False  # a 202 not yet seen through to its end


class SoakClient:
    """One client: a keep-alive connection, a few users of its own, random actions."""

    def __init__(self, number, port, run_tag, known_ids):
        self.rng = random.Random(f"{run_tag}-{number}")
        self.http = Client(port)
        self.tally = Tally()
        self.players = []
        self.known_ids = known_ids  # shared: ids any client signed up, deleted ones too
        self.usernames = (f"{run_tag}-{number}-{n}" for n in count(1))

    def run(self, load_until, reports_until, stopping):
        try:
            while time.monotonic() < load_until and not stopping.is_set():
                getattr(self, self.pick_action())()
            self.wait_for_reports(reports_until, stopping)
            if not stopping.is_set():
                self.delete_all_users()
        except Exception as error:  # a bug here, or an answer it cannot read: say which
            self.tally.unexpected.append(f"client crashed: {error!r}")
        finally:
            self.http.close()

    def pick_action(self):
        if len(self.players) < USERS_PER_CLIENT[0]:
            return "sign_up"
        allowed = {
            name: weight
            for name, weight in WEIGHTS.items()
            if (name != "sign_up" or len(self.players) < USERS_PER_CLIENT[1])
            and (name != "delete_user" or len(self.players) > USERS_PER_CLIENT[0])
        }
        return self.rng.choices(list(allowed), weights=list(allowed.values()))[0]

    def call(self, route, expected, method, path, body=None, token=None):
        started = time.perf_counter()
        status, headers, data = self.http.call(method, path, body, token)
        self.tally.seconds[route].append(time.perf_counter() - started)
        self.tally.answers[route, status] += 1
        self.tally.requests += 1
        if status not in expected:
            self.tally.unexpected.append(
                f"{method} {path}: {status}, expected "
                f"{' or '.join(map(str, sorted(expected)))}: "
                f"{data[:200]!r}"
            )
        if status == NO_ANSWER:
            time.sleep(0.1)  # a server that is gone: do not spin
        return status, headers, data

    # Users

    def sign_up(self):
        username, password = next(self.usernames), f"pw-{self.rng.random()}"
        status, _, data = self.call(
            "POST /users",
            {201},
            "POST",
            "/users",
            {
                "username": username,
                "password": password,
                "email": f"{username}@example.com",
                "gender": self.rng.choice(("female", "male", None)),
            },
        )
        if status == 201:
            answer = json.loads(data)
            self.players.append(Player(answer["user"]["id"], username, password, answer["token"]))
            self.known_ids.append(answer["user"]["id"])

    def log_in(self):
        player = self.some_player()
        if self.rng.random() < WRONG_PASSWORD_SHARE:
            # 429 too: ten failures within five minutes lock a username, as they should.
            self.call(
                "POST /login",
                {401, 429},
                "POST",
                "/login",
                {"username": player.username, "password": "wrong"},
            )
            return
        status, _, data = self.call(
            "POST /login",
            {200, 429},
            "POST",
            "/login",
            {"username": player.username, "password": player.password},
        )
        if status == 200:
            player.token = json.loads(data)["token"]

    def delete_user(self):
        player = self.players.pop(self.rng.randrange(len(self.players)))
        status, _, _ = self.call(
            "DELETE /users/{id}", {204}, "DELETE", f"/users/{player.id}", token=player.token
        )
        if status != 204:
            self.players.append(player)
        elif player.report_waiting and self.players:
            self.check_report(player, deleted=True)

    def delete_all_users(self):
        """Clean up, for a DATABASE_URL that outlives the run."""
        while self.players:
            self.delete_user()

    # Reads

    def some_player(self):
        return self.rng.choice(self.players)

    def some_user_id(self):
        """Half the time one's own user, else any user signed up so far: maybe deleted since."""
        if self.rng.random() < 0.5 or not self.known_ids:
            return self.some_player().id, {200}
        return self.rng.choice(self.known_ids), {200, 404}

    def read_user(self):
        user_id, expected = self.some_user_id()
        self.call("GET /users/{id}", expected, "GET", f"/users/{user_id}")

    def read_me(self):
        self.call("GET /users/me", {200}, "GET", "/users/me", token=self.some_player().token)

    def list_users(self):
        limit, offset = self.rng.choice((10, 20, 50, 100)), self.rng.randrange(0, 200, 10)
        self.call("GET /users", {200}, "GET", f"/users?limit={limit}&offset={offset}")

    def read_stats(self):
        user_id, expected = self.some_user_id()
        self.call(
            "GET /users/{id}/stats",
            expected,
            "GET",
            f"/users/{user_id}/stats",
            token=self.some_player().token,
        )

    # Stats writes

    def patch_stats(self):
        stats = sample_stats(self.rng.randrange(10_000))
        some = dict(self.rng.sample(sorted(stats.items()), self.rng.randint(1, len(stats))))
        self.write_stats("PATCH", some)

    def put_stats(self):
        self.write_stats("PUT", sample_stats(self.rng.randrange(10_000)))

    def write_stats(self, method, stats):
        player = self.some_player()
        self.call(
            f"{method} /users/{{id}}/stats",
            {200},
            method,
            f"/users/{player.id}/stats",
            stats,
            player.token,
        )

    # PDF reports

    def request_report(self):
        # As a person would: no second request for a user before the first one's PDF came.
        # That also makes the first new ETag after a 202 the PDF that 202 promised.
        idle = [player for player in self.players if not player.report_waiting]
        if not idle:
            return self.fetch_report()
        player = self.rng.choice(idle)
        status, _, _ = self.call(
            "POST /users/{id}/pdf", {202}, "POST", f"/users/{player.id}/pdf", token=player.token
        )
        if status == 202:
            player.report_asked = player.report_waiting = True
            self.tally.reports["requested"] += 1

    def fetch_report(self):
        """Mostly a PDF still awaited, else one asked for before, else (a 404) any."""
        waiting = [player for player in self.players if player.report_waiting]
        asked = [player for player in self.players if player.report_asked]
        self.check_report(self.rng.choice(waiting or asked or self.players))

    def check_report(self, player, deleted=False):
        """GET a player's PDF; settle its request when the answer is its end."""
        if deleted:  # with another user's token: the player's own died with it
            expected, token = {404}, self.some_player().token
        elif player.report_waiting:
            expected, token = {200, 202, 409}, player.token
        else:
            expected, token = ({200, 409} if player.report_asked else {404}), player.token
        status, headers, data = self.call(
            "GET /users/{id}/pdf", expected, "GET", f"/users/{player.id}/pdf", token=token
        )
        if status == 200 and not data.startswith(b"%PDF"):
            self.tally.unexpected.append(
                f"GET /users/{player.id}/pdf: 200 but not a PDF: {data[:200]!r}"
            )
        elif status == 200 and headers.get("ETag") != player.report_etag:
            player.report_etag = headers.get("ETag")
            self.new_report(player, headers, data)
            self.settle_report(player, "produced")
        elif status == 409:
            self.settle_report(player, "failed")
        elif status == 404 and deleted:
            self.settle_report(player, "user deleted")

    def new_report(self, player, headers, data):
        """A PDF of the player's not seen before, before it settles a request
        (chaos.py reads what it shows)."""

    def settle_report(self, player, outcome):
        if player.report_waiting:
            player.report_waiting = False
            self.tally.reports[outcome] += 1

    def wait_for_reports(self, until, stopping):
        while not stopping.is_set():
            waiting = [player for player in self.players if player.report_waiting]
            if not waiting:
                return
            if time.monotonic() > until:
                for player in waiting:
                    player.report_waiting = False
                    self.tally.unexpected.append(
                        f"no end to the PDF requested for user "
                        f"{player.id} within {REPORT_DEADLINE} s "
                        "of the load's end"
                    )
                return
            for player in waiting:
                self.check_report(player)
            time.sleep(POLL_INTERVAL)


# Memory


@dataclass
class Sample:
    second: float
    rss_mib: dict  # process name: MiB, None once it has died


def rss_or_none(process):
    try:
        return proc_status_mib(process.popen.pid, "VmRSS") if running(process) else None
    except (OSError, RuntimeError):  # gone between the two
        return None


def sample_memory(processes, started, interval, stop, samples, clients):
    """Every interval until stop, then once more: the RSS of each process, and progress."""
    while True:
        stopping = stop.wait(interval)
        sample = Sample(
            time.monotonic() - started,
            {name: rss_or_none(process) for name, process in processes.items()},
        )
        samples.append(sample)
        rss = ", ".join(
            f"{name} {mib:.1f}" if mib else f"{name} DEAD" for name, mib in sample.rss_mib.items()
        )
        progress(
            f"{sample.second:4.0f} s: {sum(c.tally.requests for c in clients):,} "
            f"requests; RSS MiB: {rss}"
        )
        if stopping:
            return


def rss_growth(samples, name, warm_up_seconds):
    """(MiB at the first sample after the warm-up, at the last, growth), or None if it died."""
    settled = [s.rss_mib[name] for s in samples if s.second >= warm_up_seconds]
    if not settled or None in settled:
        return None
    return settled[0], settled[-1], settled[-1] / settled[0] - 1


# The run


@dataclass
class Outcome:
    seconds: int
    tally: Tally
    load_requests: int  # those of the load, without the wait for PDFs and the clean-up
    samples: list
    process_names: list
    dead: dict  # process name: (exit code, the end of its log)
    problems: list  # log lines that say something went wrong
    database: str
    queue: str


def run_soak(seconds):
    with bench_setup.Service("soak", RABBITMQ_URL) as service:
        database = os.environ.get("DATABASE_URL")
        if database:
            service.env["DATABASE_URL"] = database
        service.start()
        processes = {"server": service.server}
        for number in range(1, WORKERS + 1):
            processes[f"worker {number}"] = service.start_worker()
        progress(
            f"server on port {service.port} and {WORKERS} workers on queue "
            f"{service.queue_name}; {CLIENTS} clients for {seconds} s"
        )
        tally, load_requests, samples = drive(service.port, processes, seconds)
        outcome = Outcome(
            seconds,
            tally,
            load_requests,
            samples,
            list(processes),
            {
                name: (process.popen.returncode, process.output().splitlines()[-20:])
                for name, process in processes.items()
                if not running(process)
            },
            service.problems(),
            shown_database(database),
            service.queue_name,
        )
    progress("processes stopped; queue and temporary folder removed")
    return outcome


def shown_database(url):
    if not url:
        return "SQLite in a temporary folder"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def drive(port, processes, seconds):
    """The clients' load, then their wait for PDFs, with RSS samples during the load."""
    run_tag = "s" + os.urandom(3).hex()  # unique usernames, should DATABASE_URL be shared
    # About as many as are alive at a time: reads find mostly live users, some deleted ones.
    known_ids = deque(maxlen=CLIENTS * USERS_PER_CLIENT[1])
    clients = [SoakClient(number, port, run_tag, known_ids) for number in range(CLIENTS)]
    started = time.monotonic()
    load_until = started + seconds
    stopping, stop_sampling, samples = threading.Event(), threading.Event(), []
    interval = min(5, seconds / 10)
    sampler = threading.Thread(
        target=sample_memory, args=(processes, started, interval, stop_sampling, samples, clients)
    )
    sampler.start()
    pool = ThreadPoolExecutor(CLIENTS)
    try:
        runs = [
            pool.submit(client.run, load_until, load_until + REPORT_DEADLINE, stopping)
            for client in clients
        ]
        time.sleep(max(0, load_until - time.monotonic()))
        load_requests = sum(client.tally.requests for client in clients)
        stop_sampling.set()
        progress("load over; waiting for the PDFs still pending, then deleting the users")
        for run in runs:
            run.result()
    finally:
        stopping.set()  # on Ctrl-C or SIGTERM: the clients stop after their request in flight
        stop_sampling.set()
        pool.shutdown()
        sampler.join()
    tally = Tally()
    for client in clients:
        tally.merge(client.tally)
    return tally, load_requests, samples


# The tables


def requests_section(outcome):
    section = Section("Requests")
    tally = outcome.tally
    statuses = sorted({status for _, status in tally.answers}, key=str)
    rows = []
    for route in sorted(tally.seconds, key=lambda r: (r.split()[1], r.split()[0])):
        durations = tally.seconds[route]
        rows.append(
            [
                route,
                f"{len(durations):,}",
                *(
                    f"{tally.answers[route, s]:,}" if tally.answers[route, s] else ""
                    for s in statuses
                ),
                f"{statistics.median(durations) * 1000:.1f}",
                f"{percentile(durations, 0.99) * 1000:.1f}",
            ]
        )
    rows.append(
        [
            "all",
            f"{tally.requests:,}",
            *(
                f"{sum(n for (_, s), n in tally.answers.items() if s == status):,}"
                for status in statuses
            ),
            "",
            "",
        ]
    )
    section.note(
        f"{outcome.load_requests / outcome.seconds:,.0f} requests/s during the load; "
        "the counts include the wait for PDFs and the clean-up after it. Times are "
        "client-side, while the clients, server and workers share this machine's "
        f"{os.cpu_count()} cores."
    )
    section.table(["route", "requests", *map(str, statuses), "p50 ms", "p99 ms"], rows)
    server_errors = sum(
        n for (_, status), n in tally.answers.items() if status == NO_ANSWER or status >= 500
    )
    unexpected = len(tally.unexpected)
    section.table(
        ["check", "count", "target"],
        [
            ["5xx or no answer", server_errors, section.target(server_errors == 0, "0")],
            [
                "answers the contract does not allow here (5xx included)",
                unexpected,
                section.target(unexpected == 0, "0"),
            ],
        ],
    )
    if tally.unexpected:
        section.note("The first of them:")
        section.lines += ["", *(f"    {line}" for line in tally.unexpected[:15]), ""]
    return section


def reports_section(outcome):
    section = Section("PDF reports")
    reports = outcome.tally.reports
    ended = reports["produced"] + reports["failed"] + reports["user deleted"]
    lost = reports["requested"] - ended
    section.note(
        "Each 202 of POST /users/{id}/pdf ends as a new PDF (a 200 with a new ETag), "
        "a failed report (409), or a 404 because its user was deleted meanwhile. "
        f"After the load, the last ones had {REPORT_DEADLINE} s to end."
    )
    section.table(
        [
            "requested (202)",
            "produced (200 PDF)",
            "failed (409)",
            "user deleted (404)",
            "no end",
            "target",
        ],
        [
            [
                reports["requested"],
                reports["produced"],
                reports["failed"],
                reports["user deleted"],
                lost,
                section.target(lost == 0, "every request ends"),
            ]
        ],
    )
    return section


def memory_section(outcome):
    section = Section("Memory (RSS, MiB)")
    warm_up = outcome.seconds * WARM_UP_SHARE
    names = outcome.process_names
    section.note(
        f"Sampled every {min(5, outcome.seconds / 10):g} s during the load; growth "
        f"counts from the first sample after a warm-up of {warm_up:g} s "
        f"({WARM_UP_SHARE:.0%} of the run)."
    )
    section.table(
        ["second", *names],
        [
            [
                f"{sample.second:.0f}",
                *(f"{sample.rss_mib[n]:.1f}" if sample.rss_mib[n] else "dead" for n in names),
            ]
            for sample in shown_samples(outcome.samples, warm_up)
        ],
    )
    rows = []
    for name in names:
        growth = rss_growth(outcome.samples, name, warm_up)
        if growth is None:  # its death fails the Processes section
            rows.append([name, "", "", "died", ""])
            continue
        first, last, change = growth
        rows.append(
            [
                name,
                f"{first:.1f}",
                f"{last:.1f}",
                f"{change:+.1%}",
                section.target(change < MAX_RSS_GROWTH, f"< {MAX_RSS_GROWTH:.0%}"),
            ]
        )
    section.table(["process", "after warm-up", "at the end", "growth", "target"], rows)
    return section


def shown_samples(samples, warm_up, most=15):
    """At most about `most` rows: evenly spread, always with the warm-up's end and the last."""
    step = max(1, len(samples) // most)
    after_warm_up = next((s for s in samples if s.second >= warm_up), None)
    return [
        s for i, s in enumerate(samples) if i % step == 0 or s is after_warm_up or s is samples[-1]
    ]


def processes_section(outcome):
    section = Section("Processes")
    section.table(
        ["process", "state", "target"],
        [
            [
                name,
                f"died (exit code {outcome.dead[name][0]})"
                if name in outcome.dead
                else "running to the end",
                section.target(name not in outcome.dead, "alive"),
            ]
            for name in outcome.process_names
        ],
    )
    for name, (_, log_tail) in outcome.dead.items():
        section.note(f"The end of the log of {name}:")
        section.lines += ["", *(f"    {line}" for line in log_tail), ""]
    if outcome.problems:
        section.note(
            f"The processes logged {len(outcome.problems)} problem line(s); the first ones:"
        )
        section.lines += ["", *(f"    {line}" for line in outcome.problems[:15]), ""]
    return section


def print_report(outcome):
    print(
        f"# Soak: {outcome.seconds} s\n\n"
        f"{CLIENTS} clients (threads, one keep-alive connection each) against server.py and "
        f"{WORKERS} worker.py processes; RabbitMQ at {RABBITMQ_URL} (queue "
        f"{outcome.queue}, deleted afterwards); database: {outcome.database}. "
        f"SCRYPT_N={SCRYPT_N} (production: {PRODUCTION_SCRYPT_N}) keeps sign-ups and logins "
        "cheap, and "
        + ", ".join(f"{name}={value}" for name, value in RELAXED_LIMITS.items())
        + " let all the clients sign up and log in from one address (the soak is not "
        "about the abuse limits: `./run.sh bench --only abuse` measures them). "
        f"Each client keeps {USERS_PER_CLIENT[0]} to {USERS_PER_CLIENT[1]} users of its own, "
        f"signs up and deletes them over time, and picks actions with these weights: "
        + ", ".join(f"{name} {weight}" for name, weight in WEIGHTS.items())
        + ". Users left at the end are deleted (part of the counts).\n",
        flush=True,
    )
    sections = [
        requests_section(outcome),
        reports_section(outcome),
        memory_section(outcome),
        processes_section(outcome),
    ]
    for section in sections:
        print(section.markdown(), flush=True)
    failed = sum(section.failed for section in sections)
    passed = sum(section.passed for section in sections)
    print(f"Soak {'passed' if not failed else 'FAILED'}: {passed} targets met, {failed} missed.")
    return failed == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "seconds", nargs="?", type=int, help="how long the load lasts (default 60; 90 with --chaos)"
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="two servers and two workers on PostgreSQL and a RabbitMQ node of the run's own, "
        "killed and restarted under the load (tools/chaos.py)",
    )
    options = parser.parse_args()
    if options.chaos:
        import chaos

        sys.exit(chaos.main(parser, options.seconds))
    seconds = 60 if options.seconds is None else options.seconds
    if seconds < 10:
        parser.error("SECONDS must be at least 10")
    if rabbitmq_version() is None:
        sys.exit(f"RabbitMQ does not answer at {RABBITMQ_URL}: the soak needs it.")
    # On SIGTERM, unwind like on Ctrl-C: every process started is stopped, the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(0 if print_report(run_soak(seconds)) else 1)


if __name__ == "__main__":
    main()
