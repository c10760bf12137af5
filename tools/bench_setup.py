"""Set-up: the processes under test, started as the tests start them, and a client to fill them.

Service is the service's server (and any workers) on the tests' LiveService
(testing.py): a data folder of its own, SQLite in it, and an environment
built there, not the caller's; the benchmark adds its own settings to it, and
last the --server-env variables of the command line. Ceiling is the bare
Bottle + Waitress app (bench_ceiling.py). Client is a keep-alive HTTP client,
for setting up and for timing reports.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from bench_proc import cpu_seconds
from bench_users import sample_stats, sample_user_fields

PROJECT = Path(__file__).resolve().parent.parent  # the service, one folder up
sys.path.insert(0, str(PROJECT))  # the tests' helper, and the service's modules

import testing  # noqa: E402

RABBITMQ_URL = testing.RABBITMQ_URL
# Sign-ups only prepare the benchmark (no measured request hashes a password),
# and at the production cost (2**14) each takes 0.3 s: hundreds of them would
# take minutes. Stated in BENCHMARKS.md.
SCRYPT_N = 1024
PRODUCTION_SCRYPT_N = 2**14  # config.py's default; the "Under abuse" section's
# The set-up's sign-ups and logins outrun the defaults; "Under abuse" measures those, as deployed.
RELAXED_LIMITS = {"SIGNUP_RATE": "1000000", "LOGIN_RATE": "1000000", "HASH_CONCURRENCY": "8"}


def progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    """What every section is measured with."""

    settings: object  # bench.py's FULL or QUICK
    folder: Path  # the run's temporary folder: wrk's scripts, the ceiling's log
    rabbitmq: str | None  # RabbitMQ's version; None: it did not answer
    server_env: dict  # --server-env: for every server and worker, over all else

    def service(self, name, on_rabbitmq=False, production=False):
        broker_url = RABBITMQ_URL if on_rabbitmq else "memory://"
        return Service(name, broker_url, production, self.server_env)


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

    def answers(self, path):
        """Whether GET path is answered 200."""
        try:
            return self.request("GET", path)[0] == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            self.close()

    def close(self):
        self.connection.close()


@dataclass(frozen=True)
class User:
    id: int
    token: str


def running(process):
    return process.popen.poll() is None


class Service:
    """server.py, and any worker.py processes, on a testing.LiveService.

    production: the production scrypt cost and the service's own abuse limits,
    instead of the benchmark's cheap hashes and relaxed limits. server_env:
    variables for every process, over all the others.
    """

    def __init__(self, name, broker_url="memory://", production=False, server_env=None):
        self.name = name
        self.on_rabbitmq = broker_url.startswith("amqp")
        # A queue (and exchange) of this run alone, deleted by stop().
        self.queue_name = f"bench-{name}-{os.getpid()}-{int(time.time())}"
        self.live = testing.LiveService(
            HOST="127.0.0.1",
            BROKER_URL=broker_url,
            REPORT_QUEUE=self.queue_name,
            SCRYPT_N=str(PRODUCTION_SCRYPT_N if production else SCRYPT_N),
            **RELAXED_LIMITS,
        )
        self.env = self.live.env  # what every process gets: soak.py may change it before start
        # SQLite in WAL, as BENCHMARKS.md says, whatever TEST_DATABASE_URL says.
        self.env["DATABASE_URL"] = f"sqlite:///{self.live.dir}/app.db"
        if production:
            for variable in RELAXED_LIMITS:
                del self.env[variable]  # the service's own
        self.env.update(server_env or {})
        self.port = None
        self.server = None
        self.workers = []
        self._numbers = count(1)
        self._client = None

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        if error_type is not None and issubclass(error_type, Exception):  # not on Ctrl-C
            for process in self.live.processes:
                progress(
                    f"the end of {self.name}/{process.log_path.name}:\n{process.output()[-2000:]}"
                )
        self.stop()

    def start(self):
        self.server = self.live.start_server()
        self.port = self.live.port
        self._client = Client(self.port)

    def start_worker(self):
        worker = self.live.start_worker()
        self.workers.append(worker)
        self.wait_for_consumers(len(self.workers))
        return worker

    def stop_worker(self, worker):
        worker.stop()
        self.workers.remove(worker)
        self.wait_for_consumers(len(self.workers))

    def wait_for_consumers(self, number):
        testing.wait_until(
            lambda: self._consumers() == number,
            timeout=60,
            what=f"{number} worker(s) consuming {self.queue_name}",
        )

    def _consumers(self):
        from kombu import Connection

        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            try:
                channel = connection.default_channel
                return channel.queue_declare(self.queue_name, passive=True).consumer_count
            except connection.channel_errors:  # no queue: no worker has declared it yet
                return 0

    def wait_until_idle(self, timeout=60):
        """Until the server and its children use under a tenth of a core: its start-up
        goes on after it answers (its render child loads matplotlib)."""

        def idle():
            before = cpu_seconds(self.server.popen.pid)
            time.sleep(0.5)
            return cpu_seconds(self.server.popen.pid) - before < 0.05

        testing.wait_until(idle, timeout, f"the {self.name} server to be idle")

    def seed_users(self, number):
        """number users straight into a fresh database (bench_users.py); seconds taken."""
        start = time.perf_counter()
        script = Path(__file__).parent / "bench_users.py"
        subprocess.run(
            [sys.executable, str(script), str(number)], env=self.env, cwd=PROJECT, check=True
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
        return sum(cpu_seconds(process.popen.pid) for process in [self.server, *self.workers])

    def check_running(self):
        for process in [self.server, *self.workers]:
            if not running(process):
                raise RuntimeError(
                    f"{process.log_path.name} of {self.name} died:\n{process.output()[-3000:]}"
                )

    def problems(self):
        """The log lines that say something went wrong, with which process said them."""
        found = []
        for process in self.live.processes:
            name = f"{self.name}/{process.log_path.stem}"
            in_traceback = False
            for line in process.output().splitlines():
                # A traceback's last line, unindented, says what was raised.
                ends_traceback = in_traceback and line[:1] not in ("", " ")
                if ends_traceback or re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line):
                    found.append(f"{name}: {line.strip()[:240]}")
                if "Traceback (most recent call last)" in line:
                    in_traceback = True
                elif ends_traceback:
                    in_traceback = False
            if process.popen.returncode not in (None, 0, -signal.SIGTERM):
                found.append(f"{name}: exited with {process.popen.returncode}")
        return found

    def stop(self):
        if self._client:
            self._client.close()
        self.live.stop()
        if self.on_rabbitmq:
            try:
                testing.delete_queue(self.queue_name)
            except Exception as error:
                progress(f"could not delete the queue {self.queue_name}: {error!r}")


class Ceiling:
    """The bare Bottle + Waitress app (bench_ceiling.py) on a free port."""

    def __init__(self, folder):
        self.port = testing.free_port()
        self.process = testing.Process(
            "tools/bench_ceiling.py",
            {**testing.inherited_environment(), "PORT": str(self.port)},
            folder / "ceiling.log",
        )

    def __enter__(self):
        try:
            testing.wait_until(self._answers, what=f"the ceiling app on port {self.port}")
        except BaseException:
            self.process.stop()
            raise
        return self

    def _answers(self):
        if not running(self.process):
            raise RuntimeError(f"the ceiling app exited:\n{self.process.output()[-3000:]}")
        # Running still once it answers: not some other process that took the port first.
        return Client(self.port).answers("/users/1") and running(self.process)

    def __exit__(self, *_):
        self.process.stop()


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
