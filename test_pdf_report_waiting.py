"""CONTRACT.md, PDF report, Waiting for a report instead of polling: `Prefer: wait=N`.

The embedded worker and RabbitMQ (two servers, two workers: the wait is
answered by the server that did not queue the job); the 202 after N seconds;
MAX_WAITING; the failure; the user deleted while a request waits on them.
In-process, waiting.py's rules: the N of the header, and Retry-After.
"""

import http.client
import subprocess
import sys
import threading
import time
import unittest
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import waiting
from testing import (
    PROJECT,
    RABBITMQ_URL,
    FaultTestCase,
    ReportClient,
    Response,
    ServiceTestCase,
    pdf_text,
    rabbitmq_answers,
    rabbitmq_stopped,
    require,
)


def waiting_get(test, user, token, seconds=10, port=None, sent=None):
    """GET the user's report with Prefer: wait=seconds; (answer, seconds it took).
    sent, a threading.Event if given, is set once the request is sent."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port or test.service.port, timeout=30)
    try:
        connection.request(
            "GET",
            f"/users/{user['id']}/pdf",
            headers={"Authorization": f"Bearer {token}", "Prefer": f"wait={seconds}"},
        )
        if sent:
            sent.set()
        answer = Response(connection.getresponse())
    finally:
        connection.close()
    return answer, time.monotonic() - started


class Waiting:
    """What the waiting tests do besides a ReportClient's."""

    def in_background(self, function, *args):
        pool = ThreadPoolExecutor(1)
        self.addCleanup(pool.shutdown)
        return pool.submit(function, *args)

    def start_waiting(self, user, token, port=None, seconds=10):
        """A GET of user's report with Prefer: wait=seconds, in the background,
        once it is known to wait (the server has MAX_WAITING=1): a probe then
        finds no room and gets its 202 at once. The future of its answer."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sent = threading.Event()
            waiter = self.in_background(waiting_get, self, user, token, seconds, port, sent)
            # The probe after the waiter's request: else it is often first to the
            # one place, and the round is lost (the probe's second, then again).
            sent.wait(10)
            while not waiter.done():
                probe, _ = waiting_get(self, user, token, seconds=1, port=port)
                if probe.header("Preference-Applied") is None and not waiter.done():
                    self.assertEqual(probe.status, 202, probe.body)
                    return waiter
            # The probe came first and the waiter found no room: again.
        raise AssertionError("no request could be seen waiting on the report")


class WaitingTest(Waiting, FaultTestCase):
    def test_a_waiting_get_returns_the_pdf_once_the_embedded_worker_made_it(self):
        self.start_service().start_server()
        # Twenty jobs ahead of ours: the GET surely finds the report pending.
        for _ in range(20):
            self.post_report(*self.sign_up())
        user, token = self.new_user_with_stats(victory_count=5, loss_count=3)
        self.post_report(user, token)
        answer, _ = waiting_get(self, user, token)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.header("Preference-Applied"), "wait=10")
        self.assertIn(user["username"], pdf_text(answer.body))


class NothingRendersTest(Waiting, ReportClient, ServiceTestCase):
    """One server for these: no worker, so a report stays pending; one request
    may wait at a time (MAX_WAITING=1)."""

    service_env = {"EMBEDDED_WORKER": "off", "MAX_WAITING": "1"}

    def test_a_waiting_get_answers_the_202_after_n_seconds_when_nothing_renders(self):
        user, token = self.sign_up()
        self.post_report(user, token)
        answer, took = waiting_get(self, user, token, seconds=1)
        self.assertEqual(answer.status, 202, answer.body)
        self.assertEqual(answer.json, {"status": "pending"})
        self.assertEqual(answer.header("Preference-Applied"), "wait=1")
        self.assertTrue((answer.header("Retry-After") or "").isdigit())
        self.assertGreaterEqual(took, 1.0)  # it did wait its second
        # Without the header, nothing changes: the 202 at once, nothing applied.
        plain = self.request("GET", f"/users/{user['id']}/pdf", token=token)
        self.assertEqual(plain.status, 202)
        self.assertIsNone(plain.header("Preference-Applied"))

    def test_beyond_max_waiting_the_202_comes_at_once(self):
        user, token = self.sign_up()
        self.post_report(user, token)
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda _: waiting_get(self, user, token, seconds=3)[0], range(2))
            )
        self.assertEqual([answer.status for answer in answers], [202, 202])
        applied = sorted(str(answer.header("Preference-Applied")) for answer in answers)
        self.assertEqual(applied, ["None", "wait=3"])  # one waited, one was told at once

    def test_a_request_waiting_on_a_user_who_is_deleted_ends_with_401(self):
        user, token = self.sign_up()
        self.post_report(user, token)
        waiter = self.start_waiting(user, token)
        deleted = self.request("DELETE", f"/users/{user['id']}", token=token)
        self.assertEqual(deleted.status, 204, deleted.body)
        answer, took = waiter.result(timeout=30)
        self.assertEqual(answer.status, 401, answer.body)
        self.assertEqual(answer.json["success"], False)
        self.assertEqual(answer.header("WWW-Authenticate"), "Bearer")
        self.assertLess(took, 10)  # woken by the deletion, not by its deadline


@require(rabbitmq_answers(), f"no RabbitMQ answers at {RABBITMQ_URL}")
class WaitingOnRabbitMQTest(Waiting, FaultTestCase):
    def start_failing_worker(self, service):
        """A worker process whose every render raises."""
        script = (
            "import drawing\n"
            "def render(data, now=None):\n"
            "    raise RuntimeError('broken on purpose')\n"
            "drawing.render = render\n"
            "import worker\n"
            "worker.main()\n"
        )
        log = open(service.dir / "failing-worker.log", "ab")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            env=service.env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: (process.kill(), process.wait()))
        return process

    def test_a_wait_across_a_broker_restart_ends_when_the_news_listener_is_back(self):
        # The report is finished while the broker is away, so its news is
        # lost: the server must read again once its news listener is back.
        service = self.start_service_on_rabbitmq()
        service.start_server(MAX_WAITING="1")
        user, token = self.new_user_with_stats(victory_count=3)
        self.post_report(user, token)
        report_id = self.report_rows(user)[0][0]
        with rabbitmq_stopped():
            waiter = self.start_waiting(user, token)
            finished = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import worker; print(worker.run_job("
                    f"{{'report_id': {report_id}, 'user_id': {user['id']}}}).text)",
                ],
                env=service.env,
                cwd=PROJECT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertIn("finished job", finished.stdout, finished.stderr)
        answer, took = waiter.result(timeout=30)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertLess(took, 9)  # not its deadline, 10 s
        self.assertNoServerErrors(service.server)

    def test_the_server_that_did_not_queue_the_job_answers_the_wait(self):
        service = self.start_service_on_rabbitmq()
        (_, first), (_, second) = service.start_servers({}, {"MAX_WAITING": "1"})
        user, token = self.new_user_with_stats(victory_count=2)
        answer = self.request("POST", f"/users/{user['id']}/pdf", token=token, port=first)
        self.assertEqual(answer.status, 202, answer.body)
        # No worker yet: the job waits in the queue while the GET waits on the other server.
        waiter = self.start_waiting(user, token, port=second)
        workers = [service.start_worker(), service.start_worker()]
        answer, _ = waiter.result(timeout=30)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.header("Preference-Applied"), "wait=10")
        self.assertIn(user["username"], pdf_text(answer.body))
        self.assertNoServerErrors(*service.processes[:2], *workers)

    def test_a_waiting_get_answers_the_failure_when_the_render_fails(self):
        service = self.start_service_on_rabbitmq()
        service.start_server(MAX_WAITING="1")
        user, token = self.sign_up()
        self.post_report(user, token)
        waiter = self.start_waiting(user, token)
        self.start_failing_worker(service)
        answer, _ = waiter.result(timeout=60)
        self.assertEqual(answer.status, 409, answer.body)
        self.assertEqual(answer.json["success"], False)
        self.assertEqual(answer.header("Preference-Applied"), "wait=10")
        self.assertIn("failed", answer.json["message"])


class WaitRulesTest(unittest.TestCase):
    """waiting.py in-process: the N of `Prefer: wait=N`, and Retry-After."""

    def test_prefer_wait_is_read_as_whole_seconds_at_most_10(self):
        for header, seconds in [
            ("wait=3", 3),
            ("wait=10", 10),
            ("wait=600", 10),
            ("WAIT = 2", 2),
            ('wait="4"', 4),
            ("respond-async, wait=5", 5),
            ("wait=6; ignored=1", 6),
            ("wait=0", 0),
            ("wait=1.5", 0),
            ("wait=-1", 0),
            ("wait=soon", 0),
            ("respond-async", 0),
            ("", 0),
        ]:
            with self.subTest(header=header):
                self.assertEqual(waiting.preferred_wait({"HTTP_PREFER": header}), seconds)
        self.assertEqual(waiting.preferred_wait({}), 0)

    def retry_after(self, jobs_ahead, job_seconds, settled_ago=()):
        """waiting.retry_after with one job taking job_seconds of late, and
        jobs settled the given seconds ago (oldest first)."""
        now = time.monotonic()
        with (
            mock.patch.object(waiting, "_job_seconds", job_seconds),
            mock.patch.object(waiting, "_settled_at", deque(now - ago for ago in settled_ago)),
        ):
            return waiting.retry_after(jobs_ahead)

    def test_retry_after_is_whole_seconds_and_at_least_1(self):
        for jobs_ahead in (0, 1, 7):
            with self.subTest(jobs_ahead=jobs_ahead):
                seconds = self.retry_after(jobs_ahead, 0.01)
                self.assertIs(type(seconds), int)
                self.assertEqual(seconds, 1)

    def test_retry_after_is_the_jobs_ahead_and_ours_at_one_jobs_duration(self):
        self.assertEqual(self.retry_after(9, 0.5), 5)  # 10 jobs of 0.5 s
        self.assertEqual(self.retry_after(10, 0.5), 6)  # 5.5 s, rounded up

    def test_retry_after_follows_the_pace_of_jobs_settling_lately(self):
        # Two workers: a job settles every 0.25 s though each takes 0.5 s.
        lately = [2.0 - 0.25 * n for n in range(9)]
        self.assertEqual(self.retry_after(18, 0.5, lately), 5)  # 19 jobs at 0.25 s
        # Jobs settled before the pace window count no more.
        long_ago = [waiting.PACE_WINDOW + 3.0 - 0.25 * n for n in range(9)]
        self.assertEqual(self.retry_after(18, 0.5, long_ago), 10)  # 19 jobs at 0.5 s


if __name__ == "__main__":
    unittest.main()
