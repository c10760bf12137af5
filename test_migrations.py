"""Schema migrations: a database from before them, with data, upgraded by the
server at start-up, loses nothing; a database newer than the code refuses to
start. On SQLite and on PostgreSQL.
"""

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import unittest

import jwt
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from testing import (
    CI,
    PROJECT,
    TEST_DATABASE_URL,
    LiveService,
    ScratchPostgres,
    free_port,
    wait_until,
)

POSTGRES_URL = TEST_DATABASE_URL or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PDF = b"%PDF-1.4 a report made before the upgrade"


def scrypt_hash(password, n=1024):
    """A stored password as auth.py writes it: scrypt$N$r$p$salt$digest."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=8, p=5, maxmem=256 * n * 8, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${n}$8$5${b64(salt).decode()}${b64(digest).decode()}"


def run_python(code, env):
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class UpgradeChecks:
    """An empty database of the test's own (database_url), and a service on it."""

    def database_url(self):
        raise NotImplementedError

    def setUp(self):
        self.url = self.database_url()
        self.service = LiveService(DATABASE_URL=self.url)
        if self.service.postgres:  # TEST_DATABASE_URL: this test makes its own database
            self.service.postgres.drop()
            self.service.postgres = None
        self.addCleanup(self.service.stop_in_background)
        self.engine = create_engine(self.url)
        self.addCleanup(self.engine.dispose)

    def index_names(self):
        with self.engine.connect() as db:
            if self.engine.dialect.name == "sqlite":
                found = db.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))
            else:
                found = db.execute(text("SELECT indexname FROM pg_indexes"))
            return {row[0] for row in found}

    def make_old_database(self):
        """The database in the schema of the first revision, as servers before
        migrations made it (no alembic_version), with real rows in every table."""
        made = run_python(
            "import database, migrate\nfrom alembic import command\n"
            "with database.schema_lock() as c:\n"
            "    command.upgrade(migrate.alembic_config(c), '0001')\n",
            self.service.env,
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        now = time.time()
        with self.engine.begin() as db:
            db.execute(text("DROP TABLE alembic_version"))  # as if made before migrations
            db.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, email, gender, profile_pic,"
                    " token_version) VALUES (1, 'ada', :ada, 'ada@example.com', 'female', NULL, 0),"
                    " (2, 'bob', :bob, NULL, NULL, 'https://example.com/b.png', 3)"
                ),
                {"ada": scrypt_hash("ada-pw"), "bob": scrypt_hash("bob-pw")},
            )
            db.execute(
                text(
                    "INSERT INTO stats (user_id, loss_count, session_count, total_time,"
                    " victory_count) VALUES (1, 4, 12, 5000, 8), (2, 0, 1, 60, 1)"
                )
            )
            db.execute(text("UPDATE user_count SET n = 2"))
            db.execute(
                text(
                    "INSERT INTO reports (id, user_id, state, published_at, finished_at, pdf)"
                    " VALUES (1, 1, 'done', :t, :t, :pdf), (2, 2, 'pending', :t, NULL, NULL)"
                ),
                {"t": now, "pdf": PDF},
            )
            for _ in range(9):
                db.execute(
                    text("INSERT INTO login_failures (username, failed_at) VALUES ('ada', :t)"),
                    {"t": now},
                )
            if self.engine.dialect.name == "postgresql":  # ids given above: move the sequences on
                for table in ("users", "reports"):
                    db.execute(text(f"SELECT setval('{table}_id_seq', 10)"))

    def token(self, user_id, version):
        now = int(time.time())
        # With a jti, as tokens are since 0004 (CONTRACT.md: every claim required).
        claims = {"sub": str(user_id), "iat": now, "exp": now + 600, "ver": version, "jti": "x1"}
        return jwt.encode(claims, self.service.env["JWT_SECRET"], algorithm="HS256")

    def test_an_upgrade_at_start_up_keeps_every_row_password_token_and_job(self):
        self.make_old_database()
        self.service.start_server()  # upgrades the database, then serves it
        ada = self.service.request("GET", "/users/1").json
        self.assertEqual(
            (ada["username"], ada["email"], ada["gender"]), ("ada", "ada@example.com", "female")
        )
        bob = self.service.request("GET", "/users/2").json
        self.assertEqual(bob["profile_pic"], "https://example.com/b.png")
        self.assertEqual(self.service.request("GET", "/users").header("X-Total-Count"), "2")
        # Passwords: still checked against the stored hashes.
        login = self.service.request("POST", "/login", {"username": "ada", "password": "ada-pw"})
        self.assertEqual(login.status, 200, login.body)
        token = login.json["token"]
        # Token versions: bob's tokens of version 3 still open, older ones do not.
        self.assertEqual(
            self.service.request("GET", "/users/me", token=self.token(2, 3)).status, 200
        )
        self.assertEqual(
            self.service.request("GET", "/users/me", token=self.token(2, 2)).status, 401
        )
        stats = self.service.request("GET", "/users/1/stats", token=token).json
        self.assertEqual(
            stats, {"loss_count": 4, "session_count": 12, "total_time": 5000, "victory_count": 8}
        )
        # The leaderboard of the rows kept: its count of players (0004) and an
        # index for every order, the win rate's (an expression) included.
        board = self.service.request("GET", "/leaderboard?by=win_rate", token=token)
        self.assertEqual(
            [(e["rank"], e["id"], e["value"]) for e in board.json], [(1, 2, 1.0), (2, 1, 8 / 12)]
        )
        self.assertEqual(board.header("X-Total-Count"), "2")
        orders = ("victory_count", "loss_count", "session_count", "total_time", "win_rate")
        self.assertLessEqual({f"stats_by_{by}" for by in orders}, self.index_names())
        # The finished report is served as it was; the pending one still becomes a PDF.
        report = self.service.request("GET", "/users/1/pdf", token=token)
        self.assertEqual(
            (report.status, report.body, report.header("ETag")), (200, PDF, '"report-1"')
        )
        waited = self.service.request(
            "GET", "/users/2/pdf", token=self.token(2, 3), headers={"Prefer": "wait=10"}
        )
        self.assertEqual(waited.status, 200, waited.body)
        self.assertTrue(waited.body.startswith(b"%PDF"))
        self.assertIn(b"matplotlib", waited.body.lower())  # rendered now, by the worker
        # The nine failures still count: one more, and ada is throttled.
        wrong = self.service.request("POST", "/login", {"username": "ada", "password": "x"})
        self.assertEqual(wrong.status, 401)
        throttled = self.service.request("POST", "/login", {"username": "ada", "password": "x"})
        self.assertEqual(throttled.status, 429, throttled.body)
        # And alembic check finds the models and the upgraded database in agreement.
        checked = run_python(
            "import database, migrate\nfrom alembic import command\n"
            "with database.engine().connect() as c:\n"
            "    command.check(migrate.alembic_config(c))\n",
            self.service.env,
        )
        self.assertEqual(checked.returncode, 0, checked.stderr)

    def test_a_database_newer_than_the_code_refuses_to_start(self):
        # Brought to the newest revision as a server would (migrate.py, what its
        # start-up runs), without a server to start and stop for it.
        upgraded = run_python("import migrate; migrate.upgrade()", self.service.env)
        self.assertEqual(upgraded.returncode, 0, upgraded.stderr)
        with self.engine.begin() as db:
            db.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        server = self.service.start("server.py", PORT=str(free_port()), EMBEDDED_WORKER="off")
        wait_until(lambda: server.popen.poll() is not None, what="the server to refuse")
        self.assertNotEqual(server.popen.returncode, 0)
        self.assertIn("newer version of the service", server.output())
        with self.engine.begin() as db:  # and it changed nothing
            self.assertEqual(
                db.execute(text("SELECT version_num FROM alembic_version")).scalar(), "9999"
            )


class SqliteUpgradeTest(UpgradeChecks, unittest.TestCase):
    def database_url(self):
        folder = self.enterContext(tempfile.TemporaryDirectory())
        return f"sqlite:///{folder}/app.db"


class PostgresUpgradeTest(UpgradeChecks, unittest.TestCase):
    def database_url(self):
        try:
            postgres = ScratchPostgres(POSTGRES_URL)
        except OperationalError as error:
            if CI:
                raise
            self.skipTest(f"no PostgreSQL at {POSTGRES_URL} ({error})")
        self.addCleanup(postgres.drop)
        return postgres.url


if __name__ == "__main__":
    unittest.main()
