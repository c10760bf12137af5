"""The HTTP contract, tested over HTTP against the real server.

Each test class starts `server.py` as a process on a free port, with a real
SQLite file in a temporary folder, and talks to it with http.client.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

PROJECT = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=20, what="condition"):
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
        self.popen = subprocess.Popen([sys.executable, str(PROJECT / script)], env=env,
                                      cwd=PROJECT, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return self.popen.returncode

    def output(self):
        return Path(self.log_path).read_text(errors="replace")


class LiveService:
    """A data folder, plus the server (and any workers) started on it."""

    def __init__(self, **env):
        self.folder = tempfile.TemporaryDirectory(prefix="stats-api-test-")
        self.dir = Path(self.folder.name)
        self.env = {
            **os.environ,
            "DATA_DIR": str(self.dir),
            "DATABASE_URL": f"sqlite:///{self.dir}/app.db",
            "JWT_SECRET": "test-secret-" + os.urandom(8).hex(),
            "SCRYPT_N": "1024",  # tests only: cheap hashes keep hundreds of sign-ups fast
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.processes = []
        self.server = None
        self.port = None

    def start_server(self, **env):
        self.port = free_port()
        self.server = self.start("server.py", PORT=str(self.port), **env)
        wait_until(self._answers, what=f"the server on port {self.port}")
        return self.server

    def start_worker(self, **env):
        return self.start("worker.py", **env)

    def start(self, script, **env):
        name = f"{Path(script).stem}-{len(self.processes)}.log"
        process = Process(script, {**self.env, **env}, self.dir / name)
        self.processes.append(process)
        return process

    def _answers(self):
        if self.server.popen.poll() is not None:
            raise AssertionError("server exited:\n" + self.server.output())
        try:
            return self.request("GET", "/openapi.json").status == 200
        except OSError:
            return False

    def request(self, method, path, body=None, token=None, headers=None, raw=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
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
        for process in reversed(self.processes):
            process.stop()
        self.folder.cleanup()


_names = count(1)


def unique_name(prefix="user"):
    return f"{prefix}{os.getpid()}_{next(_names)}"


class ServiceTestCase(unittest.TestCase):
    """One server for the whole class; each test makes the users it needs."""
    service_env = {}

    @classmethod
    def setUpClass(cls):
        cls.service = LiveService(**cls.service_env)
        try:
            cls.service.start_server()
        except BaseException:
            cls.service.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.service.stop()

    def request(self, *args, **kwargs):
        return self.service.request(*args, **kwargs)

    def sign_up(self, **fields):
        body = {"username": unique_name(), "password": "secret-pw", **fields}
        answer = self.request("POST", "/users", body)
        self.assertEqual(answer.status, 201, answer.body)
        return answer.json["user"], answer.json["token"]

    def assertError(self, answer, status, mentions=None):
        """A JSON error body with the given status (and a message naming a field)."""
        self.assertEqual(answer.status, status, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("application/json"))
        self.assertEqual(answer.json["success"], False)
        self.assertIsInstance(answer.json["message"], str)
        if mentions:
            self.assertIn(mentions, answer.json["message"])


class UsersTest(ServiceTestCase):
    def test_sign_up_returns_user_token_and_location(self):
        name = unique_name()
        answer = self.request("POST", "/users", {"username": name, "password": "pw",
                                                 "email": "a@example.com"})
        self.assertEqual(answer.status, 201)
        user = answer.json["user"]
        self.assertEqual(answer.header("Location"), f"/users/{user['id']}")
        self.assertEqual(answer.header("Cache-Control"), "no-store")
        self.assertEqual(user, {"id": user["id"], "username": name, "email": "a@example.com",
                                "gender": None, "profile_pic": None,
                                "self": f"/users/{user['id']}",
                                "stats": f"/users/{user['id']}/stats",
                                "pdf": f"/users/{user['id']}/pdf"})
        me = self.request("GET", "/users/me", token=answer.json["token"])
        self.assertEqual(me.json, user)

    def test_concurrent_sign_ups_of_one_name_give_one_201_and_409s(self):
        name = unique_name()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: self.request("POST", "/users", {"username": name, "password": "pw"}),
                range(8)))
        statuses = sorted(answer.status for answer in answers)
        self.assertEqual(statuses, [201] + [409] * 7)


if __name__ == "__main__":
    unittest.main()
