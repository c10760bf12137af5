"""A fresh clone, as a new user runs it: `./run.sh` makes its own virtual
environment from requirements.txt alone, and serves on PostgreSQL as the
README's "Running on several machines" says. Runs where TEST_DATABASE_URL
names a PostgreSQL server (CI's second run); the install takes about 40 s."""

import shutil
import signal
import subprocess
import tempfile
import unittest
from pathlib import Path

from testing import (
    PROJECT,
    TEST_DATABASE_URL,
    BoundedTestCase,
    Response,
    ScratchPostgres,
    free_port,
    inherited_environment,
    unique_name,
    wait_until,
)


def tracked_files():
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (PROJECT / name).is_file()]


@unittest.skipUnless(TEST_DATABASE_URL, "needs TEST_DATABASE_URL, a PostgreSQL server")
class FreshCloneOnPostgresTest(BoundedTestCase):
    test_timeout = 600

    def setUp(self):
        self.clone = Path(tempfile.mkdtemp(prefix="stats-api-clone-"))
        self.addCleanup(shutil.rmtree, self.clone, ignore_errors=True)
        for name in tracked_files():  # the working tree's files, as a clone would have them
            (self.clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, self.clone / name)
        self.database = ScratchPostgres(TEST_DATABASE_URL)
        self.addCleanup(self.database.drop)
        self.port = free_port()
        self.env = {
            **inherited_environment(),
            "DATABASE_URL": self.database.url,
            "PORT": str(self.port),
            "SCRYPT_N": "1024",
        }

    def run_sh(self, *args, timeout=300):
        return subprocess.run(
            ["./run.sh", *args],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def request(self, method, path, body=None, token=None):
        import http.client
        import json

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            connection.request(method, path, json.dumps(body) if body else None, headers)
            return Response(connection.getresponse())
        finally:
            connection.close()

    def test_run_sh_migrates_and_serves_on_postgresql_with_its_own_requirements_only(self):
        migrated = self.run_sh("migrate")
        self.assertEqual(migrated.returncode, 0, migrated.stdout + migrated.stderr)
        self.assertNotIn("Traceback", migrated.stderr)
        self.assertFalse(
            (self.clone / ".venv/lib").exists()
            and list((self.clone / ".venv/lib").glob("python*/site-packages/schemathesis")),
            "the service's virtual environment has the test tools in it",
        )

        log = open(self.clone / "server.log", "w")
        self.addCleanup(log.close)
        server = subprocess.Popen(
            ["./run.sh"], cwd=self.clone, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.addCleanup(server.wait, 30)
        self.addCleanup(server.send_signal, signal.SIGTERM)

        def healthy():
            if server.poll() is not None:
                raise AssertionError((self.clone / "server.log").read_text())
            try:
                return self.request("GET", "/healthz").status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=120, what="./run.sh serving on PostgreSQL")
        signed_up = self.request("POST", "/users", {"username": unique_name(), "password": "pw"})
        self.assertEqual(signed_up.status, 201, signed_up.body)
        user, token = signed_up.json["user"], signed_up.json["token"]
        self.assertEqual(self.request("POST", f"/users/{user['id']}/pdf", token=token).status, 202)
        wait_until(
            lambda: self.request("GET", f"/users/{user['id']}/pdf", token=token).status == 200,
            timeout=60,
            what="the report",
        )
        server.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(30), 0)
        self.assertNotIn("Traceback", (self.clone / "server.log").read_text())


if __name__ == "__main__":
    unittest.main()
