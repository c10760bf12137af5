"""Under pressure (CONTRACT.md): no single client can take the service down.

Floods of sign-ups and logins, per-client rates (and X-Forwarded-For from
trusted and untrusted peers), the hashing budget, idle and half-open
connections, and headers that never finish. Each class runs a server with
the limits it tests (test_api's LiveService lifts them for the other tests).
"""

import http.client
import json
import socket
import threading
import time
import unittest
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from serving import REFUSED_PAUSE
from testing import (
    ServiceTestCase,
    unique_name,
    wait_until,
)

PRODUCTION_SCRYPT_N = "16384"  # 16 MiB and about 0.2 s of a core per hash, as in production


def status_or_failure(send):
    """The status of send()'s answer, or the name of the error it ended with."""
    try:
        return send().status
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__


class PressureTestCase(ServiceTestCase):
    def assertRefused(self, answer, status):
        """A 429 or 503 as CONTRACT.md has it: the error body, Retry-After, nosniff."""
        self.assertError(answer, status)
        retry_after = answer.header("Retry-After") or ""
        self.assertTrue(retry_after.isdigit() and int(retry_after) >= 1, retry_after)
        self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")

    def user_count(self):
        with self.service.database() as db:
            return db.exec_driver_sql("SELECT count(*) FROM users").scalar()

    def user_exists(self, username):
        with self.service.database() as db:
            found = db.execute(
                text("SELECT 1 FROM users WHERE username = :name"), {"name": username}
            )
            return found.first() is not None

    def flood(self, send, seconds=3, connections=16):
        """Runs send(name) from `connections` threads with fresh names for
        `seconds`, while a reader GETs a user; (the flood's answers by status,
        the reads' statuses). On a new server: rates untouched by another flood."""
        self.service.start_server()
        reader, _ = self.sign_up()
        stop = threading.Event()
        answers, reads = Counter(), []

        def flooder(_):
            while not stop.is_set():
                answers[status_or_failure(lambda: send(unique_name("flood")))] += 1

        def read():
            while not stop.is_set():
                reads.append(
                    status_or_failure(lambda: self.request("GET", f"/users/{reader['id']}"))
                )

        with ThreadPoolExecutor(connections + 1) as pool:
            running = [pool.submit(flooder, n) for n in range(connections)]
            running.append(pool.submit(read))
            stop.wait(seconds)
            stop.set()
            for done in running:
                done.result(timeout=60)
        return answers, reads


class FloodTest(PressureTestCase):
    """The defaults of CONTRACT.md, at production hashing cost."""

    service_env = {
        "EMBEDDED_WORKER": "off",
        "SCRYPT_N": PRODUCTION_SCRYPT_N,
        "HASH_CONCURRENCY": "",
        "SIGNUP_RATE": "",
        "LOGIN_RATE": "",
    }

    def test_reads_keep_succeeding_under_a_sign_up_flood_which_gets_201_429_or_503(self):
        before = self.user_count()
        answers, reads = self.flood(
            lambda name: self.request("POST", "/users", {"username": name, "password": "pw"})
        )
        self.assertTrue(reads, "no read was answered during the flood")
        self.assertEqual(set(reads), {200}, Counter(reads))
        self.assertLessEqual(set(answers), {201, 429, 503}, answers)
        self.assertGreater(answers[429] + answers[503], 0, answers)
        # Only the accepted sign-ups (and the reader) made users.
        self.assertEqual(self.user_count(), before + answers[201] + 1)

    def test_reads_keep_succeeding_under_a_login_flood_which_gets_401_429_or_503(self):
        answers, reads = self.flood(
            lambda name: self.request("POST", "/login", {"username": name, "password": "pw"})
        )
        self.assertTrue(reads, "no read was answered during the flood")
        self.assertEqual(set(reads), {200}, Counter(reads))
        self.assertLessEqual(set(answers), {401, 429, 503}, answers)
        self.assertGreater(answers[429] + answers[503], 0, answers)
        # Only the checked logins count as failed ones, not those refused unchecked.
        with self.service.database() as db:
            failures = db.execute(
                text("SELECT count(*) FROM login_failures WHERE username LIKE :flood"),
                {"flood": "flood%"},
            ).scalar()
        self.assertEqual(failures, answers[401])


class HashingBudgetTest(PressureTestCase):
    """One hash at a time, no rate to stop a client first: the budget alone."""

    service_env = {
        "EMBEDDED_WORKER": "off",
        "SCRYPT_N": PRODUCTION_SCRYPT_N,
        "HASH_CONCURRENCY": "1",
    }

    def at_once(self, send, number=16):
        with ThreadPoolExecutor(number) as pool:
            return list(pool.map(send, range(number)))

    def test_sign_ups_beyond_the_budget_get_503_and_create_nothing(self):
        names = [unique_name("budget") for _ in range(16)]
        answers = self.at_once(
            lambda n: self.request("POST", "/users", {"username": names[n], "password": "pw"})
        )
        statuses = Counter(answer.status for answer in answers)
        self.assertLessEqual(set(statuses), {201, 503}, statuses)
        self.assertGreater(statuses[503], 0, statuses)
        self.assertGreater(statuses[201], 0, statuses)
        for name, answer in zip(names, answers, strict=True):
            if answer.status == 503:
                self.assertRefused(answer, 503)
                self.assertFalse(self.user_exists(name), name)
            else:
                self.assertTrue(self.user_exists(name), name)

    def test_logins_refused_for_the_budget_are_not_failed_logins(self):
        user, _ = self.sign_up()
        answers = self.at_once(lambda _: self.log_in(user["username"], "wrong"))
        statuses = Counter(answer.status for answer in answers)
        self.assertLessEqual(set(statuses), {401, 503}, statuses)
        self.assertGreater(statuses[503], 0, statuses)
        for answer in answers:
            if answer.status == 503:
                self.assertRefused(answer, 503)
        with self.service.database() as db:
            failures = db.execute(
                text("SELECT count(*) FROM login_failures WHERE username = :name"),
                {"name": user["username"]},
            ).scalar()
        self.assertEqual(failures, statuses[401])

    def test_a_throttled_username_gets_429_however_busy_the_budget_is(self):
        user, _ = self.sign_up()
        for _ in range(10):  # the failures that throttle the username
            self.assertEqual(self.log_in(user["username"], "wrong").status, 401)
        names = [unique_name("busy") for _ in range(4)]
        with ThreadPoolExecutor(16) as pool:
            # Four sign-ups keep the one slot busy while 12 logins come.
            sign_ups = [
                pool.submit(self.request, "POST", "/users", {"username": name, "password": "pw"})
                for name in names
            ]
            logins = [pool.submit(self.log_in, user["username"]) for _ in range(12)]
            statuses = Counter(login.result(timeout=60).status for login in logins)
            self.assertLessEqual({s.result(timeout=60).status for s in sign_ups}, {201, 503})
        # The throttle is known without a hash: never the budget's 503.
        self.assertEqual(statuses, {429: 12})


class RatesTest(PressureTestCase):
    service_env = {"EMBEDDED_WORKER": "off", "SIGNUP_RATE": "3", "LOGIN_RATE": "4"}

    def sign_up_from(self, headers=None):
        name = unique_name("rate")
        return name, self.request(
            "POST", "/users", {"username": name, "password": "pw"}, headers=headers
        )

    def test_sign_ups_beyond_the_rate_get_429_and_create_nothing(self):
        self.service.start_server()  # a new server: a rate of its own, untouched by other tests
        # One address: the peer's, whatever X-Forwarded-For says (no trusted proxy).
        forged = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(6)]
        statuses = []
        for headers in forged:
            name, answer = self.sign_up_from(headers)
            statuses.append(answer.status)
            if answer.status == 429:
                self.assertRefused(answer, 429)
                self.assertIn("sign-ups", answer.json["message"])
                self.assertLessEqual(int(answer.header("Retry-After")), 60)
                self.assertFalse(self.user_exists(name))
        self.assertEqual(statuses, [201] * 3 + [429] * 3)

    def test_logins_beyond_the_rate_get_429_even_for_the_right_password(self):
        self.service.start_server()  # a rate of its own
        user, _ = self.sign_up()
        statuses = [self.log_in(user["username"], "wrong").status for _ in range(4)]
        self.assertEqual(statuses, [401] * 4)
        answer = self.log_in(user["username"])
        self.assertRefused(answer, 429)
        self.assertNotIn("token", answer.json)

    def test_a_client_deaf_to_429_gets_one_answer_per_pause_on_its_connection(self):
        self.service.start_server()  # a rate of its own
        for _ in range(3):  # SIGNUP_RATE, used up
            self.sign_up_from()
        connection = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=30)
        self.addCleanup(connection.close)
        answers = 0
        started = time.monotonic()
        # Back to back on one keep-alive connection, as a load tool sends them:
        # unpaced, hundreds of 429s would come back in this time.
        while time.monotonic() - started < 4 * REFUSED_PAUSE:
            body = json.dumps({"username": unique_name("deaf"), "password": "pw"})
            connection.request("POST", "/users", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            self.assertEqual(answer.status, 429)
            answers += 1
        elapsed = time.monotonic() - started
        # Each answer but the first waited out the pause the one before set.
        self.assertLessEqual(answers, elapsed / REFUSED_PAUSE + 1, f"in {elapsed:.2f} s")
        self.assertGreater(answers, 1)
        # The pause is the connection's, not the address's: a new one is answered.
        self.assertEqual(self.request("GET", "/healthz").status, 200)


class TrustedProxyTest(PressureTestCase):
    service_env = {
        "EMBEDDED_WORKER": "off",
        "SIGNUP_RATE": "2",
        "TRUSTED_PROXIES": "10.9.0.0/16, 127.0.0.1",
    }

    def sign_up_via(self, forwarded_for):
        return self.request(
            "POST",
            "/users",
            {"username": unique_name("proxied"), "password": "pw"},
            headers={"X-Forwarded-For": forwarded_for},
        ).status

    def test_each_client_behind_a_trusted_proxy_has_a_rate_of_its_own(self):
        self.assertEqual([self.sign_up_via("203.0.113.1") for _ in range(3)], [201, 201, 429])
        self.assertEqual([self.sign_up_via("203.0.113.2") for _ in range(3)], [201, 201, 429])

    def test_the_right_most_untrusted_hop_counts_not_what_the_client_wrote(self):
        # The client writes any left-most hop it likes; the proxies append the
        # address they saw (trusted 10.9.x.x hops are skipped).
        statuses = [self.sign_up_via(f"192.0.2.{n}, 203.0.113.7, 10.9.1.1") for n in range(3)]
        self.assertEqual(statuses, [201, 201, 429])


class ConnectionsTest(PressureTestCase):
    service_env = {"EMBEDDED_WORKER": "off", "HEADER_TIMEOUT": "1"}

    def half_open(self, number, request_start=b"GET /healthz HTTP/1.1\r\nHost: test\r\n"):
        """number connections from 127.0.0.2 whose request headers never end
        (or, with request_start=b"", that never send a byte)."""
        sockets = []
        for _ in range(number):
            sock = socket.socket()
            sockets.append(sock)
            sock.settimeout(5)
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", self.service.port))  # the server accepts them all
            try:
                sock.sendall(request_start)
            except OSError:
                pass  # shed already: the server is doing its job
        self.addCleanup(lambda: [sock.close() for sock in sockets])
        return sockets

    def test_a_new_client_is_served_despite_2000_half_open_connections_from_one_address(self):
        for number in (300, 2000):
            with self.subTest(half_open=number):
                self.half_open(number)
                # A new client from another address: served, not left to time out.
                answer = self.request("GET", "/healthz")
                self.assertEqual(answer.status, 200, answer.body)

    def test_a_request_whose_headers_dribble_in_is_dropped_after_the_header_timeout(self):
        sock = self.half_open(1)[0]
        sock.settimeout(0.2)

        def dropped():
            try:
                data = sock.recv(1)
            except TimeoutError:
                # Still open: one more byte of a header line that never ends, so
                # the connection is never idle (Waitress's channel_timeout is 120 s).
                sock.sendall(b"X")
                return False
            except OSError:
                return True
            self.assertEqual(data, b"", "the slow request was answered, not dropped")
            return True

        wait_until(dropped, timeout=10, what="the server to drop the slow request")
        # A request that completes its headers at once is served as usual.
        self.assertEqual(self.request("GET", "/healthz").status, 200)

    def test_idle_connections_of_one_address_are_shed_oldest_first(self):
        # Silent ones: the header timeout does not apply before a request begins.
        sockets = self.half_open(150, request_start=b"")

        # The server keeps at most 100 of one address's connections.
        def closed_by_server():
            closed = 0
            for sock in sockets[:50]:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            return closed == 50

        wait_until(closed_by_server, timeout=10, what="the 50 oldest connections to be shed")
        for sock in sockets[50:]:  # the newest 100 are kept, open and silent
            sock.setblocking(False)
            with self.assertRaises(BlockingIOError):
                sock.recv(1)
        self.assertEqual(self.request("GET", "/healthz").status, 200)


if __name__ == "__main__":
    unittest.main()
