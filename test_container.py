"""The container image, run by podman: a server container and a worker
container on this machine's RabbitMQ and PostgreSQL, a report requested and
fetched, then both stopped with SIGTERM.

`./run.sh container-test` builds the image from this checkout and runs this
file. On its own: `.venv/bin/python -m unittest test_container` tests
CONTAINER_IMAGE (localhost/game-stats-api:latest by default). Where podman
cannot run, the image is missing, or RabbitMQ or PostgreSQL does not answer, it
skips, saying why, except under CI=true, where each of these is a failure.
Found by `./run.sh test` (unittest discovery) it skips unless CONTAINER_IMAGE
is set: the image there could be older than the checkout, and CI builds and
tests it afterwards, with `./run.sh container-test`.
"""

import http.client
import json
import os
import shlex
import shutil
import subprocess
import time
import unittest

from kombu import Connection
from sqlalchemy.exc import OperationalError

from testing import (
    CI,
    RABBITMQ_URL,
    Response,
    ScratchPostgres,
    free_port,
    pdf_text,
    rabbitmq_answers,
    unique_name,
    wait_until,
)

IMAGE = os.environ.get("CONTAINER_IMAGE") or "localhost/game-stats-api:latest"
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# What podman needs on this machine: runc (crun cannot set rlimits here), the
# rlimits set explicitly, and the host's network (the services are on its loopback).
PODMAN = shlex.split(os.environ.get("CONTAINER_PODMAN", "podman --runtime runc"))
RUN_OPTIONS = shlex.split(
    os.environ.get(
        "CONTAINER_RUN_OPTIONS",
        "--network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096",
    )
)
STOP_WITHIN = 10  # seconds, as README's Operations promises for SIGTERM

_found_by_discovery = False


def load_tests(loader, tests, pattern):
    """unittest's hook: a pattern is given only when discovery found this file."""
    global _found_by_discovery
    _found_by_discovery = pattern is not None
    return tests


def podman(*args, timeout=60, check=True):
    """Run podman with this machine's options; its CompletedProcess (text)."""
    run = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and run.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {run.returncode}\n{run.stderr}")
    return run


def unavailable(reason):
    """Skip for want of what the test needs, except in CI, where it must run."""
    if CI:
        raise AssertionError(f"{reason} (CI requires it)")
    raise unittest.SkipTest(reason)


def podman_problem():
    """Why podman cannot run containers of IMAGE here, or None."""
    if not shutil.which(PODMAN[0]):
        return f"no {PODMAN[0]} on PATH (./run.sh container-test installs it)"
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
        if info.returncode != 0:
            return f"podman cannot run here: {info.stderr.strip()[-500:]}"
        if podman("image", "exists", IMAGE, check=False).returncode != 0:
            return f"no image {IMAGE} (./run.sh container-test builds it)"
    except subprocess.TimeoutExpired as error:
        return f"podman did not answer: {error}"
    return None


def request(port, method, path, body=None, token=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body).encode()
    try:
        connection.request(method, path, body=body, headers=headers)
        return Response(connection.getresponse())
    finally:
        connection.close()


class Container:
    """A detached container of IMAGE, its exit code read after it stops."""

    def __init__(self, name):
        self.name = name

    def run(self, command, env):
        env_options = [option for key, value in env.items() for option in ("-e", f"{key}={value}")]
        # No periodic health check: podman would want systemd for its timer;
        # the test runs the check itself (podman healthcheck run).
        podman(
            "run", "--detach", "--name", self.name, "--health-interval", "disable",
            *RUN_OPTIONS, *env_options, IMAGE, *command,
        )  # fmt: skip
        return self

    def running(self):
        return self.inspect("{{.State.Running}}") == "true"

    def inspect(self, template):
        return podman("container", "inspect", "--format", template, self.name).stdout.strip()

    def logs(self):
        run = podman("logs", self.name, check=False)
        return run.stdout + run.stderr

    def stop_with_sigterm(self):
        """SIGTERM, then wait for the exit; (exit code, seconds taken).
        SIGKILL comes only after STOP_WITHIN + 5 s, so a slow stop shows as slow."""
        began = time.monotonic()
        podman("stop", "--time", str(STOP_WITHIN + 5), self.name, timeout=STOP_WITHIN + 30)
        took = time.monotonic() - began
        return int(self.inspect("{{.State.ExitCode}}")), took

    def remove(self):
        podman("rm", "--force", "--volumes", self.name, check=False, timeout=60)


class ContainerTest(unittest.TestCase):
    """One server container and one worker container, sharing a PostgreSQL
    database and a RabbitMQ queue of this test alone."""

    @classmethod
    def setUpClass(cls):
        if _found_by_discovery and not os.environ.get("CONTAINER_IMAGE"):
            raise unittest.SkipTest(
                "the container test runs from ./run.sh container-test, which builds the "
                "image from this checkout first (or set CONTAINER_IMAGE)"
            )
        problem = podman_problem()
        if problem:
            unavailable(problem)
        if not rabbitmq_answers():
            unavailable(f"no RabbitMQ answers at {RABBITMQ_URL}")
        try:
            cls.postgres = ScratchPostgres(POSTGRES_URL)
        except OperationalError as error:
            unavailable(f"no PostgreSQL at {POSTGRES_URL} ({error})")
        cls.queue = unique_name("test-container-")
        cls.port = free_port()
        # The server listens on the host's network (--network host): on loopback
        # alone, rather than on the image's HOST=0.0.0.0.
        cls.env = {
            "DATABASE_URL": cls.postgres.url,
            "BROKER_URL": RABBITMQ_URL,
            "REPORT_QUEUE": cls.queue,
            "JWT_SECRET": "test-secret-" + os.urandom(32).hex(),
            "HOST": "127.0.0.1",
            "PORT": str(cls.port),
        }
        cls.containers = []
        try:
            cls.server = cls.start("server", ["server"])
            wait_until(cls.server_answers, timeout=60, what="the server container")
            cls.worker = cls.start("worker", ["worker"])
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, part, command):
        container = Container(f"{cls.queue}-{part}")
        cls.containers.append(container)  # removed at the end, even if it fails to start
        return container.run(command, cls.env)

    @classmethod
    def server_answers(cls):
        if not cls.server.running():
            raise AssertionError("the server container exited:\n" + cls.server.logs())
        try:
            return request(cls.port, "GET", "/healthz").status == 200
        except OSError:
            return False

    @classmethod
    def tearDownClass(cls):
        for container in reversed(cls.containers):
            container.remove()
        cls.postgres.drop()
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            channel = connection.default_channel
            channel.queue_delete(cls.queue)
            channel.exchange_delete(cls.queue)
            channel.exchange_delete(f"{cls.queue}.settled")

    def request(self, *args, **kwargs):
        return request(self.port, *args, **kwargs)

    def test_the_image_as_built(self):
        config = podman(
            "image", "inspect", "--format", "{{json .Config.User}} {{.Config.Env}}", IMAGE
        )
        user, env = config.stdout.strip().split(" ", 1)
        self.assertNotIn(user.strip('"'), ("", "root", "0"), "the image must not run as root")
        self.assertIn("HOST=0.0.0.0", env)
        uid = podman("exec", self.server.name, "python", "-c", "import os; print(os.getuid())")
        self.assertNotEqual(uid.stdout.strip(), "0")
        # The browser pages: files of the project (console/) and of a pinned package.
        for path in ("/", "/docs"):
            answer = self.request("GET", path)
            self.assertEqual(answer.status, 200, f"{path}: {answer.body[:300]!r}")
        # The image's HEALTHCHECK (GET /healthz), run once by hand.
        self.assertEqual(
            podman("healthcheck", "run", self.server.name, check=False).returncode,
            0,
            self.server.logs(),
        )

    def test_z_a_report_made_by_the_worker_container_then_both_stop_on_sigterm(self):
        # (z: the last test of the class, since it stops both containers.)
        username = unique_name()
        answer = self.request("POST", "/users", {"username": username, "password": "secret-pw"})
        self.assertEqual(answer.status, 201, answer.body)
        user, token = answer.json["user"], answer.json["token"]
        stats = {"victory_count": 31337, "loss_count": 4, "session_count": 12, "total_time": 5000}
        answer = self.request("PUT", f"/users/{user['id']}/stats", stats, token=token)
        self.assertEqual(answer.status, 200, answer.body)
        answer = self.request("POST", f"/users/{user['id']}/pdf", token=token)
        self.assertEqual(answer.status, 202, answer.body)

        def served():
            if not self.worker.running():
                raise AssertionError("the worker container exited:\n" + self.worker.logs())
            # Prefer: wait answers as soon as the worker is done (at most 5 s a request).
            answer = self.request(
                "GET", f"/users/{user['id']}/pdf", token=token, headers={"Prefer": "wait=5"}
            )
            self.assertIn(answer.status, (200, 202), answer.body)
            return answer if answer.status == 200 else None

        pdf = wait_until(served, timeout=60, what="the report from the worker container")
        self.assertEqual(pdf.header("Content-Type"), "application/pdf")
        self.assertTrue(pdf.body.startswith(b"%PDF-"))
        text = pdf_text(pdf.body)
        self.assertIn(username, text)
        self.assertIn("31337", text)

        for container in (self.worker, self.server):
            with self.subTest(container=container.name):
                code, took = container.stop_with_sigterm()
                logs = container.logs()
                self.assertEqual(code, 0, f"exit code {code} after SIGTERM:\n{logs}")
                self.assertLess(took, STOP_WITHIN, f"took {took:.1f}s to stop:\n{logs}")
                self.assertNotIn("Traceback", logs)
        self.assertIn("finished job", self.worker.logs())


if __name__ == "__main__":
    unittest.main()
