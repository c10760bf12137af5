"""The images, run by podman as compose.yaml runs them: the HTTPS proxy
(Caddy) in front of a server container, and a worker container, on a podman
network of the test's own; the server and the worker on this machine's
RabbitMQ and PostgreSQL. Over HTTPS, verified against the proxy's own CA: a
report requested and fetched; logins counted by the address the proxy saw,
whatever X-Forwarded-For a client writes; plain HTTP redirected to HTTPS;
HSTS. Then all three stopped with SIGTERM.

`./run.sh container-test` builds the images from this checkout and runs this
file. On its own: `.venv/bin/python -m unittest test_container` tests
CONTAINER_IMAGE and CONTAINER_PROXY_IMAGE (localhost/game-stats-api:latest
and localhost/game-stats-proxy:latest by default). Where podman cannot run,
an image is missing, or RabbitMQ or PostgreSQL does not answer, it skips,
saying why, except under CI=true, where each of these is a failure. Found by
`./run.sh test` (unittest discovery) it skips unless CONTAINER_IMAGE is set:
the image there could be older than the checkout, and CI builds and tests it
afterwards, with `./run.sh container-test`.
"""

import http.client
import json
import os
import shlex
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import unittest
import urllib.parse

from kombu import Connection
from sqlalchemy.exc import OperationalError

from testing import (
    CI,
    RABBITMQ_URL,
    Response,
    ScratchPostgres,
    free_port,
    past_busy,
    pdf_text,
    rabbitmq_answers,
    unique_name,
    wait_until,
)

IMAGE = os.environ.get("CONTAINER_IMAGE") or "localhost/game-stats-api:latest"
PROXY_IMAGE = os.environ.get("CONTAINER_PROXY_IMAGE") or "localhost/game-stats-proxy:latest"
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# What podman needs on this machine: runc (crun cannot set rlimits here) and
# the rlimits set explicitly. Each container's network is the test's own.
PODMAN = shlex.split(os.environ.get("CONTAINER_PODMAN", "podman --runtime runc"))
RUN_OPTIONS = shlex.split(
    os.environ.get("CONTAINER_RUN_OPTIONS", "--ulimit nofile=4096:4096 --ulimit nproc=4096:4096")
)
STOP_WITHIN = 10  # seconds, as README's Operations promises for SIGTERM
# Where the proxy keeps the root certificate of its own CA (proxy/Caddyfile).
PROXY_CA = "/data/caddy/pki/authorities/local/root.crt"
# The server's LOGIN_RATE here: the fourth login of a minute from one address is refused.
LOGIN_RATE = 3
HSTS = "max-age=31536000"
DEFAULT_PORTS = {"amqp": 5672, "postgresql": 5432}

_found_by_discovery = False


def load_tests(loader, tests, pattern):
    """unittest's hook: a pattern is given only when discovery found this file."""
    global _found_by_discovery
    _found_by_discovery = pattern is not None
    return tests


def podman(*args, timeout=60, check=True, input=None):
    """Run podman with this machine's options; its CompletedProcess (text)."""
    run = subprocess.run(
        [*PODMAN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
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
    """Why podman cannot run containers of the images here, or None."""
    if not shutil.which(PODMAN[0]):
        return f"no {PODMAN[0]} on PATH (./run.sh container-test installs it)"
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
        if info.returncode != 0:
            return f"podman cannot run here: {info.stderr.strip()[-500:]}"
        for image in (IMAGE, PROXY_IMAGE):
            if podman("image", "exists", image, check=False).returncode != 0:
                return f"no image {image} (./run.sh container-test builds it)"
    except subprocess.TimeoutExpired as error:
        return f"podman did not answer: {error}"
    return None


def request(connection, method, path, body=None, token=None, headers=None):
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


# A login from beside the proxy, in its network namespace: the proxy sees it
# come from 127.0.0.1, an address other than this machine's. Run by the
# image's Python (python -c, the username and password as arguments, the
# proxy's CA on stdin); prints the answer's status.
LOGIN_BESIDE_THE_PROXY = """
import http.client, json, ssl, sys
tls = ssl.create_default_context(cadata=sys.stdin.read())
connection = http.client.HTTPSConnection("localhost", 443, timeout=30, context=tls)
body = json.dumps({"username": sys.argv[1], "password": sys.argv[2]})
headers = {"Content-Type": "application/json", "X-Forwarded-For": "198.51.100.7"}
connection.request("POST", "/login", body, headers)
print(connection.getresponse().status)
"""


class Relay(socketserver.ThreadingTCPServer):
    """Listens on host (a free port) and joins each connection to target, a
    (host, port): how containers on the test's network reach this machine's
    RabbitMQ and PostgreSQL, which listen on its loopback alone."""

    daemon_threads = True

    def __init__(self, host, target):
        super().__init__((host, 0), _RelayedConnection)
        self.target = target
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class _RelayedConnection(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            upstream = socket.create_connection(self.server.target, timeout=10)
        except OSError:
            return  # the client sees its connection closed, as by a refusal
        with upstream:
            upstream.settimeout(None)  # an AMQP connection may be quiet for long
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join()  # until the other side closes too (its container removed, at the latest)


def _pipe(source, sink):
    """Copies source to sink until source ends, then ends sink's side too."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Container:
    """A detached container, its exit code read after it stops."""

    def __init__(self, name):
        self.name = name

    def run(self, image, command, env, options=()):
        env_options = [option for key, value in env.items() for option in ("-e", f"{key}={value}")]
        # No periodic health check: podman would want systemd for its timer;
        # the test runs the check itself (podman healthcheck run).
        podman(
            "run", "--detach", "--name", self.name, "--health-interval", "disable",
            *RUN_OPTIONS, *options, *env_options, image, *command,
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
    """compose.yaml's shape, on a podman network of this test alone: the proxy
    (its ports 80 and 443 published on free ports of 127.0.0.1, and nothing
    else published), one server container (named server on the network, as
    the Caddyfile wants) and one worker container, sharing a PostgreSQL
    database and a RabbitMQ queue of this test alone."""

    @classmethod
    def setUpClass(cls):
        if _found_by_discovery and not os.environ.get("CONTAINER_IMAGE"):
            raise unittest.SkipTest(
                "the container test runs from ./run.sh container-test, which builds the "
                "images from this checkout first (or set CONTAINER_IMAGE)"
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
        cls.queue = cls.network = unique_name("test-container-")
        cls.containers, cls.relays, cls.network_made = [], [], False
        cls.http_port, cls.https_port = free_port(), free_port()
        try:
            podman("network", "create", cls.network)
            cls.network_made = True
            # The proxy first: it brings the network's bridge up, this
            # machine's address on it (the gateway), where the relays listen.
            cls.proxy = cls.start(
                PROXY_IMAGE, "proxy", [], {},
                "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
                "--publish", f"127.0.0.1:{cls.http_port}:80",
                "--publish", f"127.0.0.1:{cls.https_port}:443",
            )  # fmt: skip
            gateway = podman(
                "network", "inspect", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}",
                cls.network,
            ).stdout.strip()  # fmt: skip
            proxy_address = cls.proxy.inspect(
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
            )
            cls.env = {
                "DATABASE_URL": cls.relayed(cls.postgres.url, gateway),
                "BROKER_URL": cls.relayed(RABBITMQ_URL, gateway),
                "REPORT_QUEUE": cls.queue,
                "JWT_SECRET": "test-secret-" + os.urandom(32).hex(),
                # The proxy alone is trusted (compose.yaml trusts its fixed address).
                "TRUSTED_PROXIES": proxy_address,
                "LOGIN_RATE": str(LOGIN_RATE),
            }
            cls.server = cls.start(
                IMAGE, "server", ["server"], cls.env, "--network-alias", "server"
            )
            cls.proxy_ca = wait_until(cls.read_proxy_ca, timeout=30, what="the proxy's CA")
            cls.tls = ssl.create_default_context(cadata=cls.proxy_ca)
            wait_until(cls.server_answers, timeout=60, what="the server behind the proxy")
            cls.worker = cls.start(IMAGE, "worker", ["worker"], cls.env)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls, image, part, command, env, *options):
        """A container of image on the test's network, named after the test and part."""
        container = Container(f"{cls.queue}-{part}")
        cls.containers.append(container)  # removed at the end, even if it fails to start
        return container.run(image, command, env, ["--network", cls.network, *options])

    @classmethod
    def relayed(cls, url, gateway):
        """url, its host and port those of a new relay to them on gateway."""
        parts = urllib.parse.urlsplit(url)
        target = (parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme.split("+")[0]])
        relay = Relay(gateway, target)
        cls.relays.append(relay)
        credentials, at, _ = parts.netloc.rpartition("@")
        return parts._replace(netloc=f"{credentials}{at}{gateway}:{relay.port}").geturl()

    @classmethod
    def read_proxy_ca(cls):
        if not cls.proxy.running():
            raise AssertionError("the proxy container exited:\n" + cls.proxy.logs())
        read = podman("exec", cls.proxy.name, "cat", PROXY_CA, check=False)
        return read.stdout if "BEGIN CERTIFICATE" in read.stdout else None

    @classmethod
    def https(cls, **options):
        """A connection to the proxy's HTTPS port, verified against its CA, by
        the name its certificate has (localhost, compose.yaml's DOMAIN unset)."""
        return http.client.HTTPSConnection(
            "localhost", cls.https_port, timeout=30, context=cls.tls, **options
        )

    @classmethod
    def server_answers(cls):
        if not cls.server.running():
            raise AssertionError("the server container exited:\n" + cls.server.logs())
        try:
            return request(cls.https(), "GET", "/healthz").status == 200  # 502 until it is up
        except OSError:
            return False

    @classmethod
    def tearDownClass(cls):
        for container in reversed(cls.containers):
            container.remove()
        for relay in cls.relays:
            relay.close()
        if cls.network_made:
            podman("network", "rm", "--force", cls.network, check=False)
        cls.postgres.drop()
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            channel = connection.default_channel
            channel.queue_delete(cls.queue)
            channel.exchange_delete(cls.queue)
            channel.exchange_delete(f"{cls.queue}.settled")

    def request(self, *args, **kwargs):
        """A request over HTTPS through the proxy; its answer, which must say HSTS."""
        answer = request(self.https(), *args, **kwargs)
        self.assertEqual(answer.header("Strict-Transport-Security"), HSTS, answer.status)
        return answer

    def sign_up(self):
        username, password = unique_name(), "secret-pw"
        answer = self.request("POST", "/users", {"username": username, "password": password})
        self.assertEqual(answer.status, 201, answer.body)
        return username, password, answer.json

    def test_the_images_as_built(self):
        for image in (IMAGE, PROXY_IMAGE):
            with self.subTest(image=image):
                user = podman("image", "inspect", "--format", "{{json .Config.User}}", image)
                self.assertNotIn(
                    user.stdout.strip().strip('"'), ("", "root", "0"), "it must not run as root"
                )
        env = podman("image", "inspect", "--format", "{{.Config.Env}}", IMAGE).stdout
        self.assertIn("HOST=0.0.0.0", env)
        uid = podman("exec", self.server.name, "python", "-c", "import os; print(os.getuid())")
        self.assertNotEqual(uid.stdout.strip(), "0")
        # The proxy's ports alone are published; the server's 5000 is not.
        self.assertEqual(podman("port", self.server.name).stdout.strip(), "")
        published = podman("port", self.proxy.name).stdout.split()
        self.assertIn(f"127.0.0.1:{self.https_port}", published)
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

    def test_plain_http_is_redirected_to_https(self):
        for method in ("GET", "POST"):
            with self.subTest(method=method):
                plain = http.client.HTTPConnection("localhost", self.http_port, timeout=30)
                answer = request(plain, method, "/users?limit=1")
                self.assertIn(answer.status, (301, 308), answer.body)
                self.assertEqual(answer.header("Location"), "https://localhost/users?limit=1")

    def test_logins_count_by_the_address_the_proxy_saw_whatever_x_forwarded_for_says(self):
        username, password, _ = self.sign_up()
        login = {"username": username, "password": password}
        # LOGIN_RATE logins from this machine, each claiming other addresses
        # in X-Forwarded-For, and one more: all counted as this machine's
        # (the proxy sees it at the network's gateway), so the last is 429.
        for n in range(1, LOGIN_RATE + 2):
            spoofed = {"X-Forwarded-For": f"203.0.113.{n}, 198.51.100.{n}"}
            answer = self.request("POST", "/login", login, headers=spoofed)
            if n <= LOGIN_RATE:
                self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.status, 429, answer.body)
        self.assertIn("logins", answer.json["message"])
        # Yet a client that the proxy sees at another address logs in: the
        # server counts by the address the proxy saw, not by the proxy's own.
        beside = podman(
            "run", "--rm", "--interactive", "--no-healthcheck",
            "--network", f"container:{self.proxy.name}", *RUN_OPTIONS,
            IMAGE, "python", "-c", LOGIN_BESIDE_THE_PROXY, username, password,
            input=self.proxy_ca,
        )  # fmt: skip
        self.assertEqual(beside.stdout.strip(), "200", beside.stderr)

    def test_z_a_report_made_by_the_worker_container_then_all_stop_on_sigterm(self):
        # (z: the last test of the class, since it stops the containers.)
        username, _, answer = self.sign_up()
        user, token = answer["user"], answer["token"]
        stats = {"victory_count": 31337, "loss_count": 4, "session_count": 12, "total_time": 5000}
        answer = self.request("PUT", f"/users/{user['id']}/stats", stats, token=token)
        self.assertEqual(answer.status, 200, answer.body)
        # Past a 503 while RabbitMQ is away (other tests restart the machine's).
        answer = past_busy(
            lambda: self.request("POST", f"/users/{user['id']}/pdf", token=token), timeout=60
        )
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

        for container in (self.worker, self.server, self.proxy):
            with self.subTest(container=container.name):
                code, took = container.stop_with_sigterm()
                logs = container.logs()
                self.assertEqual(code, 0, f"exit code {code} after SIGTERM:\n{logs}")
                self.assertLess(took, STOP_WITHIN, f"took {took:.1f}s to stop:\n{logs}")
                self.assertNotIn("Traceback", logs)
        self.assertIn("finished job", self.worker.logs())


if __name__ == "__main__":
    unittest.main()
