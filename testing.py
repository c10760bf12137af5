"""What the tests share: starting the real service, talking to it, reading its PDFs.

Not a test module (unittest discovery collects test_*.py only): every test
file imports what it needs from here, and no test file imports another.

LiveService starts `server.py` (and `worker.py`) as processes from this
checkout on a free port, with a real SQLite file in a temporary folder (or a
database of its own on TEST_DATABASE_URL), and an environment built here,
not the caller's. ServiceTestCase gives a class one such server; ApiTestCase
also checks that its log stays free of tracebacks; FaultTestCase lets each
test start the services it needs. ReportClient and the pdf_* helpers read a
report as a reader would. BoundedTestCase makes every test end.
"""

import atexit
import faulthandler
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import jwt
from kombu import Connection, Exchange, Queue
from pypdf import PdfReader
from pypdf.generic import ContentStream
from sqlalchemy import create_engine, text

PROJECT = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def past_busy(send, timeout=20):
    """send() again while the server answers 503 (busy: other logins of the
    name being checked, or the hashing budget full), as a client honouring
    Retry-After would, only sooner; the first other answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = send()
        if answer.status != 503:
            return answer
        if not (answer.header("Retry-After") or "").isdigit():
            raise AssertionError(f"a 503 without Retry-After: {answer.body!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"still busy after {timeout}s: {answer.body!r}")
        time.sleep(0.02)


def wait_until(predicate, timeout=20, what="condition"):
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class TestTimedOut(AssertionError):
    """A test that ran past its time: it fails instead of hanging the run."""


class BoundedTestCase(unittest.TestCase):
    """Every test ends. After test_timeout seconds (setUp, the test, tearDown
    and cleanups together) SIGALRM raises TestTimedOut in the main thread,
    where unittest runs the test, so that it fails and its cleanups stop its
    processes. Should even that not end it (an exception swallowed by a
    loop, a thread that ignores it), faulthandler prints every thread's stack
    a minute later and exits the run. Loops in tests keep deadlines of their
    own besides; this is the backstop.
    """

    test_timeout = 300  # seconds: far beyond what any test takes when nothing hangs

    def run(self, result=None):
        if threading.current_thread() is not threading.main_thread():
            return super().run(result)  # signals reach the main thread only

        def expire(_signum, _frame):
            raise TestTimedOut(f"{self.id()} ran for over {self.test_timeout} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(self.test_timeout)
        faulthandler.dump_traceback_later(self.test_timeout + 60, exit=True)
        try:
            return super().run(result)
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, previous)


class Response:
    def __init__(self, raw):
        self.status = raw.status
        self.headers = raw.headers
        self.body = raw.read()

    @property
    def json(self):
        return json.loads(self.body)

    def header(self, name):
        return self.headers.get(name)


class Process:
    """A service process (server or worker) run from this checkout."""

    def __init__(self, script, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, str(PROJECT / script)],
            env=env,
            cwd=PROJECT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._signalled = set()

    def send_signal(self, sig=signal.SIGTERM):
        """Sends sig unless the process has ended or was sent sig already."""
        if self.popen.poll() is None and sig not in self._signalled:
            self._signalled.add(sig)
            self.popen.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.popen.poll() is None:
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.log.close()
        return self.popen.returncode

    def output(self):
        return Path(self.log_path).read_text(errors="replace")


# Set to a PostgreSQL URL (whose user may create databases) to run every test
# on PostgreSQL: each LiveService then gets a database of its own.
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
# Under CI=true what a test needs must be there: a test that would skip fails instead.
CI = os.environ.get("CI") == "true"


class ScratchPostgres:
    """A new PostgreSQL database, empty or a copy of template, dropped by drop()."""

    def __init__(self, admin_url, template=None):
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.name = f"stats_test_{os.getpid()}_{next(_names)}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(
                f'CREATE DATABASE "{self.name}"' + (f' TEMPLATE "{template}"' if template else "")
            )
        self.url = self.admin.url.set(database=self.name).render_as_string(hide_password=False)

    def drop(self):
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


# What a service process takes from the caller's environment: what any
# program needs to run (where programs are, a home for matplotlib's font
# cache, the locale) and how Python writes bytecode. Nothing that configures
# the service: a BROKER_URL, CORS_ORIGINS, JWT_TTL or EMBEDDED_WORKER in the
# caller's shell must not change what a test sees. TEST_DATABASE_URL and
# RABBITMQ_URL are read by the tests themselves, the only ways in.
INHERITED_VARIABLES = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TMPDIR",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
)


def inherited_environment():
    """The few variables of the caller's environment that every process may see."""
    return {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED_VARIABLES or name.startswith("LC_")
    }


def migrated(database_url):
    """database_url brought to the newest schema by migrate.py (what a server
    runs at its first start on an empty database)."""
    made = subprocess.run(
        [sys.executable, str(PROJECT / "migrate.py")],
        env={**inherited_environment(), "DATABASE_URL": database_url},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if made.returncode != 0:
        raise AssertionError(f"migrate.py failed:\n{made.stdout}{made.stderr}")
    return database_url


# An empty database at the newest schema, made once per run and copied for each
# LiveService: a server then starts without its upgrade process (about a
# second of its start-up). test_migrations.py, the README's walk and the
# fresh clone still have servers upgrade empty databases themselves.
_newest = {}
_newest_lock = threading.Lock()


def newest_sqlite_copy(target):
    """A copy of the newest SQLite database at target."""
    with _newest_lock:
        if "sqlite" not in _newest:
            folder = tempfile.TemporaryDirectory(prefix="stats-api-newest-")
            path = Path(folder.name) / "app.db"
            migrated(f"sqlite:///{path}")
            _newest["sqlite"] = folder, path
        source = sqlite3.connect(_newest["sqlite"][1])
    try:
        with closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
    finally:
        source.close()


def newest_postgres_copy():
    """A ScratchPostgres made from the newest PostgreSQL database (its template)."""
    with _newest_lock:
        if "postgresql" not in _newest:
            template = ScratchPostgres(TEST_DATABASE_URL)
            atexit.register(template.drop)
            migrated(template.url)
            _newest["postgresql"] = template
        return ScratchPostgres(TEST_DATABASE_URL, template=_newest["postgresql"].name)


class LiveService:
    """A data folder and database, plus the server (and any workers) started on them.

    Processes get an environment built here, not the caller's (see
    INHERITED_VARIABLES): what the tests set, on top of the few essentials."""

    def __init__(self, fresh_database=False, **env):
        self.folder = tempfile.TemporaryDirectory(prefix="stats-api-test-")
        self.dir = Path(self.folder.name)
        copy = not (fresh_database or "DATABASE_URL" in env)  # of the newest database
        self.postgres = None
        if TEST_DATABASE_URL:
            self.postgres = newest_postgres_copy() if copy else ScratchPostgres(TEST_DATABASE_URL)
        elif copy:
            newest_sqlite_copy(self.dir / "app.db")
        self.env = {
            **inherited_environment(),
            "DATA_DIR": str(self.dir),
            "DATABASE_URL": self.postgres.url if self.postgres else f"sqlite:///{self.dir}/app.db",
            # 64+ bytes: long enough for every HMAC size, so PyJWT never warns.
            "JWT_SECRET": "test-secret-" + os.urandom(32).hex(),
            "SCRYPT_N": "1024",  # tests only: cheap hashes keep hundreds of sign-ups fast
            # The limits of "Under pressure" are test_under_pressure.py's; elsewhere one
            # test client signs up and logs in far more than a person would.
            "HASH_CONCURRENCY": "8",
            "SIGNUP_RATE": "1000000",
            "LOGIN_RATE": "1000000",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.processes = []
        self.after_stop = []  # what to do once its processes have ended
        self._log_numbers = count(1)
        self.server = None
        self.port = None

    def start_server(self, **env):
        return self.start_servers(env)[0][0]

    def start_servers(self, *envs):
        """A server on this database for each env (what it adds to self.env),
        started at once, each answering once this returns: [(process, port)].
        self.server and self.port are the last one's."""
        ports = []
        while len(ports) < len(envs):
            port = free_port()
            if port not in ports:
                ports.append(port)
        started = [
            (self.start("server.py", **env, PORT=str(port)), port)
            for env, port in zip(envs, ports, strict=True)
        ]
        for index, env in enumerate(envs):
            for _ in range(5):
                server, port = started[index]
                answer = wait_until(  # seconds, normally; a minute on a very busy machine
                    lambda server=server, port=port: self._answers(server, port),
                    timeout=60,
                    what=f"the server on port {port}",
                )
                if answer != "port taken":
                    break
                port = free_port()
                started[index] = self.start("server.py", **env, PORT=str(port)), port
            else:
                raise AssertionError("five ports in a row were taken before the server bound them")
        self.server, self.port = started[-1]
        return started

    def start_another_server(self, **env):
        """One more server on the same database, as behind a load balancer:
        its port (self.port stays the first server's)."""
        first = self.port, self.server
        try:
            self.start_server(**env)
            return self.port
        finally:
            self.port, self.server = first

    def start_worker(self, **env):
        return self.start("worker.py", **env)

    def start(self, script, **env):
        name = f"{Path(script).stem}-{next(self._log_numbers)}.log"
        process = Process(script, {**self.env, **env}, self.dir / name)
        self.processes.append(process)
        return process

    def _answers(self, server, port):
        # The port was free when picked, but another program (the other lane of
        # ./run.sh test, say) may have taken it since: ours then exits.
        if server.popen.poll() is not None:
            if "Address already in use" in server.output():
                return "port taken"
            raise AssertionError("server exited:\n" + server.output())
        if f"serving on http://127.0.0.1:{port}" not in server.output():
            return False
        try:
            return self.request("GET", "/openapi.json", port=port).status == 200
        except OSError:
            return False

    def request(
        self, method, path, body=None, token=None, headers=None, raw=None, port=None, source=None
    ):
        """One request on a connection of its own, from the address source
        (127.0.0.x: a client address of its own for the server) if given."""
        connection = http.client.HTTPConnection(
            "127.0.0.1",
            port or self.port,
            timeout=30,
            source_address=(source, 0) if source else None,
        )
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            raw = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=raw, headers=headers)
            return Response(connection.getresponse())
        finally:
            connection.close()

    def stop(self):
        """Stops every process (signalled at once, then waited for), then
        runs after_stop, drops the database and removes the folder."""
        for process in reversed(self.processes):
            process.send_signal()
        try:
            for process in reversed(self.processes):
                process.stop()
            for then in self.after_stop:
                then()
        finally:
            if self.postgres:
                self.postgres.drop()
            self.folder.cleanup()

    def stop_in_background(self):
        """stop(), for a service no test uses any more: its processes are
        signalled now, and the run goes on while they finish (each within
        Process.stop's bounds); the run waits for every such stop before it
        exits (the thread is not a daemon)."""
        for process in reversed(self.processes):
            process.send_signal()
        threading.Thread(target=self.stop, name=f"stopping {self.dir.name}").start()

    @contextmanager
    def database(self):
        """A transaction on the service's database, for what HTTP cannot reach."""
        engine = create_engine(self.env["DATABASE_URL"])
        try:
            with engine.begin() as connection:
                yield connection
        finally:
            engine.dispose()


def raw_exchange(port, data):
    """Send bytes as they are (no HTTP client to tidy them up): status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


def method_set(header):
    """The methods of an Allow (or Access-Control-Allow-Methods) header, as a set."""
    return {method.strip().upper() for method in (header or "").split(",") if method.strip()}


_names = count(1)


def unique_name(prefix="user"):
    return f"{prefix}{os.getpid()}_{next(_names)}"


STAT_NAMES = ("loss_count", "session_count", "total_time", "victory_count")
ZERO_STATS = dict.fromkeys(STAT_NAMES, 0)
BAD_LOGIN = {"success": False, "message": "Bad username or password"}
MAX_BODY = 1 << 20
NO_SUCH_ID = 999_999_999  # a well-formed id that no test ever reaches


# Every name a client may send in a body or a query: a message about one names only it.
FIELD_NAMES = frozenset(
    {"username", "password", "current_password", "email", "gender", "profile_pic"}
    | set(STAT_NAMES)
    | {"limit", "offset"}
)


# A character UTF-8 cannot encode: JSON may carry one (escaped), a valid field may not.
LONE_SURROGATE = "\ud800"


def token_version(token):
    """The ver claim of a token the server issued (read, not verified)."""
    return jwt.decode(token, options={"verify_signature": False})["ver"]


def names_word(text, word):
    """Whether text holds word whole: not as part of a longer name or number."""
    return re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text) is not None


class ServiceClient:
    """What tests do over HTTP against self.service, a LiveService."""

    def request(self, *args, **kwargs):
        return self.service.request(*args, **kwargs)

    def sign_up(self, **fields):
        body = {"username": unique_name(), "password": "secret-pw", **fields}
        answer = self.request("POST", "/users", body)
        self.assertEqual(answer.status, 201, answer.body)
        return answer.json["user"], answer.json["token"]


# The servers that classes of one test module share, by (module, service_env).
_shared_services = {}


def _stop_shared_service(key):
    _shared_services.pop(key).stop_in_background()


class ServiceTestCase(ServiceClient, BoundedTestCase):
    """One server for the class; each test makes the users it needs.

    Classes of one test module with the same service_env share one server,
    started by the first of them and stopped once the module's tests are done:
    a server start (a new database brought to the newest schema) costs a second
    or two. A class whose tests break their server (a dropped table, a
    corrupted file) sets share_server = False to have one of its own."""

    service_env = {}
    share_server = True

    @classmethod
    def setUpClass(cls):
        key = (cls.__module__, tuple(sorted(cls.service_env.items())))
        if cls.share_server and key in _shared_services:
            cls.service = _shared_services[key]
            return
        cls.service = LiveService(**cls.service_env)
        try:
            cls.service.start_server()
        except BaseException:
            cls.service.stop()
            raise
        if cls.share_server:
            _shared_services[key] = cls.service
            unittest.addModuleCleanup(_stop_shared_service, key)

    @classmethod
    def tearDownClass(cls):
        if not cls.share_server:
            cls.service.stop_in_background()

    def assertError(self, answer, status, mentions=None, also=()):
        """A JSON error body with the given status (and a message naming a field).

        mentions must be in the message as a whole word ('password' is not in
        'current_password'); when it is a field, the message must name no other
        field but those in also, so that a message listing every field (say,
        the one for unknown fields) does not count as naming this one."""
        self.assertEqual(answer.status, status, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("application/json"))
        self.assertEqual(answer.json["success"], False)
        message = answer.json["message"]
        self.assertIsInstance(message, str)
        if mentions:
            self.assertTrue(names_word(message, mentions), f"{mentions!r} not named in {message!r}")
            if mentions in FIELD_NAMES:
                others = [
                    name for name in FIELD_NAMES - {mentions, *also} if names_word(message, name)
                ]
                self.assertEqual(others, [], f"{message!r} names other fields than {mentions!r}")

    def assertJson(self, answer, status):
        """The JSON body of an answer that must have this status."""
        self.assertEqual(answer.status, status, answer.body)
        self.assertTrue(
            (answer.header("Content-Type") or "").startswith("application/json"),
            answer.header("Content-Type"),
        )
        return answer.json

    def assertUnauthorized(self, answer):
        self.assertError(answer, 401)
        self.assertEqual(
            (answer.header("WWW-Authenticate") or "").split(" ")[0],
            "Bearer",
            answer.header("WWW-Authenticate"),
        )

    def assertNoContent(self, answer):
        self.assertEqual(answer.status, 204, answer.body)
        self.assertEqual(answer.body, b"")

    def fetch_user(self, user_id):
        """The user as GET /users/{id} shows it."""
        return self.assertJson(self.request("GET", f"/users/{user_id}"), 200)

    def stats(self, user_id, token):
        return self.assertJson(self.request("GET", f"/users/{user_id}/stats", token=token), 200)

    def log_in(self, username, password="secret-pw"):
        return self.request("POST", "/login", {"username": username, "password": password})

    def token_of(self, username, password="secret-pw"):
        return self.assertJson(self.log_in(username, password), 200)["token"]

    def set_stats(self, user, token, **values):
        return self.assertJson(
            self.request("PATCH", f"/users/{user['id']}/stats", values, token=token), 200
        )


class ApiTestCase(ServiceTestCase):
    """A ServiceTestCase whose server log must stay clean.

    After each test the log must hold no traceback and no "database is
    locked": an unexpected exception is a bug even when the client got an
    answer that looked fine.
    """

    # These tests make no reports: without the embedded PDF worker (and the
    # matplotlib it loads) a server starts twice as fast.
    service_env = {"EMBEDDED_WORKER": "off"}
    log_must_stay_clean = True

    def setUp(self):
        self._log_marks = {
            process.log_path: Path(process.log_path).stat().st_size
            for process in self.service.processes
        }

    def tearDown(self):
        if not self.log_must_stay_clean:
            return
        for process in self.service.processes:
            with open(process.log_path, "rb") as log:
                log.seek(self._log_marks.get(process.log_path, 0))
                new = log.read().decode(errors="replace")
            for sign in ("Traceback", "database is locked"):
                self.assertNotIn(sign, new, f"server log of this test:\n{new}")


# Headers


def cors_headers(answer):
    return {
        name.lower(): value
        for name, value in answer.headers.items()
        if name.lower().startswith("access-control-")
    }


def header_words(value):
    return {word.strip().lower() for word in (value or "").split(",") if word.strip()}


# The browser pages and a file of each kind they load (CONTRACT.md, Browser pages).
PAGES = ("/", "/docs", "/console/console.js", "/swagger-ui/swagger-ui.css")


# Reports: the broker and reading PDFs

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
PDFTOTEXT = shutil.which("pdftotext")


def rabbitmq_answers():
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)
        return True
    except Exception:
        return False


def pdf_text(data):
    return PdfReader(io.BytesIO(data)).pages[0].extract_text()


def pdf_lines(data):
    """The page's text lines as pypdf reads them, in the order they were drawn."""
    return [line.strip() for line in pdf_text(data).splitlines() if line.strip()]


def expected_cards(victory_count, loss_count, session_count, total_time):
    """What the report's cards must show for these stats: {label: value}."""
    games = victory_count + loss_count
    hours, rest = divmod(total_time, 3600)
    return {
        "Victories": str(victory_count),
        "Losses": str(loss_count),
        "Sessions": str(session_count),
        f"Total time ({total_time} s)": f"{hours} h {rest // 60:02d} min",
        "Games played": str(games),
        "Win rate": f"{victory_count / games:.1%}" if games else "no games yet",
    }


def card_values(data, labels=("Victories", "Losses", "Sessions", "Games played", "Win rate")):
    """{label: the whole line drawn right after the label's first appearance}."""
    lines = pdf_lines(data)
    found = {}
    for label in labels:
        matching = [index for index, line in enumerate(lines) if line == label]
        if matching and matching[0] + 1 < len(lines):
            found[label] = lines[matching[0] + 1]
    return found


GENERATED = re.compile(r"Generated (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def generated_at(data):
    found = GENERATED.search(pdf_text(data))
    return found and datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


PAINT = {b"f", b"F", b"f*", b"B", b"B*", b"b", b"b*"}


def painted_shapes(data):
    """[(fill colour, (x0, y0, x1, y1), number of curve segments)] of every path
    filled on the page, read from its content stream."""
    reader = PdfReader(io.BytesIO(data))
    content = ContentStream(reader.pages[0].get_contents(), reader)
    shapes, fill, points, curves = [], None, [], 0
    for operands, operator in content.operations:
        if operator == b"rg":
            fill = tuple(round(float(value), 3) for value in operands)
        elif operator in (b"m", b"l"):
            points.append((float(operands[0]), float(operands[1])))
        elif operator == b"c":
            points.append((float(operands[4]), float(operands[5])))
            curves += 1
        elif operator in PAINT or operator in (b"S", b"s", b"n"):
            if operator in PAINT and points:
                xs, ys = [x for x, _ in points], [y for _, y in points]
                shapes.append((fill, (min(xs), min(ys), max(xs), max(ys)), curves))
            points, curves = [], 0
    return shapes


def embedded_fonts(data):
    """{font name: whether its program is embedded in the file} of the page's fonts."""
    fonts = {}
    resources = PdfReader(io.BytesIO(data)).pages[0]["/Resources"]
    for font in resources["/Font"].values():
        font = font.get_object()
        descriptors = [font.get("/FontDescriptor")] + [
            descendant.get_object().get("/FontDescriptor")
            for descendant in font.get("/DescendantFonts", [])
        ]
        fonts[str(font["/BaseFont"])] = any(
            descriptor is not None
            and {"/FontFile", "/FontFile2", "/FontFile3"} & set(descriptor.get_object())
            for descriptor in descriptors
        )
    return fonts


class ReportClient:
    """What the report tests do over HTTP, against any LiveService."""

    def new_user_with_stats(self, **stats):
        user, token = self.sign_up(email="player@example.com", gender="female")
        if stats:
            answer = self.request("PATCH", f"/users/{user['id']}/stats", stats, token=token)
            self.assertEqual(answer.status, 200, answer.body)
        return user, token

    def post_report(self, user, token):
        answer = self.request("POST", f"/users/{user['id']}/pdf", token=token)
        self.assertEqual(answer.status, 202, answer.body)
        return answer

    def wait_for_report(self, user, token, unlike_etag=None, timeout=30):
        """Poll GET until it serves a PDF (other than the one with unlike_etag)."""

        def served():
            answer = self.request("GET", f"/users/{user['id']}/pdf", token=token)
            if answer.status == 200 and answer.header("ETag") != unlike_etag:
                return answer
            self.assertIn(answer.status, (200, 202), answer.body)
            return None

        return wait_until(served, timeout, what=f"the report of user {user['id']}")

    def report_rows(self, user):
        """[(id, state, finished_at)] of the user's reports, as the database holds them."""
        with self.service.database() as db:
            return [
                tuple(row)
                for row in db.execute(
                    text(
                        "SELECT id, state, finished_at FROM reports"
                        " WHERE user_id = :user_id ORDER BY id"
                    ),
                    {"user_id": user["id"]},
                )
            ]

    def run_one_job(self, user, renderer):
        """Queues a report for user and runs its job in a worker process of
        its own whose drawing.render is replaced by renderer (Python source)."""
        script = textwrap.dedent(renderer) + textwrap.dedent(f"""
            import database, drawing, reports, worker
            drawing.render = render
            with database.writing() as db:
                report_id = reports.queue(db, {user["id"]})
            print(worker.run_job({{"report_id": report_id, "user_id": {user["id"]}}}))
        """)
        return subprocess.run(
            [sys.executable, "-c", script],
            env=self.service.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def pdftotext_lines(self, data):
        """The report's text as `pdftotext` extracts it, in whole lines. Without
        pdftotext the test is skipped, saying so, except under CI=true."""
        if PDFTOTEXT is None:
            if CI:
                self.fail("pdftotext (poppler-utils) is required under CI=true")
            self.skipTest("pdftotext is not installed (poppler-utils): its checks are skipped")
        done = subprocess.run(
            [PDFTOTEXT, "-enc", "UTF-8", "-", "-"], input=data, capture_output=True, timeout=30
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return [line.strip() for line in done.stdout.decode().splitlines() if line.strip()]


def job_process_of(server):
    """The pid of the embedded worker's job process (worker.JobProcess), a child of
    the server started by multiprocessing's spawn."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if parent == server.popen.pid and b"spawn_main" in command:
            return int(stat.parent.name)
    return None


def signal_if_alive(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def rabbitmqctl(*args):
    """Runs rabbitmqctl on the machine's RabbitMQ (stop_app, start_app: a broker restart)."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120, stdout=subprocess.DEVNULL)


@contextmanager
def rabbitmq_stopped():
    """RabbitMQ's app stopped for the with block (rabbitmqctl stop_app): a
    broker restart. Started again once (start_app) however the block ends."""
    try:
        rabbitmqctl("stop_app")
        yield
    finally:
        try:
            rabbitmqctl("start_app")
        except BaseException:  # cut short (a test out of time, say): once more
            rabbitmqctl("start_app")
            raise


def require_rabbitmq(test_class):
    """Skip without RabbitMQ, except in CI, where it is required."""
    if rabbitmq_answers() or CI:
        return test_class
    return unittest.skip(f"no RabbitMQ answers at {RABBITMQ_URL} (CI requires one)")(test_class)


# Faults: tests that start (and stop) the services they need


def require(condition, reason):
    """Skip without the service a test needs, except in CI, where it is required."""
    return unittest.skipUnless(condition or CI, f"{reason} (CI requires it)")


class FaultTestCase(ReportClient, ServiceClient, BoundedTestCase):
    """Each test starts (and stops) the services it needs."""

    def start_service(self, **env):
        service = LiveService(**env)
        self.addCleanup(service.stop_in_background)
        self.service = service
        return service

    def start_service_on_rabbitmq(self):
        """A service whose jobs go through a queue of this test alone on RabbitMQ
        (deleted once its processes have ended)."""
        queue = unique_name("test-faults-")
        service = self.start_service(BROKER_URL=RABBITMQ_URL, REPORT_QUEUE=queue)
        service.after_stop.append(lambda: delete_queue(queue))
        return service

    def assertNoServerErrors(self, *processes):
        for process in processes:
            self.assertNotIn("Traceback", process.output(), process.log_path)
            self.assertNotIn(" 500 ", process.output(), process.log_path)


def delete_queue(name):
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


class QueueOfItsOwn:
    """For a ServiceTestCase on RabbitMQ whose service_env names queue_name: the
    class's own queue, deleted after the class and emptied before each test, so
    that a job a killed worker left behind cannot reach the next test."""

    queue_name = None

    @classmethod
    def setUpClass(cls):
        cls.addClassCleanup(delete_queue, cls.queue_name)
        super().setUpClass()

    @classmethod
    def queue(cls):
        exchange = Exchange(cls.queue_name, type="direct", durable=True)
        return Queue(cls.queue_name, exchange, routing_key="report", durable=True)

    def setUp(self):
        super().setUp()
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            bound = self.queue()(connection.default_channel)
            bound.declare()  # as the server declares it
            bound.purge()
