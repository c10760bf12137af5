"""Running it for real, beyond the contract: what an operator gets from the
metrics (the process figures, no *_created series, promtool-clean, a
worker's own metrics port) and a backup taken under writes.

promtool is Debian's prometheus package (.ci/run installs it); where it is
missing that check is skipped, saying so, except under CI=true, where it
must run. The metrics CONTRACT.md promises (GET /metrics) are test_service.py's.
"""

import http.client
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from testing import (
    CI,
    PROJECT,
    TEST_DATABASE_URL,
    ServiceTestCase,
    free_port,
    wait_until,
)

PROMTOOL = shutil.which("promtool")
PROCESS_METRICS = (
    "process_start_time_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
)
CREATED = re.compile(r"_created\b")


def require_promtool():
    if PROMTOOL:
        return
    missing = "no promtool on PATH (apt-get install prometheus)"
    if CI:
        raise AssertionError(f"CI=true and {missing}: promtool check metrics must run")
    raise unittest.SkipTest(f"promtool check skipped: {missing}")


def sample_names(text):
    """The names of the samples of a Prometheus text page (comments left out)."""
    return {
        re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group()
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


class OperatorMetrics:
    """Checks of a scraped page, for the server's and a worker's."""

    def assertProcessMetrics(self, text):
        names = sample_names(text)
        for name in PROCESS_METRICS:
            self.assertIn(name, names, f"{name} missing from /metrics")

    def assertNoCreatedSeries(self, text):
        created = [line for line in text.splitlines() if CREATED.search(line)]
        self.assertEqual(created, [], "a *_created series in /metrics")

    def assertPromtoolClean(self, text):
        require_promtool()
        run = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            timeout=60,
        )
        said = (run.stdout + run.stderr).decode(errors="replace")
        self.assertEqual(run.returncode, 0, f"promtool check metrics:\n{said}")
        self.assertEqual(said.strip(), "", "promtool check metrics found problems")


class ServerMetricsForOperatorsTest(OperatorMetrics, ServiceTestCase):
    def scraped_after_traffic(self):
        """The page once requests, a 404 and a sign-up have made labelled series."""
        answer = self.request("POST", "/users", {"username": "x y", "password": "p"})
        self.assertEqual(answer.status, 400, answer.body)
        user, _ = self.sign_up()
        self.assertEqual(self.request("GET", f"/users/{user['id']}").status, 200)
        self.assertEqual(self.request("GET", "/users/999999999").status, 404)
        answer = self.request("GET", "/metrics")
        self.assertEqual(answer.status, 200, answer.body)
        text = answer.body.decode()
        self.assertIn("http_requests_total{", text)  # the series _created would double
        self.assertIn("http_request_duration_seconds_bucket{", text)
        return text

    def test_metrics_have_the_process_figures(self):
        text = self.scraped_after_traffic()
        self.assertProcessMetrics(text)
        start = re.search(r"^process_start_time_seconds (\S+)$", text, re.MULTILINE)
        self.assertGreater(float(start.group(1)), 1_600_000_000)  # a time, not an uptime
        fds = re.search(r"^process_open_fds (\S+)$", text, re.MULTILINE)
        self.assertGreater(float(fds.group(1)), 0)

    def test_metrics_have_no_created_series(self):
        self.assertNoCreatedSeries(self.scraped_after_traffic())

    def test_promtool_check_metrics_is_clean(self):
        self.assertPromtoolClean(self.scraped_after_traffic())


class WorkerMetricsTest(OperatorMetrics, ServiceTestCase):
    """A worker's own page on WORKER_METRICS_PORT: the same registry, the same checks."""

    service_env = {"EMBEDDED_WORKER": "off"}

    def test_a_worker_serves_its_own_metrics_with_the_process_figures_passing_promtool(self):
        port = free_port()
        self.service.start_worker(WORKER_METRICS_PORT=str(port))

        def scraped():
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/metrics")
                return connection.getresponse().read().decode()
            except OSError:
                return None

        text = wait_until(scraped, what="the worker's metrics")
        names = {family.name for family in text_string_to_metric_families(text)}
        self.assertIn("report_jobs", names)
        self.assertIn("report_job_duration_seconds", names)
        self.assertProcessMetrics(text)
        self.assertNoCreatedSeries(text)
        self.assertPromtoolClean(text)


# The revision of the newest migration (its file name starts with it): a
# backup of a database that servers made is at it.
NEWEST_REVISION = sorted((PROJECT / "migrations" / "versions").glob("[0-9]*_*.py"))[-1].name.split(
    "_"
)[0]


@unittest.skipIf(TEST_DATABASE_URL, "a backup of SQLite; PostgreSQL's is pg_dump")
class BackupTest(ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off"}

    def back_up(self, target):
        """./run.sh backup target, as an operator runs it beside the servers."""
        return subprocess.run(
            [sys.executable, "tools/backup.py", str(target)],
            env=self.service.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_a_backup_taken_while_servers_write_is_a_whole_database(self):
        stop = threading.Event()
        written = []

        def write():
            while not stop.is_set():
                user, token = self.sign_up()
                self.set_stats(user, token, victory_count=7)
                written.append(user["id"])

        copy = self.service.dir / "backup.db"
        with ThreadPoolExecutor(2) as pool:
            writers = [pool.submit(write) for _ in range(2)]
            wait_until(lambda: len(written) >= 10, what="some writes before the backup")
            done = self.back_up(copy)
            during = len(written)
            wait_until(lambda: len(written) >= during + 10, what="writes after the backup")
            stop.set()
            for writer in writers:
                writer.result(timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        with sqlite3.connect(copy) as db:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            users = db.execute("SELECT count(*) FROM users").fetchone()[0]
            counted = db.execute("SELECT n FROM user_count").fetchone()[0]
            stats = db.execute("SELECT count(*) FROM stats").fetchone()[0]
            self.assertEqual(
                db.execute("SELECT version_num FROM alembic_version").fetchone()[0], NEWEST_REVISION
            )
        # A snapshot: every user with their stats and the count that matches.
        self.assertEqual((users, stats), (counted, counted))
        self.assertGreaterEqual(users, 10)
        with self.service.database() as db:
            now = db.exec_driver_sql("SELECT count(*) FROM users").scalar()
        self.assertGreater(now, users)  # the writers went on meanwhile

    def test_a_backup_refuses_to_overwrite_a_file(self):
        existing = self.service.dir / "taken.db"
        existing.write_bytes(b"keep me")
        done = self.back_up(existing)
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(existing.read_bytes(), b"keep me")


if __name__ == "__main__":
    unittest.main()
