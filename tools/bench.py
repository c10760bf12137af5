"""The benchmark: `./run.sh bench [--quick] [--only PART]... [--server-env NAME=VALUE]...`.

Every figure comes from real processes started from this checkout, each on a
data folder of its own in a temporary directory, as the tests start them:

  api      wrk (or, without wrk, a stdlib client) on GET /users/{id},
           GET /users?limit=100 and PATCH /users/{id}/stats, interleaved with
           the same load on a bare Bottle + Waitress app that serves constant
           data of the same shape: the framework's ceiling.
  reports  drawing.render against a naive matplotlib page, in this process
           (--only render: that alone); then POST-to-PDF over HTTP, with the
           embedded worker and with one and two worker processes on RabbitMQ:
           a gentle client one user after another and in a burst; a polled
           burst (8 clients polling, deaf to Retry-After); a waiting burst
           (Prefer: wait) and one waiting client at a time.
  growth   read latency with 1,000 and with 100,000 users in the database; and
           at 100,000 users, on SQLite and on PostgreSQL (a scratch database),
           the first page of GET /leaderboard for each order beside
           GET /users?limit=100.
  memory   peak RSS of the servers, and a worker's RSS after 50 and 200 jobs.
  abuse    on the service as deployed (its abuse limits, production scrypt):
           reads while one client floods sign-ups or logins (--only floods),
           and a new client's wait beside 300 and 2,000 half-open connections
           (--only half-open).

It prints markdown tables, each figure beside its target; a full run
also writes them to BENCHMARKS.md with the machine, the command and the date.

The parts, one job each: bench_setup.py (the processes: the tests' LiveService,
the ceiling; a client), bench_load.py (wrk), bench_api.py, bench_reports.py
and bench_report_clients.py, bench_growth.py, bench_memory.py, bench_abuse.py
(the sections), bench_record.py (tables, targets, BENCHMARKS.md), bench_proc.py
(RSS and CPU time from /proc), bench_users.py (the users, and seeding them)
and bench_ceiling.py (the bare app).
"""

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bench_abuse
import bench_api
import bench_growth
import bench_memory
import bench_reports
from bench_load import load_generator_name
from bench_record import document, ledger_of, machine_lines
from bench_setup import PROJECT, RABBITMQ_URL, Run, progress, rabbitmq_version


@dataclass(frozen=True)
class Settings:
    load_seconds: int  # each wrk run
    repetitions: int  # interleaved: service, ceiling, service, ceiling...
    render_samples: int  # drawing.render against the naive render, in this process
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

# The sections of BENCHMARKS.md in order, each measure(run, parts) giving one.
SECTIONS = {
    "api": bench_api.measure,
    "reports": bench_reports.measure,
    "growth": bench_growth.measure,
    "memory": bench_memory.measure,
    "abuse": bench_abuse.measure,
}
# Parts that --only runs alone, and their sections.
PARTS = {"render": "reports", "floods": "abuse", "half-open": "abuse"}


def chosen(only):
    """(section, its parts to run: None for all of them), in the sections' order."""
    if not only:
        return [(name, None) for name in SECTIONS]
    return [
        (name, None if name in only else {part for part in only if PARTS.get(part) == name})
        for name in SECTIONS
        if name in only or name in (PARTS.get(part) for part in only)
    ]


def run(options):
    settings = QUICK if options.quick else FULL
    server_env = dict(options.server_env)
    rabbitmq = rabbitmq_version()
    if rabbitmq is None:
        progress(f"RabbitMQ does not answer at {RABBITMQ_URL}: its parts are skipped")
    started, date, load_average = time.monotonic(), datetime.now(UTC), os.getloadavg()[0]
    if load_average > os.cpu_count() / 2:
        progress(
            f"the machine is busy already (load average {load_average:.2f}): expect noisy figures"
        )
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-") as temporary:
        context = Run(settings, Path(temporary), rabbitmq, server_env)
        for name, parts in chosen(options.only):
            progress(f"section {name}" + (f" ({', '.join(sorted(parts))})" if parts else ""))
            section = SECTIONS[name](context, parts)
            print(section.markdown(), flush=True)
            sections.append(section)

    minutes = (time.monotonic() - started) / 60
    passed = sum(s.passed for s in sections)
    failed = sum(s.failed for s in sections)
    print(f"Targets: {passed} met, {failed} missed. Run time {minutes:.1f} minutes.")
    output = options.output or (None if options.quick or options.only else "BENCHMARKS.md")
    if output:
        command = " ".join(["./run.sh bench", *sys.argv[1:]])
        machine = machine_lines(load_generator_name(), rabbitmq, load_average, server_env)
        previous = PROJECT / "BENCHMARKS.md"
        ledger = ledger_of(previous.read_text()) if previous.exists() else ""
        (PROJECT / output).write_text(
            document(command, date, minutes, options.quick, machine, sections, ledger)
        )
        print(f"Wrote {output}.")
    else:
        print("No file written (a --quick or --only run); --output FILE writes one.")


def variable(text):
    """NAME=VALUE, as --server-env takes it."""
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: short loads, 1 repetition, fewer users and jobs",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SECTIONS, *PARTS],
        help="run this section (or part of one) alone; repeat for several",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        type=variable,
        metavar="NAME=VALUE",
        help="set this variable in every process of the service (servers, workers, the "
        "seeding; not the ceiling) and for the render timed in this process, over the "
        "benchmark's own settings; repeatable",
    )
    parser.add_argument(
        "--output",
        help="write the markdown here (default: BENCHMARKS.md "
        "for a full run, nothing for --quick or --only)",
    )
    options = parser.parse_args()
    # On SIGTERM, unwind like on Ctrl-C: every process started is stopped, the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(options)


if __name__ == "__main__":
    main()
