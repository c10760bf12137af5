"""The growth section: reads with few and with many users in the database.

`./run.sh bench --only growth`. Users seeded straight into SQLite
(bench_users.py), then the API section's load on each database in turn.
"""

import statistics
from contextlib import ExitStack

from bench_load import LOAD_CONNECTIONS, Load, apply_load, failures
from bench_record import Section, repetitions_text, spread
from bench_setup import progress

TITLE = "Growth: reads with few and with many users"
ROUTES = {
    "GET /users/{id}": lambda size: Load("GET", "/users/{id}", max_id=size),
    "GET /users?limit=100": lambda size: Load("GET", "/users?limit=100"),
}


def measure(run, parts=None):
    settings = run.settings
    section = Section(TITLE)
    sizes = settings.growth_sizes
    results = {}
    with ExitStack() as stack:
        services = {}
        for size in sizes:
            service = stack.enter_context(run.service(f"growth-{size}"))
            seconds = service.seed_users(size)
            progress(f"growth: seeded {size:,} users in {seconds:.1f} s")
            service.start()
            services[size] = service
        for repetition in range(1, settings.repetitions + 1):
            for route, load_for in ROUTES.items():
                for size, service in services.items():
                    result = apply_load(
                        service.port, load_for(size), settings.load_seconds, run.folder
                    )
                    results.setdefault((route, size), []).append(result)
                    progress(
                        f"growth {repetition}/{settings.repetitions} {route} {size:,} users: "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
                    )
        for service in services.values():
            service.check_running()
        problems = [line for service in services.values() for line in service.problems()]

    rows = []
    for route in ROUTES:
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
    section.problems(problems)
    return section
