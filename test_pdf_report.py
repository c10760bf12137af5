"""CONTRACT.md, PDF report: end to end, with server, broker and worker
processes, over HTTP; and the page itself, drawn by drawing.py in-process.

The RabbitMQ tests use the real broker at RABBITMQ_URL (127.0.0.1:5672 by
default), each test on a queue of its own. Under CI=true they must run;
elsewhere they skip, saying why, when no RabbitMQ answers.

A report is read as a reader would: its text with pypdf (and with
`pdftotext`, the contract's own words, where poppler-utils is installed; a
must under CI=true), each value in its place beside its label, and its
drawing, the paths painted on the page.
"""

import io
import os
import re
import signal
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from kombu import Connection
from pypdf import PdfReader
from sqlalchemy import text

import drawing
from testing import (
    GENERATED,
    PROJECT,
    RABBITMQ_URL,
    QueueOfItsOwn,
    ReportClient,
    ServiceTestCase,
    card_values,
    embedded_fonts,
    expected_cards,
    generated_at,
    header_words,
    job_process_of,
    painted_shapes,
    pdf_lines,
    pdf_text,
    require_rabbitmq,
    signal_if_alive,
    unique_name,
    wait_until,
)

ORIGIN = "https://app.example"
# Values that no date, time, label or other value of the page holds: each found
# as a whole line in its place is the value itself.
STATS = {"victory_count": 41_357, "loss_count": 17_723, "session_count": 55_373}
STATS["total_time"] = 9_876_543


class EmbeddedWorkerReportTest(ReportClient, ServiceTestCase):
    """The default set-up: memory:// broker, the worker in a server thread."""

    service_env = {"CORS_ORIGINS": ORIGIN}

    def test_report_holds_each_value_in_its_place_and_follows_stats_changes(self):
        user, token = self.new_user_with_stats(**STATS)
        accepted = self.post_report(user, token)
        url = f"/users/{user['id']}/pdf"
        self.assertEqual(accepted.json, {"url": url, "status": "pending"})
        self.assertEqual(accepted.header("Location"), url)
        self.assertEqual(accepted.header("X-Content-Type-Options"), "nosniff")

        first = self.wait_for_report(user, token)
        self.assertEqual(first.header("Content-Type"), "application/pdf")
        self.assertEqual(first.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(
            first.header("Content-Disposition"), f'inline; filename="{user["username"]}_stats.pdf"'
        )
        self.assertEqual(len(PdfReader(io.BytesIO(first.body)).pages), 1)
        lines = pdf_lines(first.body)
        self.assertEqual(lines[0], user["username"])
        self.assertIn("Game statistics report", lines)
        self.assertIn("Email: player@example.com", lines)
        self.assertIn("Gender: female", lines)
        cards = expected_cards(**STATS)
        self.assertEqual(card_values(first.body, labels=cards), cards)
        # The bar chart: each count above its label; the ring: the share won.
        chart = lines.index("Victories against losses")
        share = lines.index("Share of games won")
        self.assertEqual(lines[chart + 1 : share], ["41357", "Victories", "17723", "Losses"], lines)
        self.assertEqual(lines[share + 1], "70%")  # 41357 of 59080 games

        # Generated now (UTC), and Last-Modified is the time the report was stored.
        made = generated_at(first.body)
        self.assertIsNotNone(made, lines)
        self.assertLess(abs((datetime.now(UTC) - made).total_seconds()), 60, made)
        ((report_id, state, finished_at),) = self.report_rows(user)
        self.assertEqual(state, "done")
        last_modified = parsedate_to_datetime(first.header("Last-Modified"))
        self.assertEqual(last_modified, datetime.fromtimestamp(int(finished_at), UTC))
        self.assertLess(abs((last_modified - made).total_seconds()), 60)

        changed = self.request(
            "PATCH", f"/users/{user['id']}/stats", {"victory_count": 52_817}, token=token
        )
        self.assertEqual(changed.status, 200, changed.body)
        self.post_report(user, token)
        second = self.wait_for_report(user, token, unlike_etag=first.header("ETag"))
        self.assertEqual(
            card_values(second.body),
            {
                "Victories": "52817",
                "Losses": "17723",
                "Sessions": "55373",
                "Games played": "70540",
                "Win rate": "74.9%",
            },
        )
        # The newer report replaced the older one.
        ((newer_id, state, _),) = self.report_rows(user)
        self.assertEqual(state, "done")
        self.assertGreater(newer_id, report_id)

    def test_any_valid_token_may_read_another_users_report(self):
        owner, owner_token = self.new_user_with_stats(victory_count=12_345)
        _, reader_token = self.new_user_with_stats()
        self.post_report(owner, owner_token)
        mine = self.wait_for_report(owner, owner_token)
        theirs = self.request("GET", f"/users/{owner['id']}/pdf", token=reader_token)
        self.assertEqual(theirs.status, 200, theirs.body)
        self.assertEqual(theirs.body, mine.body)
        self.assertEqual(card_values(theirs.body)["Victories"], "12345")

    def test_unchanged_report_answers_304_to_its_etag(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        served = self.wait_for_report(user, token)
        etag = served.header("ETag")
        for headers in (
            {"If-None-Match": etag},
            {"If-Modified-Since": served.header("Last-Modified")},
        ):
            with self.subTest(headers=headers):
                again = self.request(
                    "GET", f"/users/{user['id']}/pdf", token=token, headers=headers
                )
                self.assertEqual(again.status, 304)
                self.assertEqual(again.body, b"")
                self.assertEqual(again.header("ETag"), etag)
                self.assertEqual(again.header("X-Content-Type-Options"), "nosniff")
                self.assertEqual(again.header("Cache-Control"), "private, no-cache")
        # The PDF itself: no shared cache keeps it, though it has a Last-Modified.
        self.assertEqual(served.header("Cache-Control"), "private, no-cache")

    def test_the_report_is_readable_cross_origin_with_its_headers_exposed(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        etag = self.wait_for_report(user, token).header("ETag")
        url = f"/users/{user['id']}/pdf"
        for what, headers, status in [
            ("200", {"Origin": ORIGIN}, 200),
            ("304", {"Origin": ORIGIN, "If-None-Match": etag}, 304),
        ]:
            with self.subTest(what):
                answer = self.request("GET", url, token=token, headers=headers)
                self.assertEqual(answer.status, status)
                self.assertEqual(answer.header("Access-Control-Allow-Origin"), ORIGIN)
                if status == 200:
                    self.assertLessEqual(
                        {"etag", "last-modified", "retry-after"},
                        header_words(answer.header("Access-Control-Expose-Headers")),
                    )
        other = self.request("GET", url, token=token, headers={"Origin": "https://evil.example"})
        self.assertIsNone(other.header("Access-Control-Allow-Origin"))

    def test_fetches_while_new_reports_replace_old_ones_always_get_a_whole_pdf(self):
        # A finished report deletes the one it replaces; a GET that chose the
        # old one just before must still serve a PDF, never an empty 200.
        user, token = self.new_user_with_stats(victory_count=3)
        url = f"/users/{user['id']}/pdf"
        self.post_report(user, token)
        etag = self.wait_for_report(user, token).header("ETag")
        replacing = threading.Event()
        replacing.set()
        deadline = time.monotonic() + 120
        wrong = []

        def fetch_until_the_replacing_ends():
            while replacing.is_set() and time.monotonic() < deadline:
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
                replacing.clear()
            for fetcher in fetchers:
                fetcher.result(timeout=60)  # a fetcher's own failure fails the test too
        self.assertEqual(wrong, [])

    def test_get_before_any_request_is_404(self):
        user, token = self.new_user_with_stats()
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=token), 404)

    def test_report_routes_need_a_token_and_posting_needs_the_owner(self):
        user, token = self.new_user_with_stats()
        _, other_token = self.new_user_with_stats()
        url = f"/users/{user['id']}/pdf"
        for method in ("POST", "GET"):
            for bad in (None, "not-a-token"):
                with self.subTest(method=method, token=bad):
                    self.assertUnauthorized(self.request(method, url, token=bad))
        self.assertError(self.request("POST", url, token=other_token), 403)
        self.assertError(self.request("POST", "/users/999999/pdf", token=token), 404)
        self.assertError(self.request("GET", "/users/999999/pdf", token=token), 404)
        self.assertEqual(self.report_rows(user), [])  # none of those queued a report

    def test_deleting_a_user_deletes_their_reports(self):
        user, token = self.new_user_with_stats()
        self.post_report(user, token)
        self.wait_for_report(user, token)
        self.assertEqual([row[1] for row in self.report_rows(user)], ["done"])
        self.assertEqual(self.request("DELETE", f"/users/{user['id']}", token=token).status, 204)
        self.assertEqual(self.report_rows(user), [])  # the rows, PDF and all, are gone
        _, reader_token = self.new_user_with_stats()
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=reader_token), 404)

    def test_healthz_reports_database_and_broker(self):
        # On memory:// "broker ok" means: the in-process broker answers, and
        # the embedded worker consumes its queue.
        answer = self.request("GET", "/healthz")
        self.assertEqual(
            (answer.status, answer.json), (200, {"status": "ok", "database": "ok", "broker": "ok"})
        )

    def test_a_post_while_the_report_is_pending_queues_no_second_job(self):
        # The embedded worker's job process frozen: the job it is handed stays
        # pending (it marks the report "rendering" first thing, in that process).
        job_process = wait_until(
            lambda: job_process_of(self.service.server), what="the embedded worker's job process"
        )
        os.kill(job_process, signal.SIGSTOP)
        self.addCleanup(signal_if_alive, job_process, signal.SIGCONT)
        user, token = self.new_user_with_stats(victory_count=24_680)
        url = f"/users/{user['id']}/pdf"
        self.post_report(user, token)
        ((report_id, state, _),) = self.report_rows(user)
        self.assertEqual(state, "pending")
        pending = self.request("GET", url, token=token)
        self.assertEqual((pending.status, pending.json), (202, {"status": "pending"}))
        self.assertTrue(int(pending.header("Retry-After")) >= 1, pending.headers)
        self.assertEqual(pending.header("X-Content-Type-Options"), "nosniff")
        again = self.post_report(user, token)
        self.assertEqual(again.json, {"url": url, "status": "pending"})
        self.assertEqual(self.report_rows(user), [(report_id, "pending", None)])

        os.kill(job_process, signal.SIGCONT)
        self.assertEqual(card_values(self.wait_for_report(user, token).body)["Victories"], "24680")
        # A job queued after those two POSTs comes out after any they queued
        # (one queue, one consumer, one job at a time): once it is done, the
        # log tells every job of that report.
        marker, marker_token = self.new_user_with_stats()
        self.post_report(marker, marker_token)
        self.wait_for_report(marker, marker_token)
        log = self.service.server.output()
        jobs_of_the_report = re.findall(rf"\b(\w+) job {report_id}\b", log)
        self.assertEqual(jobs_of_the_report, ["finished"], log[-2000:])

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
            from drawing import render as real_render
            def call(method, path, body=None):
                request = urllib.request.Request(
                    "http://127.0.0.1:{self.service.port}" + path, method=method,
                    data=body and json.dumps(body).encode(),
                    headers={{"Authorization": "Bearer {token}",
                              "Content-Type": "application/json"}})
                urllib.request.urlopen(request, timeout=30).close()
            def render(data):  # the user changes their stats and asks again meanwhile
                call("PATCH", "/users/{user["id"]}/stats", {{"victory_count": 100_002}})
                call("POST", "/users/{user["id"]}/pdf")
                return real_render(data)
        """,
        )
        self.assertIn("finished job", run.stdout, run.stderr)

        def served_with_the_new_stats():
            answer = self.wait_for_report(user, token)
            return card_values(answer.body)["Victories"] == "100002"

        wait_until(served_with_the_new_stats, timeout=20, what="a report with the new stats")


# A worker whose render never ends: the job stays "rendering" until the worker dies.
STUCK_WORKER = """
import sys, threading
sys.path.insert(0, {project!r})
import drawing, worker
drawing.render = lambda data: threading.Event().wait(120)  # the fault: a render that hangs
worker.main()
"""


@require_rabbitmq
class RabbitMQReportTest(QueueOfItsOwn, ReportClient, ServiceTestCase):
    """A server and separate worker processes sharing RabbitMQ, on a queue of
    this class's own (emptied before each test). One server for the class;
    each test starts the workers it needs, stopped when it ends."""

    queue_name = unique_name("test-reports-")
    service_env = {"BROKER_URL": RABBITMQ_URL, "REPORT_QUEUE": queue_name}

    def start_worker(self, script="worker.py"):
        """A worker process of this test's own, stopped when the test ends."""
        worker = self.service.start(script)
        self.addCleanup(worker.stop)  # SIGTERM, SIGKILL after 15 s
        return worker

    def ready_jobs(self):
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            return (
                self.queue()(connection.default_channel).queue_declare(passive=True).message_count
            )

    def start_consuming_worker(self, script="worker.py"):
        worker = self.start_worker(script)
        wait_until(lambda: "consuming report jobs" in worker.output(), what="a worker consuming")
        return worker

    def test_server_queues_and_a_separate_worker_renders(self):
        user, token = self.new_user_with_stats(victory_count=3, loss_count=1)
        self.start_worker()
        self.post_report(user, token)
        self.assertEqual(card_values(self.wait_for_report(user, token).body)["Win rate"], "75.0%")

    def test_jobs_wait_in_the_queue_for_a_worker(self):
        user, token = self.new_user_with_stats(victory_count=5)
        self.post_report(user, token)
        pending = self.request("GET", f"/users/{user['id']}/pdf", token=token)
        self.assertEqual((pending.status, pending.json), (202, {"status": "pending"}))
        self.assertTrue(int(pending.header("Retry-After")) > 0)
        self.post_report(user, token)  # while pending: no second job
        self.assertEqual(self.ready_jobs(), 1)

        self.start_worker()
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

        worker = self.start_worker()
        self.wait_for_report(user, token)
        wait_until(lambda: "already finished" in worker.output(), what="the duplicate dropped")
        self.assertEqual(self.ready_jobs(), 0)

    def test_worker_killed_mid_render_leaves_the_job_to_another_worker(self):
        user, token = self.new_user_with_stats(victory_count=70_007)
        script = self.service.dir / "stuck_worker.py"
        script.write_text(STUCK_WORKER.format(project=str(PROJECT)))
        stuck = self.start_consuming_worker(script)
        self.post_report(user, token)
        wait_until(
            lambda: [row[1] for row in self.report_rows(user)] == ["rendering"],
            what="the job rendering in the first worker",
        )
        self.assertEqual(self.ready_jobs(), 0)  # in the first worker's hands, unacked
        stuck.stop(signal.SIGKILL)  # dies mid-render

        second = self.start_consuming_worker()
        report = self.wait_for_report(user, token)
        self.assertEqual(card_values(report.body)["Victories"], "70007")
        self.assertEqual([row[1] for row in self.report_rows(user)], ["done"])
        wait_until(lambda: "finished job" in second.output(), what="the second worker's log")
        self.assertEqual(self.ready_jobs(), 0)

    def test_malformed_jobs_are_acked_logged_and_skipped(self):
        worker = self.start_consuming_worker()
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
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
        worker = self.start_consuming_worker()
        self.assertEqual(worker.stop(signal.SIGTERM), 0)
        self.assertIn("worker stopped", worker.output())


class UnreachableBrokerTest(ReportClient, ServiceTestCase):
    """A broker that refuses connections: 503, and nothing left pending."""

    service_env = {"BROKER_URL": "amqp://guest:guest@127.0.0.1:9//"}

    def test_post_is_503_and_leaves_nothing_pending(self):
        user, token = self.new_user_with_stats()
        answer = self.request("POST", f"/users/{user['id']}/pdf", token=token)
        self.assertError(answer, 503)
        self.assertTrue((answer.header("Retry-After") or "").isdigit(), answer.headers)
        self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(self.report_rows(user), [])
        self.assertError(self.request("GET", f"/users/{user['id']}/pdf", token=token), 404)

    def test_healthz_names_the_broker_as_down(self):
        answer = self.request("GET", "/healthz")
        self.assertEqual(
            (answer.status, answer.json),
            (503, {"status": "down", "database": "ok", "broker": "down"}),
        )


def drawn(**fields):
    """drawing.render's PDF for a user with these fields (the others plain)."""
    data = {
        "username": "drawn_user",
        "email": "player@example.com",
        "gender": "female",
        "victory_count": 0,
        "loss_count": 0,
        "session_count": 0,
        "total_time": 0,
        **fields,
    }
    return drawing.render(drawing.ReportData(**data))


class ReportDrawingTest(ReportClient, unittest.TestCase):
    """drawing.py in-process: the figures a report shows and the page it draws,
    read back with pypdf (and pdftotext where installed). No server: that the
    worker draws the user's data as stored is EmbeddedWorkerReportTest's."""

    def test_win_rate_is_victories_over_games_and_none_without_games(self):
        self.assertEqual(drawing.win_rate(3, 1), 0.75)
        self.assertEqual(drawing.win_rate(0, 5), 0.0)
        self.assertIsNone(drawing.win_rate(0, 0))

    def test_total_time_reads_as_hours_and_minutes(self):
        self.assertEqual(drawing.hours_and_minutes(0), "0 h 00 min")
        self.assertEqual(drawing.hours_and_minutes(3599), "0 h 59 min")
        self.assertEqual(drawing.hours_and_minutes(9_876_543), "2743 h 29 min")

    def test_the_time_of_generation_is_shown_in_utc(self):
        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.assertEqual(
            generated_at(drawing.render(drawing.ReportData("t", None, None, 1, 1, 1, 1), now)), now
        )

    def test_a_report_without_games_shows_no_win_rate_yet(self):
        self.assertEqual(card_values(drawn(session_count=3))["Win rate"], "no games yet")

    def test_report_draws_a_chart_of_the_stats(self):
        shapes = painted_shapes(drawn(victory_count=30_000, loss_count=10_000))
        # The bars: two filled rectangles of two colours on one baseline, as
        # tall as the counts (3 to 1).
        rectangles = [shape for shape in shapes if shape[2] == 0]
        bars = [
            (first, second)
            for first in rectangles
            for second in rectangles
            if first[0] != second[0]
            and abs(first[1][1] - second[1][1]) < 0.5
            and second[1][3] - second[1][1] > 1
            and abs((first[1][3] - first[1][1]) / (second[1][3] - second[1][1]) - 3) < 0.03
        ]
        self.assertTrue(bars, f"no pair of bars 3 to 1 among the painted shapes {shapes}")
        victories, losses = bars[0]
        # The ring: curved shapes in the bars' colours, won and lost.
        ring_colours = {colour for colour, _, curves in shapes if curves}
        self.assertLessEqual({victories[0], losses[0]}, ring_colours, shapes)

    def test_report_shows_every_field_exactly_even_dollars_and_longest_values(self):
        largest = 2**63 - 1
        username = unique_name("W" * 20)[:32]
        email = "a$b$@c.de" + "e" * 200 + ".com"
        pdf = drawn(
            username=username,
            email=email,
            gender="$\\frac{$ is text",
            **dict.fromkeys(
                ("victory_count", "loss_count", "session_count", "total_time"), largest
            ),
        )
        text = pdf_text(pdf).replace("\n", " ")
        for value in (username, email, "$\\frac{$ is text"):
            self.assertIn(value, text)
        self.assertEqual(
            card_values(pdf),
            {
                "Victories": str(largest),
                "Losses": str(largest),
                "Sessions": str(largest),
                "Games played": str(2 * largest),
                "Win rate": "50.0%",
            },
        )

    def test_report_beyond_latin_1_embeds_its_font_and_keeps_its_text(self):
        # The PDF core fonts hold cp1252 only: this gender takes the embedded font.
        gender = "Ωμέγα ✓"
        pdf = drawn(gender=gender)
        self.assertIn(f"Gender: {gender}", pdf_lines(pdf))
        fonts = embedded_fonts(pdf)
        self.assertTrue(fonts and all(fonts.values()), fonts)
        self.assertTrue(any("DejaVu" in name for name in fonts), fonts)
        self.assertIn(f"Gender: {gender}", self.pdftotext_lines(pdf))

    def test_pdftotext_shows_the_username_and_each_value_in_whole_lines(self):
        lines = self.pdftotext_lines(drawn(username="pdftotext_user", **STATS))
        cards = expected_cards(**STATS)
        for value in (
            "pdftotext_user",
            "Email: player@example.com",
            "Gender: female",
            *cards,  # the labels
            *cards.values(),
        ):
            self.assertIn(value, lines)
        self.assertTrue(any(GENERATED.fullmatch(line) for line in lines), lines)

    def test_report_is_an_a4_page_made_by_matplotlib(self):
        reader = PdfReader(io.BytesIO(drawn()))
        self.assertEqual(len(reader.pages), 1)
        self.assertIn("Matplotlib", reader.metadata["/Producer"])
        box = reader.pages[0].mediabox
        self.assertEqual((round(box.width), round(box.height)), (595, 842))


class ReportLibraryTest(unittest.TestCase):
    """drawing.py reaches into matplotlib's private parts for speed: these fail
    when an upgrade of matplotlib silently undoes that."""

    def test_the_pdf_backend_reads_core_font_metrics_through_the_parsed_once_cache(self):
        import drawing

        data = drawing.ReportData("cache_check", None, None, 3, 1, 2, 60)
        drawing.render(data)  # warms its own caches
        calls = []
        parse_once = drawing._parse_afm

        def counted(path):
            calls.append(path)
            return parse_once(path)

        drawing._parse_afm = counted
        try:
            pdf = drawing.render(data)
        finally:
            drawing._parse_afm = parse_once
        self.assertTrue(calls, "the PDF backend no longer calls backend_pdf.AFM: the cache is dead")
        self.assertTrue(all(str(path).endswith(".afm") for path in calls), calls)
        self.assertIn(
            "cache_check", "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
        )


if __name__ == "__main__":
    unittest.main()
