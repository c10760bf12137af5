"""Load: wrk on one route, or without wrk a stdlib client of the same shape, for the same figures.

apply_load(port, load, seconds, folder) runs LOAD_CONNECTIONS keep-alive
connections on LOAD_THREADS threads (wrk) or processes (the stdlib client) for
seconds, and gives requests per second, p50 and p99 latency, non-2xx answers
and socket errors. processes_of_threads also carries the Under abuse
section's flood: connections spread over processes of threads.
"""

import http.client
import json
import random
import re
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from bench_record import percentile

LOAD_THREADS, LOAD_CONNECTIONS = 2, 32


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


def failures(runs):
    """The table cell "non-2xx / socket errors" of some runs."""
    return f"{sum(r.non_2xx for r in runs)} / {sum(r.socket_errors for r in runs)}"


# wrk


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


# Without wrk: processes of threads, a keep-alive connection each


@contextmanager
def processes_of_threads(processes, connection, arguments, seconds, connections):
    """connection(*arguments, deadline, number) on connections threads in each of processes
    processes, numbered apart, until seconds from each process's start: a future for each
    process, of the list of its connections' results."""
    with ProcessPoolExecutor(processes) as pool:
        yield [
            pool.submit(_threads, connection, arguments, seconds, connections, process_number)
            for process_number in range(processes)
        ]


def _threads(connection, arguments, seconds, connections, process_number):
    deadline = time.monotonic() + seconds
    numbers = range(process_number * connections, (process_number + 1) * connections)
    with ThreadPoolExecutor(connections) as threads:
        return list(threads.map(lambda number: connection(*arguments, deadline, number), numbers))


def python_load(port, load, seconds, folder, connections=LOAD_CONNECTIONS):
    """wrk's figures from the standard library: processes of keep-alive connections in threads."""
    per_process = connections // LOAD_THREADS
    with processes_of_threads(
        LOAD_THREADS, _load_connection, (port, load), seconds, per_process
    ) as runs:
        parts = [part for run in runs for part in run.result()]
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


apply_load = wrk_load if shutil.which("wrk") else python_load


def load_generator_name():
    if apply_load is python_load:
        return (
            f"stdlib client ({LOAD_THREADS} processes × "
            f"{LOAD_CONNECTIONS // LOAD_THREADS} keep-alive connections; wrk not installed)"
        )
    head = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return (head.splitlines() or ["wrk"])[0].split(" Copyright")[
        0
    ] + f" (-t{LOAD_THREADS} -c{LOAD_CONNECTIONS} --latency)"
