"""The API section: the service's three routes against the ceiling, under the same load.

`./run.sh bench --only api`. wrk on GET /users/{id}, GET /users?limit=100 and
PATCH /users/{id}/stats, service and ceiling interleaved, each repetition.
"""

import statistics

from bench_load import LOAD_CONNECTIONS, LOAD_THREADS, Load, apply_load, failures
from bench_record import Section, repetitions_text, spread
from bench_setup import Ceiling, progress

TITLE = "API: the service against a bare Bottle + Waitress app (the ceiling)"


def api_loads(user):
    """The three routes of the API section: (name, load, least share of the ceiling),
    the floors the service keeps whatever else changes (BENCHMARKS.md, What each trick buys)."""
    return [
        ("GET /users/{id}", Load("GET", f"/users/{user.id}"), 0.40),
        ("GET /users?limit=100", Load("GET", "/users?limit=100"), 0.45),
        # A new value each time: every PATCH is a real UPDATE, as a game's would be.
        (
            "PATCH /users/{id}/stats",
            Load("PATCH", f"/users/{user.id}/stats", '{"victory_count": {n}}', user.token),
            0.20,
        ),
    ]


def measure(run, parts=None):
    settings = run.settings
    section = Section(TITLE)
    results = {}
    with run.service("api") as service, Ceiling(run.folder) as ceiling:
        service.start()
        users = service.sign_up(100)  # a full page for GET /users?limit=100
        routes = api_loads(users[0])
        for repetition in range(1, settings.repetitions + 1):
            for name, load, _ in routes:
                for app, port in (("service", service.port), ("ceiling", ceiling.port)):
                    result = apply_load(port, load, settings.load_seconds, run.folder)
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
        failed = sum(r.non_2xx + r.socket_errors for r in service_runs)
        targets = ", ".join(
            [
                section.target(share >= least_share, f"≥ {least_share}x"),
                section.target(p99 <= 50, "p99 ≤ 50 ms"),
                section.target(failed == 0, "no non-2xx"),
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
    section.problems(problems)
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
