"""Operations and faults: graceful stops, restarts, a locked database, a
broker that goes away, and several servers and workers sharing PostgreSQL
and RabbitMQ. After each, every accepted job ends as a PDF, no request got
a 500, and nothing had to be restarted by hand.
"""

import http.client
import json
import re
import signal
import socket
import sqlite3
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

from testing import (
    RABBITMQ_URL,
    TEST_DATABASE_URL,
    FaultTestCase,
    Response,
    ServiceTestCase,
    card_values,
    past_busy,
    pdf_text,
    rabbitmq_answers,
    rabbitmq_stopped,
    require,
    unique_name,
    wait_until,
)


def hashes_in_flight(service):
    """The server's password_hashes_in_flight, read from GET /metrics."""
    answer = service.request("GET", "/metrics")
    found = re.search(rb"^password_hashes_in_flight ([0-9.]+)$", answer.body, re.MULTILINE)
    if answer.status != 200 or not found:
        raise AssertionError(f"no password_hashes_in_flight in /metrics: {answer.body[:200]!r}")
    return float(found.group(1))


class GracefulStopTest(FaultTestCase):
    def test_sigterm_finishes_the_request_in_flight_then_exits_within_10_s(self):
        # Real password cost: a login's hash (0.2 s or more) is long enough to
        # be seen in flight on /metrics, and to be in flight still at SIGTERM.
        service = self.start_service(SCRYPT_N="16384")
        # No embedded worker, whose stop would give the login time of its own.
        server = service.start_server(EMBEDDED_WORKER="off")
        username = unique_name()
        self.sign_up(username=username, password="pw")
        pool = ThreadPoolExecutor(1)
        self.addCleanup(pool.shutdown)
        for _ in range(5):
            # Any error of the request (refused, RemoteDisconnected when dropped
            # mid-flight, IncompleteRead when cut mid-body) is raised by result().
            login = pool.submit(
                self.request, "POST", "/login", {"username": username, "password": "pw"}
            )
            seen = wait_until(
                lambda login=login: (
                    "done" if login.done() else "in flight" if hashes_in_flight(service) else None
                ),
                what="the login in flight",
            )
            if seen == "in flight" and not login.done():
                break
            login.result(timeout=30)  # it finished before it was seen: again
        else:
            self.fail("no login could be caught in flight in five tries")
        signalled_at = time.monotonic()
        # Through Process, which then sends no second SIGTERM in stop(): one that came
        # after Python restored the default handler at exit would kill it with -15.
        server.send_signal(signal.SIGTERM)
        answer = login.result(timeout=30)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertIn("token", answer.json)
        exit_code = server.stop(timeout=15)  # it is already stopping: this waits
        self.assertEqual(exit_code, 0, server.output())
        self.assertLess(time.monotonic() - signalled_at, 10)
        log = server.output()
        # The login, in flight at the signal, was answered and logged; the stop
        # ran its course. (Not in a given order: the serving loop notices the
        # signal within 0.2 s, and the hash may end first.)
        self.assertRegex(log, r"access POST /login 200 [\d.]+ms user=")
        stopping = log.index("stopping: no new connections")
        self.assertIn("stopped", log[stopping:])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service.port), timeout=5).close()

    def test_embedded_worker_stops_with_the_server(self):
        service = self.start_service()
        server = service.start_server()
        wait_until(lambda: "consuming report jobs" in server.output(), what="the worker")
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertIn("worker stopped", server.output())


class AccessLogTest(ServiceTestCase):
    """One server for the three; no reports, so no embedded worker."""

    service_env = {"EMBEDDED_WORKER": "off"}

    def test_one_line_per_request_with_status_duration_and_user_never_a_secret(self):
        server = self.service.server
        user, token = self.sign_up(password="very-secret-password")
        self.request("PATCH", f"/users/{user['id']}/stats", {"victory_count": 1}, token=token)
        self.request("GET", "/users/999999")
        wait_until(lambda: "GET /users/999999" in server.output(), what="the access log")
        log = server.output()
        self.assertRegex(log, r"POST /users 201 [\d.]+ms user=-")
        self.assertRegex(log, rf"PATCH /users/{user['id']}/stats 200 [\d.]+ms user={user['id']}")
        self.assertRegex(log, r"GET /users/999999 404 [\d.]+ms user=-")
        self.assertNotIn("very-secret-password", log)
        self.assertNotIn(token, log)
        self.assertNotIn(token.split(".")[2], log)

    def test_a_path_cannot_forge_a_log_line(self):
        server = self.service.server
        forged = "/users/1%0A0.0%20access%20GET%20/forged%20200%200.1ms%20user=1"
        self.request("GET", forged)
        wait_until(lambda: "forged" in server.output(), what="the access log")
        self.assertNotIn("\n0.0 access GET /forged", server.output())
        self.assertIn(f" access GET {forged} 404 ", server.output())

    def test_a_long_path_cannot_push_the_status_and_user_out_of_its_line(self):
        server = self.service.server
        self.request("GET", "/users/" + "a" * 3000 + "%20200%200.1ms%20user=1")
        wait_until(lambda: "aaaa" in server.output(), what="the access log")
        line = next(line for line in server.output().splitlines() if "aaaa" in line)
        self.assertRegex(line, r" access GET /users/a{1017} 404 [\d.]+ms user=-$")


class RestartTest(FaultTestCase):
    def test_jobs_accepted_before_a_restart_end_as_pdfs_on_the_memory_broker(self):
        service = self.start_service()
        # No consumer at first: every job is still in the in-process queue at
        # SIGTERM, lost with the process unless the next server queues it again.
        server = service.start_server(EMBEDDED_WORKER="0")
        users = [self.sign_up() for _ in range(10)]
        for user, token in users:
            self.post_report(user, token)
        self.assertEqual(server.stop(signal.SIGTERM), 0)

        restarted = service.start_server()
        for user, token in users:
            self.wait_for_report(user, token)
        self.assertIn("queued 10 unfinished report(s) again", restarted.output())

    def test_a_job_cut_off_mid_render_is_rendered_after_a_restart_on_the_memory_broker(self):
        service = self.start_service()
        server = service.start_server(EMBEDDED_WORKER="0")
        user, token = self.new_user_with_stats(victory_count=100_007)
        died = self.run_one_job(
            user,
            """
            import os
            def render(data): os._exit(9)  # the process dies with the job in hand
        """,
        )
        self.assertEqual(died.returncode, 9, died.stderr)
        self.assertEqual(self.request("GET", f"/users/{user['id']}/pdf", token=token).status, 202)
        self.assertEqual(server.stop(signal.SIGTERM), 0)

        restarted = service.start_server()
        self.assertEqual(card_values(self.wait_for_report(user, token).body)["Victories"], "100007")
        self.assertIn("queued 1 unfinished report(s) again", restarted.output())

    @require(rabbitmq_answers(), f"no RabbitMQ answers at {RABBITMQ_URL}")
    def test_jobs_queued_on_rabbitmq_survive_a_server_restart(self):
        service = self.start_service_on_rabbitmq()
        server = service.start_server()
        users = [self.sign_up() for _ in range(5)]
        for user, token in users:
            self.post_report(user, token)
        self.assertEqual(server.stop(signal.SIGTERM), 0)

        service.start_worker()
        service.start_server()
        for user, token in users:
            self.wait_for_report(user, token)


def sent_then_answered(port, sent, method, path, body, token=None):
    """A request whose sent event is set once its bytes are all sent; its Response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body).encode(), headers=headers)
        sent.set()
        return Response(connection.getresponse())
    finally:
        connection.close()


@unittest.skipIf(TEST_DATABASE_URL, "it locks an SQLite file; PostgreSQL locks rows")
class LockedDatabaseTest(FaultTestCase):
    def test_writes_meet_another_programs_write_lock_wait_for_it_and_then_succeed(self):
        service = self.start_service()
        # Threads for the twelve writes that will wait, and for a read besides.
        service.start_server(WEB_THREADS="16")
        user, token = self.sign_up()
        held, release = threading.Event(), threading.Event()

        def hold_the_write_lock():
            # The fault: another program keeps the database locked, until told.
            db = sqlite3.connect(service.dir / "app.db", isolation_level=None, timeout=10)
            with closing(db):
                db.execute("BEGIN IMMEDIATE")
                held.set()
                if not release.wait(60):
                    raise AssertionError("the test never released the lock")
                db.execute("COMMIT")

        pool = ThreadPoolExecutor(13)
        self.addCleanup(pool.shutdown)
        self.addCleanup(release.set)  # first, whatever fails below
        locker = pool.submit(hold_the_write_lock)
        if not held.wait(10):
            locker.result(timeout=5)  # its error, if it had one
            self.fail("the lock was not taken within 10 s")
        requests = [
            ("PATCH", f"/users/{user['id']}/stats", {"victory_count": n}, token) for n in range(8)
        ] + [
            ("POST", "/users", {"username": unique_name(), "password": "pw"}, None)
            for _ in range(4)
        ]
        sent = [threading.Event() for _ in requests]
        answers = [
            pool.submit(sent_then_answered, service.port, event, *request)
            for event, request in zip(sent, requests, strict=True)
        ]
        for event in sent:
            self.assertTrue(event.wait(10), "a write could not be sent")
        # Waitress hands requests to its threads in the order they came, and a
        # read does not wait for the write lock: once a read sent after the
        # writes is answered, every write is in a thread of the server, waiting.
        self.assertEqual(self.request("GET", f"/users/{user['id']}").status, 200)
        self.assertEqual(
            [answer.done() for answer in answers],
            [False] * len(answers),
            "a write was answered while another program held the write lock",
        )
        release.set()
        locker.result(timeout=30)
        statuses = [answer.result(timeout=60).status for answer in answers]
        self.assertEqual(statuses, [200] * 8 + [201] * 4)
        self.assertIn(
            self.request("GET", f"/users/{user['id']}/stats", token=token).json["victory_count"],
            range(8),
        )
        self.post_report(user, token)
        self.wait_for_report(user, token)
        self.assertNoServerErrors(service.server)


@require(rabbitmq_answers(), f"no RabbitMQ answers at {RABBITMQ_URL}")
class BrokerRestartTest(FaultTestCase):
    def test_server_and_worker_ride_out_a_broker_restart(self):
        service = self.start_service_on_rabbitmq()
        server = service.start_server()
        users = [self.sign_up() for _ in range(6)]
        queued_before = users[:3]
        for user, token in queued_before:  # queued while no worker runs
            self.post_report(user, token)

        with rabbitmq_stopped():
            health = self.request("GET", "/healthz")
            self.assertEqual((health.status, health.json["broker"]), (503, "down"))
            during = [
                self.request("POST", f"/users/{user['id']}/pdf", token=token).status
                for user, token in users[3:]
            ]
            self.assertTrue(set(during) <= {202, 503}, during)

        worker = service.start_worker()
        wait_until(
            lambda: self.request("GET", "/healthz").status == 200,
            timeout=60,
            what="the server to see the broker again",
        )
        for user, token in users[3:]:  # refused (503) during the outage: post again
            answer = self.request("POST", f"/users/{user['id']}/pdf", token=token)
            self.assertEqual(answer.status, 202, answer.body)
        for user, token in users:
            self.wait_for_report(user, token, timeout=60)
        self.assertNoServerErrors(server, worker)

    def test_worker_reconnects_by_itself(self):
        service = self.start_service_on_rabbitmq()
        worker = service.start_worker()
        service.start_server()
        wait_until(lambda: "consuming report jobs" in worker.output(), what="the worker")
        with rabbitmq_stopped():
            pass  # a restart: the worker is left to notice, and to connect again
        wait_until(
            lambda: worker.output().count("consuming report jobs") >= 2,
            timeout=60,
            what="the worker to consume again",
        )
        user, token = self.sign_up()
        wait_until(
            lambda: self.request("GET", "/healthz").status == 200,
            timeout=60,
            what="the server to see the broker again",
        )
        self.post_report(user, token)
        self.wait_for_report(user, token, timeout=60)


class ThrottlingAcrossServersTest(FaultTestCase):
    def test_guesses_spread_over_two_servers_still_get_ten_in_all(self):
        service = self.start_service()
        no_worker = {"EMBEDDED_WORKER": "0"}
        ports = [port for _, port in service.start_servers(no_worker, no_worker)]
        user, _ = self.sign_up()

        def guess(number):
            return past_busy(
                lambda: self.request(
                    "POST",
                    "/login",
                    {"username": user["username"], "password": "wrong"},
                    port=ports[number % 2],
                )
            ).status

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(guess, range(40)))
        self.assertEqual(sorted(statuses), [401] * 10 + [429] * 30)
        for port in ports:
            answer = self.request(
                "POST", "/login", {"username": user["username"], "password": "secret-pw"}, port=port
            )
            self.assertEqual(answer.status, 429, answer.body)


@require(rabbitmq_answers(), f"no RabbitMQ answers at {RABBITMQ_URL}")
class SeveralMachinesTest(FaultTestCase):
    """Two servers and two workers sharing the database (PostgreSQL when
    TEST_DATABASE_URL is set, as in CI's second run) and RabbitMQ."""

    def test_jobs_posted_to_either_server_are_shared_and_survive_losing_one_of_each(self):
        service = self.start_service_on_rabbitmq()
        workers = [service.start_worker(), service.start_worker()]
        (first, first_port), (_, second_port) = service.start_servers({}, {})
        for worker in workers:
            wait_until(lambda w=worker: "consuming report jobs" in w.output(), what="a worker")

        users = [self.sign_up() for _ in range(16)]
        for number, (user, token) in enumerate(users):
            port = (first_port, second_port)[number % 2]
            answer = self.request("POST", f"/users/{user['id']}/pdf", token=token, port=port)
            self.assertEqual(answer.status, 202, answer.body)
        for number, (user, token) in enumerate(users):
            port = (second_port, first_port)[number % 2]  # served by the other server
            self.assertIn(
                user["username"],
                pdf_text(
                    wait_until(
                        lambda u=user, t=token, p=port: self.served(u, t, p), what="a report"
                    ).body
                ),
            )
        for worker in workers:
            self.assertIn("finished job", worker.output())  # both did some of the work

        self.assertEqual(workers[0].stop(signal.SIGTERM), 0)
        self.assertEqual(first.stop(signal.SIGTERM), 0)
        later = [self.sign_up() for _ in range(4)]
        for user, token in later:
            self.post_report(user, token)  # the second server, the port in use now
        for user, token in later:
            self.wait_for_report(user, token)
        self.assertNoServerErrors(first, service.server, *workers)

    def test_a_report_answered_202_is_made_though_its_server_died_before_publishing(self):
        # Lost jobs are looked for after REPUBLISH_AFTER (60 s; 3 s here, to keep the test short).
        service = self.start_service_on_rabbitmq()
        service.env["REPUBLISH_AFTER"] = "3"
        # A broker that takes the connection and never answers holds the first
        # server inside its publish, after it committed the pending report.
        black_hole = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(black_hole.close)
        service.start_worker()
        # The last one started is the one that lives: service.port.
        (doomed, doomed_port), _ = service.start_servers(
            {"BROKER_URL": f"amqp://guest:guest@127.0.0.1:{black_hole.getsockname()[1]}//"}, {}
        )
        user, token = self.sign_up()

        posting = ThreadPoolExecutor(1)
        self.addCleanup(posting.shutdown)
        cut_off = posting.submit(
            self.request, "POST", f"/users/{user['id']}/pdf", token=token, port=doomed_port
        )
        wait_until(
            lambda: [row[1] for row in self.report_rows(user)] == ["pending"],
            what="the pending report committed",
        )
        doomed.stop(signal.SIGKILL)  # inside its publish: the job never reached RabbitMQ
        with self.assertRaises(OSError):
            cut_off.result(timeout=30)

        # Nobody POSTs again: GETs only, on the server that lives.
        report = self.wait_for_report(user, token, timeout=90)
        self.assertIn(user["username"], pdf_text(report.body))
        self.assertIn("publishing its job again", service.server.output())

    def served(self, user, token, port):
        answer = self.request("GET", f"/users/{user['id']}/pdf", token=token, port=port)
        self.assertIn(answer.status, (200, 202), answer.body)
        return answer if answer.status == 200 else None


if __name__ == "__main__":
    unittest.main()
