"""PDF reports end to end: server, broker and worker processes, over HTTP.

The RabbitMQ tests use the real broker at RABBITMQ_URL (127.0.0.1:5672 by
default), each class on a queue of its own. Under CI=true they must run;
elsewhere they skip, saying why, when no RabbitMQ answers.
"""

import io
import os
import signal
import subprocess
import sys
import textwrap
import unittest
from concurrent.futures import ThreadPoolExecutor

from kombu import Connection, Exchange, Queue
from pypdf import PdfReader
from sqlalchemy import text

from test_api import PROJECT, ServiceTestCase, unique_name, wait_until

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_answers():
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)
        return True
    except Exception:
        return False


def pdf_text(data):
    return PdfReader(io.BytesIO(data)).pages[0].extract_text()


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

    def run_one_job(self, user, renderer):
        """Queues a report for user and runs its job in a worker process of
        its own whose report.render is replaced by renderer (Python source)."""
        script = textwrap.dedent(renderer) + textwrap.dedent(f"""
            import database, report, reports, worker
            report.render = render
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


class EmbeddedWorkerReportTest(ReportClient, ServiceTestCase):
    """The default set-up: memory:// broker, the worker in a server thread."""

    def test_report_holds_the_users_values_and_follows_stats_changes(self):
        user, token = self.new_user_with_stats(
            victory_count=8, loss_count=4, session_count=12, total_time=5000
        )
        accepted = self.post_report(user, token)
        url = f"/users/{user['id']}/pdf"
        self.assertEqual(accepted.json, {"url": url, "status": "pending"})
        self.assertEqual(accepted.header("Location"), url)

        first = self.wait_for_report(user, token)
        self.assertEqual(first.header("Content-Type"), "application/pdf")
        self.assertEqual(
            first.header("Content-Disposition"), f'inline; filename="{user["username"]}_stats.pdf"'
        )
        self.assertTrue(first.header("Last-Modified"))
        text = pdf_text(first.body)
        for value in (
            user["username"],
            "player@example.com",
            "female",
            "8",
            "4",
            "12",
            "5000",
            "1 h 23 min",
            "66.7%",
            "UTC",
        ):
            self.assertIn(value, text)
        self.assertEqual(len(PdfReader(io.BytesIO(first.body)).pages), 1)

        self.request("PATCH", f"/users/{user['id']}/stats", {"victory_count": 31}, token=token)
        self.post_report(user, token)
        second = self.wait_for_report(user, token, unlike_etag=first.header("ETag"))
        self.assertIn("31", pdf_text(second.body))

    def test_report_shows_every_field_exactly_even_dollars_and_longest_values(self):
        largest = 2**63 - 1
        username = unique_name("W" * 20)[:32]
        user, token = self.sign_up(
            username=username, email="a$b$@c.de" + "e" * 200 + ".com", gender="$\\frac{$ is text"
        )
        self.request(
            "PUT",
            f"/users/{user['id']}/stats",
            dict.fromkeys(("victory_count", "loss_count", "session_count", "total_time"), largest),
            token=token,
        )
        self.post_report(user, token)
        text = pdf_text(self.wait_for_report(user, token).body).replace("\n", " ")
        for value in (username, user["email"], "$\\frac{$ is text", str(largest), "50.0%"):
            self.assertIn(value, text)

    def test_report_is_an_a4_page_made_by_matplotlib(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        reader = PdfReader(io.BytesIO(self.wait_for_report(user, token).body))
        self.assertIn("Matplotlib", reader.metadata["/Producer"])
        box = reader.pages[0].mediabox
        self.assertEqual((round(box.width), round(box.height)), (595, 842))

    def test_unchanged_report_answers_304_to_its_etag(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        etag = self.wait_for_report(user, token).header("ETag")
        again = self.request(
            "GET", f"/users/{user['id']}/pdf", token=token, headers={"If-None-Match": etag}
        )
        self.assertEqual(again.status, 304)
        self.assertEqual(again.body, b"")
        self.assertEqual(again.header("ETag"), etag)

    def test_fetches_while_new_reports_replace_old_ones_always_get_a_whole_pdf(self):
        # A finished report deletes the one it replaces; a GET that chose the
        # old one just before must still serve a PDF, never an empty 200.
        user, token = self.new_user_with_stats(victory_count=3)
        url = f"/users/{user['id']}/pdf"
        self.post_report(user, token)
        etag = self.wait_for_report(user, token).header("ETag")
        replacing = True
        wrong = []

        def fetch_until_the_replacing_ends():
            while replacing:
                answer = self.request("GET", url, token=token)
                if answer.status != 200 or not answer.body.startswith(b"%PDF-"):
                    wrong.append((answer.status, answer.body[:40]))

        with ThreadPoolExecutor(3) as pool:
            fetchers = [pool.submit(fetch_until_the_replacing_ends) for _ in range(3)]
            try:
                for _ in range(60):
                    self.post_report(user, token)
                    etag = self.wait_for_report(user, token, unlike_etag=etag).header("ETag")
            finally:
                replacing = False
            for fetcher in fetchers:
                fetcher.result()  # a fetcher's own failure fails the test too
        self.assertEqual(wrong, [])

    def test_get_before_any_request_is_404(self):
        user, token = self.new_user_with_stats()
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=token), 404)

    def test_report_routes_need_a_token_and_posting_needs_the_owner(self):
        user, token = self.new_user_with_stats()
        _, other_token = self.new_user_with_stats()
        url = f"/users/{user['id']}/pdf"
        self.assertError(self.request("POST", url), 401)
        self.assertError(self.request("GET", url), 401)
        self.assertError(self.request("POST", url, token=other_token), 403)
        self.assertError(self.request("POST", "/users/999999/pdf", token=token), 404)
        self.assertError(self.request("GET", "/users/999999/pdf", token=token), 404)

    def test_deleting_a_user_deletes_their_report(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        self.wait_for_report(user, token)
        self.assertEqual(self.request("DELETE", f"/users/{user['id']}", token=token).status, 204)
        _, reader_token = self.new_user_with_stats()
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=reader_token), 404)

    def test_healthz_reports_database_and_broker(self):
        answer = self.request("GET", "/healthz")
        self.assertEqual(
            (answer.status, answer.json), (200, {"status": "ok", "database": "ok", "broker": "ok"})
        )

    def test_failed_render_is_a_clear_error_and_a_new_post_starts_over(self):
        user, token = self.new_user_with_stats()
        run = self.run_one_job(
            user,
            """
            def render(data): raise RuntimeError("broken renderer")
        """,
        )
        self.assertIn("failed job", run.stdout, run.stderr)
        self.assertEqual(run.stderr.count("render attempt"), 3)  # bounded retries, logged

        failed = self.request("GET", f"/users/{user['id']}/pdf", token=token)
        self.assertError(failed, 409, mentions="could not be drawn")
        self.post_report(user, token)
        self.wait_for_report(user, token)

    def test_a_post_while_a_job_renders_queues_another_with_the_new_stats(self):
        # The contract: the report holds the data as it is when the job runs.
        # A job already running has read it, so a POST then must not be absorbed.
        user, token = self.new_user_with_stats(victory_count=100_001)
        run = self.run_one_job(
            user,
            f"""
            import json, urllib.request
            from report import render as real_render
            def call(method, path, body=None):
                request = urllib.request.Request(
                    "http://127.0.0.1:{self.service.port}" + path, method=method,
                    data=body and json.dumps(body).encode(),
                    headers={{"Authorization": "Bearer {token}",
                              "Content-Type": "application/json"}})
                urllib.request.urlopen(request).close()
            def render(data):  # the user changes their stats and asks again meanwhile
                call("PATCH", "/users/{user["id"]}/stats", {{"victory_count": 100_002}})
                call("POST", "/users/{user["id"]}/pdf")
                return real_render(data)
        """,
        )
        self.assertIn("finished job", run.stdout, run.stderr)

        def served_with_the_new_stats():
            answer = self.wait_for_report(user, token)
            return "100002" in pdf_text(answer.body)

        wait_until(served_with_the_new_stats, timeout=20, what="a report with the new stats")


def require_rabbitmq(test_class):
    """Skip without RabbitMQ, except in CI, where it is required."""
    if rabbitmq_answers() or os.environ.get("CI") == "true":
        return test_class
    return unittest.skip(f"no RabbitMQ answers at {RABBITMQ_URL} (CI requires one)")(test_class)


@require_rabbitmq
class RabbitMQReportTest(ReportClient, ServiceTestCase):
    """Server and separate worker processes sharing RabbitMQ."""

    @classmethod
    def setUpClass(cls):
        cls.queue_name = unique_name("test-reports-")
        cls.service_env = {"BROKER_URL": RABBITMQ_URL, "REPORT_QUEUE": cls.queue_name}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        with Connection(RABBITMQ_URL) as connection:
            cls.queue()(connection.default_channel).delete()

    @classmethod
    def queue(cls):
        return Queue(
            cls.queue_name,
            Exchange(cls.queue_name, type="direct", durable=True),
            routing_key="report",
            durable=True,
        )

    def tearDown(self):
        for worker in self.service.processes[1:]:
            worker.stop(signal.SIGKILL)
        del self.service.processes[1:]

    def ready_jobs(self):
        with Connection(RABBITMQ_URL) as connection:
            return (
                self.queue()(connection.default_channel).queue_declare(passive=True).message_count
            )

    def test_server_queues_and_a_separate_worker_renders(self):
        user, token = self.new_user_with_stats(victory_count=3, loss_count=1)
        self.service.start_worker()
        self.post_report(user, token)
        text = pdf_text(self.wait_for_report(user, token).body)
        self.assertIn("75.0%", text)

    def test_jobs_wait_in_the_queue_for_a_worker(self):
        user, token = self.new_user_with_stats(victory_count=5)
        self.post_report(user, token)
        pending = self.request("GET", f"/users/{user['id']}/pdf", token=token)
        self.assertEqual((pending.status, pending.json), (202, {"status": "pending"}))
        self.assertTrue(int(pending.header("Retry-After")) > 0)
        self.post_report(user, token)  # while pending: no second job
        self.assertEqual(self.ready_jobs(), 1)

        self.service.start_worker()
        self.wait_for_report(user, token)
        self.assertEqual(self.ready_jobs(), 0)

    def test_job_pending_too_long_is_queued_again_by_the_next_post(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        self.assertEqual(self.ready_jobs(), 1)
        # As if the server had crashed between its commit and its publish, long ago.
        with self.service.database() as db:
            db.execute(
                text(
                    "UPDATE reports SET published_at = published_at - 3600 WHERE user_id = :user_id"
                ),
                {"user_id": user["id"]},
            )
        self.post_report(user, token)
        self.assertEqual(self.ready_jobs(), 2)

        worker = self.service.start_worker()
        self.wait_for_report(user, token)
        wait_until(lambda: "already finished" in worker.output(), what="the duplicate dropped")
        self.assertEqual(self.ready_jobs(), 0)

    def test_worker_killed_mid_job_leaves_it_to_another_worker(self):
        user, token = self.new_user_with_stats(victory_count=7)
        first = self.service.start_worker()
        wait_until(lambda: "consuming report jobs" in first.output(), what="worker 1 consuming")
        first.popen.send_signal(signal.SIGSTOP)  # frozen: takes the job, never acks it
        self.post_report(user, token)
        wait_until(lambda: self.ready_jobs() == 0, what="the job delivered to worker 1")
        first.stop(signal.SIGKILL)

        self.service.start_worker()
        self.assertIn("7", pdf_text(self.wait_for_report(user, token).body))

    def test_malformed_jobs_are_acked_logged_and_skipped(self):
        worker = self.service.start_worker()
        wait_until(lambda: "consuming report jobs" in worker.output(), what="worker consuming")
        with Connection(RABBITMQ_URL) as connection:
            producer = connection.Producer()
            for body, content_type in (
                (b"\x00not json", "application/octet-stream"),
                (b"{not json", "application/json"),
                (b'{"report_id": "x"}', "application/json"),
                (b'{"report_id": 999999999, "user_id": 1}', "application/json"),
            ):
                producer.publish(
                    body,
                    exchange=self.queue().exchange,
                    routing_key="report",
                    content_type=content_type,
                    content_encoding="utf-8",
                    declare=[self.queue()],
                )
        wait_until(lambda: worker.output().count("dropped") == 4, what="4 dropped jobs logged")
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        self.wait_for_report(user, token)
        self.assertEqual(self.ready_jobs(), 0)

    def test_worker_stops_cleanly_on_sigterm(self):
        worker = self.service.start_worker()
        wait_until(lambda: "consuming report jobs" in worker.output(), what="worker consuming")
        self.assertEqual(worker.stop(signal.SIGTERM), 0)
        self.assertIn("worker stopped", worker.output())


class UnreachableBrokerTest(ReportClient, ServiceTestCase):
    """A broker that refuses connections: 503, and nothing left pending."""

    service_env = {"BROKER_URL": "amqp://guest:guest@127.0.0.1:9//"}

    def test_post_is_503_and_leaves_nothing_pending(self):
        user, token = self.new_user_with_stats()
        answer = self.request("POST", f"/users/{user['id']}/pdf", token=token)
        self.assertError(answer, 503)
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=token), 404)

    def test_healthz_names_the_broker_as_down(self):
        answer = self.request("GET", "/healthz")
        self.assertEqual(
            (answer.status, answer.json),
            (503, {"status": "down", "database": "ok", "broker": "down"}),
        )


if __name__ == "__main__":
    unittest.main()


class ReportLibraryTest(unittest.TestCase):
    """report.py reaches into matplotlib's private parts for speed: these fail
    when an upgrade of matplotlib silently undoes that."""

    def test_the_pdf_backend_reads_core_font_metrics_through_the_parsed_once_cache(self):
        import report

        data = report.ReportData("cache_check", None, None, 3, 1, 2, 60)
        report.render(data)  # warms report's own caches
        calls = []
        parse_once = report._parse_afm

        def counted(path):
            calls.append(path)
            return parse_once(path)

        report._parse_afm = counted
        try:
            pdf = report.render(data)
        finally:
            report._parse_afm = parse_once
        self.assertTrue(calls, "the PDF backend no longer calls backend_pdf.AFM: the cache is dead")
        self.assertTrue(all(str(path).endswith(".afm") for path in calls), calls)
        self.assertIn(
            "cache_check", "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
        )
