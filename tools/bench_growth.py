"""The growth section: reads with few and with many users in the database, and the leaderboard.

`./run.sh bench --only growth`. Users seeded straight into the database
(bench_users.py): into SQLite at each size, and at the largest also into a
scratch PostgreSQL database, made on POSTGRES_URL's server and dropped at the
end (its rows are skipped when that server does not answer). Then the API
section's load, interleaved: GET /users/{id} and GET /users?limit=100 on each
SQLite size; and at the largest size, on each database, the first page of
GET /leaderboard for each order beside GET /users?limit=100 (CONTRACT.md, Leaderboard: at
least half its requests per second).
"""

import json
import os
import statistics
from contextlib import ExitStack
from dataclasses import dataclass

from bench_load import LOAD_CONNECTIONS, Load, apply_load, failures
from bench_record import Section, repetitions_text, spread
from bench_setup import Client, progress, testing
from bench_users import SEED_BATCH
from sqlalchemy.exc import OperationalError

TITLE = "Growth: reads with few and with many users"
# A server whose user may create databases: the tests' own, else this machine's.
POSTGRES_URL = os.environ.get("TEST_DATABASE_URL") or (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SQLITE, POSTGRESQL = "SQLite", "PostgreSQL"
LIST = "GET /users?limit=100"
ROUTES = {
    "GET /users/{id}": lambda size, token: Load("GET", "/users/{id}", max_id=size),
    LIST: lambda size, token: Load("GET", "/users?limit=100"),
}
ORDERS = ("victory_count", "loss_count", "session_count", "total_time", "win_rate")  # leaderboard's
BOARD = {
    f"GET /leaderboard?by={by}": lambda size, token, by=by: Load(
        "GET", f"/leaderboard?by={by}", token=token
    )
    for by in ORDERS
}
BOARD_TARGET = 0.5  # of the list's requests per second, on the same database
HEADER = ["route", "req/s", "p50 ms", "p99 ms", "non-2xx / socket errors"]


@dataclass(frozen=True)
class Database:
    """A service measured: which database, and how many users it holds."""

    name: str
    size: int
    service: object  # bench_setup.Service, started
    token: str  # of a user signed up through the API: the leaderboard needs one


def measure(run, parts=None):
    settings = run.settings
    section = Section(TITLE)
    sizes, largest = settings.growth_sizes, settings.growth_sizes[-1]
    results = {}
    with ExitStack() as stack:
        databases = [seeded_service(run, stack, SQLITE, size) for size in sizes]
        postgres = scratch_postgres(stack)
        if postgres:
            databases.append(seeded_service(run, stack, POSTGRESQL, largest, postgres.url))
        boards = [d for d in databases if d.size == largest]
        mismatches = compare_boards(boards)
        plan = [(route, d) for route in ROUTES for d in databases if d.name == SQLITE]
        plan += [(LIST, d) for d in boards if d.name != SQLITE]
        plan += [(route, d) for route in BOARD for d in boards]
        for repetition in range(1, settings.repetitions + 1):
            for route, d in plan:
                load = {**ROUTES, **BOARD}[route](d.size, d.token)
                result = apply_load(d.service.port, load, settings.load_seconds, run.folder)
                results.setdefault((route, d.name, d.size), []).append(result)
                progress(
                    f"growth {repetition}/{settings.repetitions} {route} {d.name} "
                    f"{d.size:,} users: {result.requests_per_second:,.0f} req/s, "
                    f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
                )
        for d in databases:
            d.service.check_running()
        problems = [line for d in databases for line in d.service.problems()]

    growth_table(section, settings, results)
    board_table(section, settings, results, [d.name for d in boards], largest, mismatches)
    section.problems(problems)
    return section


def seeded_service(run, stack, name, size, url=None):
    """A service on size seeded users (on url, else its own SQLite), started, and a token."""
    service = stack.enter_context(run.service(f"growth-{name.lower()}-{size}"))
    if url:
        service.env["DATABASE_URL"] = url
    seconds = service.seed_users(size)
    progress(f"growth: seeded {size:,} users into {name} in {seconds:.1f} s")
    service.start()
    client = Client(service.port)
    answer = client.expect(
        201,
        "POST",
        "/users",
        {"username": "leaderboard-reader", "email": None, "password": "bench-password"},
    )
    client.close()
    return Database(name, size, service, json.loads(answer)["token"])


def scratch_postgres(stack):
    """A new database on POSTGRES_URL's server, dropped when the stack closes; None if
    that server does not answer."""
    try:
        postgres = testing.ScratchPostgres(POSTGRES_URL)
    except OperationalError as error:
        progress(f"growth: PostgreSQL does not answer at {POSTGRES_URL}, its rows skipped: {error}")
        return None
    stack.callback(postgres.drop)  # after the service on it stops: the stack unwinds backwards
    return postgres


def compare_boards(boards):
    """Each order's first page is the same on every database (the same seeded users):
    notes on those that differ, if any."""
    notes = []
    for by in ORDERS:
        pages = {}
        for d in boards:
            client = Client(d.service.port)
            answer = client.expect(200, "GET", f"/leaderboard?by={by}", token=d.token)
            client.close()
            pages[d.name] = json.loads(answer)
        if len({json.dumps(page, sort_keys=True) for page in pages.values()}) > 1:
            progress(f"growth: the first page by {by} differs between databases: {pages}")
            notes.append(f"The first page by {by} differs between {' and '.join(pages)}.")
    return notes


def growth_table(section, settings, results):
    sizes = settings.growth_sizes
    rows = []
    for route in ROUTES:
        smallest = statistics.median(r.p50_ms for r in results[route, SQLITE, sizes[0]])
        for size in sizes:
            runs = results[route, SQLITE, size]
            growth = statistics.median(r.p50_ms for r in runs) / smallest
            target = (
                ""
                if size == sizes[0]
                else section.target(growth <= 1.3, f"p50 ≤ 1.3x of {sizes[0]:,} users")
            )
            rows.append([route, f"{size:,}", *figures(runs), f"{growth:.2f}x", target])
    section.note(
        f"Users seeded straight into SQLite; GET /users/{{id}} asks for random ids. "
        f"The same load as the API section ({LOAD_CONNECTIONS} connections, "
        f"{settings.load_seconds} s), {repetitions_text(settings)}."
    )
    section.table([*HEADER[:1], "users", *HEADER[1:], f"p50 / {sizes[0]:,} users", "target"], rows)


def board_table(section, settings, results, names, size, mismatches):
    rows = []
    for name in names:
        listed = statistics.median(r.requests_per_second for r in results[LIST, name, size])
        for route in (LIST, *BOARD):
            runs = results[route, name, size]
            ratio = statistics.median(r.requests_per_second for r in runs) / listed
            target = (
                ""
                if route == LIST
                else section.target(ratio >= BOARD_TARGET, f"≥ {BOARD_TARGET}x of {LIST} (req/s)")
            )
            rows.append([name, route, *figures(runs), f"{ratio:.2f}x", target])
    both = POSTGRESQL in names
    section.note(
        f"The leaderboard at {size:,} users, "
        + (
            "in SQLite (the rows above) and in a PostgreSQL database of its own"
            if both
            else f"in SQLite only (PostgreSQL did not answer at {POSTGRES_URL})"
        )
        + f": the first page (limit 10) of each order, with a token, interleaved with {LIST} "
        "on the same database; the same load and repetitions. The seeded stats are random "
        "(a seeded RNG: the same users on every run and database): a tenth of the users "
        "never played, most a few dozen games, a few some hundreds, so that many tie. "
        f"Seeded in batches of {SEED_BATCH:,}, then user_count recounted"
        + (
            ", and on PostgreSQL ANALYZE but no VACUUM (autovacuum off for its tables: the "
            "visibility map as a bulk load leaves it, which the planner prices as it does "
            "a table under writes). Before the load, each order's first page was "
            + ("the same on both databases." if not mismatches else "compared:")
            if both
            else "."
        )
    )
    for line in mismatches:
        section.note(line)
    section.table(
        ["database", *HEADER, f"req/s / {LIST}", "target"],
        rows,
    )


def figures(runs):
    return [
        spread([r.requests_per_second for r in runs]),
        spread([r.p50_ms for r in runs], 1),
        spread([r.p99_ms for r in runs], 1),
        failures(runs),
    ]
