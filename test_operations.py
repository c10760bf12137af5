"""Running it for real: /metrics scraped and parsed as Prometheus parses it,
a worker's own metrics port, METRICS=off, and a backup taken under writes."""

import http.client
import sqlite3
import subprocess
import sys
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from testing import (
    PROJECT,
    RABBITMQ_URL,
    TEST_DATABASE_URL,
    BoundedTestCase,
    LiveService,
    ReportClient,
    ServiceClient,
    ServiceTestCase,
    free_port,
    require_rabbitmq,
    unique_name,
    wait_until,
)


def samples(text):
    """{(metric sample name, frozenset of labels): value} of a Prometheus text page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Scraping:
    def scrape(self, port=None):
        answer = self.request("GET", "/metrics", port=port)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("text/plain"))
        return samples(answer.body.decode())


class MetricsTest(Scraping, ReportClient, ServiceTestCase):
    def test_requests_are_counted_by_route_template_never_by_raw_path(self):
        user, token = self.sign_up()
        for _ in range(3):
            self.fetch_user(user["id"])
        self.request("GET", "/users/999999999")
        scraped = self.scrape()
        by_route = {
            labels: value
            for (name, labels), value in scraped.items()
            if name == "http_requests_total"
        }
        ok = frozenset({"route": "/users/{id}", "method": "GET", "status": "200"}.items())
        missing = frozenset({"route": "/users/{id}", "method": "GET", "status": "404"}.items())
        self.assertGreaterEqual(by_route[ok], 3)
        self.assertGreaterEqual(by_route[missing], 1)
        routes = {dict(labels)["route"] for labels in by_route}
        self.assertFalse([route for route in routes if any(c.isdigit() for c in route)], routes)
        # Durations too, under the same template.
        durations = {
            dict(labels)["route"]
            for (name, labels) in scraped
            if name == "http_request_duration_seconds_count"
        }
        self.assertIn("/users/{id}", durations)

    def test_reports_by_state_and_job_durations_follow_the_reports(self):
        user, token = self.new_user_with_stats(victory_count=1)
        self.post_report(user, token)
        self.wait_for_report(user, token)
        scraped = wait_until(
            lambda: (
                (s := self.scrape()).get(("report_job_duration_seconds_count", frozenset())) and s
            ),
            what="the job's duration in the metrics",
        )
        self.assertGreaterEqual(scraped[("reports", frozenset({"state": "done"}.items()))], 1)
        self.assertIn(("report_jobs_waiting", frozenset()), scraped)
        self.assertGreaterEqual(
            scraped[("report_jobs_total", frozenset({"outcome": "finished"}.items()))], 1
        )

    def test_metrics_hold_no_user_data(self):
        user, token = self.sign_up()
        self.fetch_user(user["id"])
        text = self.request("GET", "/metrics").body.decode()
        self.assertNotIn(user["username"], text)
        self.assertNotIn(token, text)

    def test_scrapes_during_load_parse_and_counts_only_grow(self):
        user, _ = self.sign_up()
        stop = threading.Event()

        def load():
            while not stop.is_set():
                self.fetch_user(user["id"])

        with ThreadPoolExecutor(4) as pool:
            loaders = [pool.submit(load) for _ in range(3)]
            key = (
                "http_requests_total",
                frozenset({"route": "/users/{id}", "method": "GET", "status": "200"}.items()),
            )
            counts = [self.scrape().get(key, 0) for _ in range(5)]
            stop.set()
            for loader in loaders:
                loader.result(timeout=30)
        self.assertEqual(counts, sorted(counts))
        self.assertGreater(counts[-1], counts[0])


JOBS_WAITING = ("report_jobs_waiting", frozenset())


def pending_reports(client, number):
    """Posts a report for each of `number` new users, with no worker to take them."""
    for _ in range(number):
        client.post_report(*client.new_user_with_stats(victory_count=1))


class JobsWaitingInProcessTest(Scraping, ReportClient, ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off"}

    def test_jobs_waiting_are_the_pending_reports_on_the_in_process_broker(self):
        pending_reports(self, 3)
        scraped = self.scrape()
        self.assertEqual(scraped[("reports", frozenset({"state": "pending"}.items()))], 3)
        self.assertEqual(scraped[JOBS_WAITING], 3)


@require_rabbitmq
class JobsWaitingOnRabbitMQTest(Scraping, ReportClient, ServiceClient, BoundedTestCase):
    def setUp(self):
        queue_name = unique_name("test-metrics-")
        self.addCleanup(self.delete_queue, queue_name)
        self.service = LiveService(BROKER_URL=RABBITMQ_URL, REPORT_QUEUE=queue_name)
        self.addCleanup(self.service.stop)
        self.service.start_server()

    def delete_queue(self, name):
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            connection.default_channel.queue_delete(name)
            connection.default_channel.exchange_delete(name)

    def test_jobs_waiting_are_the_depth_of_the_queue(self):
        pending_reports(self, 2)
        self.assertEqual(self.scrape()[JOBS_WAITING], 2)

    def test_the_servers_metrics_have_the_render_durations_of_separate_workers(self):
        user, token = self.new_user_with_stats(victory_count=1)
        self.service.start_worker()
        self.post_report(user, token)
        self.wait_for_report(user, token)
        count = ("report_job_duration_seconds_count", frozenset())
        wait_until(
            lambda: self.scrape().get(count), what="a render duration in the server's metrics"
        )


class JobsWaitingUnknownTest(Scraping, ServiceTestCase):
    service_env = {"BROKER_URL": "amqp://guest:guest@127.0.0.1:9//"}

    def test_no_figure_of_jobs_waiting_when_the_broker_does_not_answer(self):
        scraped = self.scrape()
        self.assertNotIn(JOBS_WAITING, scraped)
        self.assertIn(("reports", frozenset({"state": "pending"}.items())), scraped)


class MetricsOffTest(ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off", "METRICS": "off"}

    def test_metrics_off_is_a_json_404(self):
        answer = self.request("GET", "/metrics")
        self.assertEqual(answer.status, 404, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("application/json"))


class WorkerMetricsTest(ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off"}

    def test_a_worker_serves_its_own_metrics_on_worker_metrics_port(self):
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
