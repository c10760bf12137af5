"""CONTRACT.md, Under pressure: no single client can take the service down.

Over HTTP, each class with a server of the limits it tests (testing.LiveService
lifts them for the other test files): floods of sign-ups and logins, per-client
rates (and X-Forwarded-For from trusted and untrusted peers), the hashing
budget, idle and half-open connections, and headers that never finish.

In-process, the rules themselves, so that breaking one fails a test: whose
address a rate counts (limits.client_address with TRUSTED_PROXIES), the
slots a throttle's events take and its Retry-After (throttle.py), and the
hashing budget (limits._HashBudget): a request that finds it full waits about
HASH_WAIT, only a few wait at once, and the others get 503 with Retry-After
at once. Every wait is bounded: a budget that never refuses fails its test
within seconds instead of hanging the suite.
"""

import http.client
import ipaddress
import itertools
import json
import socket
import threading
import time
import unittest
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

from sqlalchemy import text

import config
import limits
import throttle
from responses import ApiError
from serving import REFUSED_PAUSE
from testing import (
    ServiceTestCase,
    unique_name,
    wait_until,
)

# Client addresses of their own, one per test that needs rates untouched by
# the others (all of 127.0.0.0/8 is this machine's; 127.0.0.2 is ConnectionsTest's).
CLIENT_ADDRESSES = (f"127.0.0.{n}" for n in itertools.count(10))
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
        """Runs send(name, source) from `connections` threads with fresh names
        for `seconds`, while a reader GETs a user; (the flood's answers by
        status, the reads' statuses). The flood comes from a client address of
        its own (source): rates untouched by another flood."""
        source = next(CLIENT_ADDRESSES)
        reader, _ = self.sign_up()
        stop = threading.Event()
        answers, reads = Counter(), []

        def flooder(_):
            while not stop.is_set():
                answers[status_or_failure(lambda: send(unique_name("flood"), source))] += 1

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
            lambda name, source: self.request(
                "POST", "/users", {"username": name, "password": "pw"}, source=source
            )
        )
        self.assertTrue(reads, "no read was answered during the flood")
        self.assertEqual(set(reads), {200}, Counter(reads))
        self.assertLessEqual(set(answers), {201, 429, 503}, answers)
        self.assertGreater(answers[429] + answers[503], 0, answers)
        # Only the accepted sign-ups (and the reader) made users.
        self.assertEqual(self.user_count(), before + answers[201] + 1)

    def test_reads_keep_succeeding_under_a_login_flood_which_gets_401_429_or_503(self):
        answers, reads = self.flood(
            lambda name, source: self.request(
                "POST", "/login", {"username": name, "password": "pw"}, source=source
            )
        )
        self.assertTrue(reads, "no read was answered during the flood")
        self.assertEqual(set(reads), {200}, Counter(reads))
        self.assertLessEqual(set(answers), {401, 429, 503}, answers)
        self.assertGreater(answers[429] + answers[503], 0, answers)
        # Only the checked logins count as failed ones, not those refused unchecked.
        with self.service.database() as db:
            failures = db.execute(
                text(
                    "SELECT count(*) FROM recent_events"
                    " WHERE kind = 'login-failure' AND key LIKE :flood"
                ),
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
                text(
                    "SELECT count(*) FROM recent_events"
                    " WHERE kind = 'login-failure' AND key = :name"
                ),
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
    """Each test a client of its own address (127.0.0.x), with rates untouched
    by the other tests."""

    service_env = {"EMBEDDED_WORKER": "off", "SIGNUP_RATE": "3", "LOGIN_RATE": "4"}

    def setUp(self):
        super().setUp()
        self.source = next(CLIENT_ADDRESSES)

    def request(self, *args, **kwargs):
        return super().request(*args, source=self.source, **kwargs)

    def sign_up_from(self, headers=None, port=None):
        name = unique_name("rate")
        return name, self.request(
            "POST", "/users", {"username": name, "password": "pw"}, headers=headers, port=port
        )

    def test_sign_ups_beyond_the_rate_get_429_and_create_nothing(self):
        # One address: the peer's, whatever X-Forwarded-For says (no trusted proxy).
        forged = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(6)]
        statuses = []
        for headers in forged:
            name, answer = self.sign_up_from(headers)
            statuses.append(answer.status)
            if answer.status == 429:
                self.assertRefused(answer, 429)
                self.assertIn("sign-ups", answer.json["message"])
                # When the first sign-up leaves the minute: not a busy server's second.
                self.assertGreater(int(answer.header("Retry-After")), 30)
                self.assertLessEqual(int(answer.header("Retry-After")), 60)
                self.assertFalse(self.user_exists(name))
        self.assertEqual(statuses, [201] * 3 + [429] * 3)

    def test_the_rate_is_counted_across_servers_sharing_the_database(self):
        other = self.service.start_another_server()
        statuses = [self.sign_up_from(port=None if n % 2 else other)[1].status for n in range(5)]
        self.assertEqual(statuses, [201] * 3 + [429] * 2)

    def test_logins_beyond_the_rate_get_429_even_for_the_right_password(self):
        user, _ = self.sign_up()
        statuses = [self.log_in(user["username"], "wrong").status for _ in range(4)]
        self.assertEqual(statuses, [401] * 4)
        answer = self.log_in(user["username"])
        self.assertRefused(answer, 429)
        self.assertNotIn("token", answer.json)

    def test_a_client_deaf_to_429_gets_one_answer_per_pause_on_its_connection(self):
        for _ in range(3):  # SIGNUP_RATE, used up
            self.sign_up_from()
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.service.port, timeout=30, source_address=(self.source, 0)
        )
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


# Ranges of the trusted proxies of the client_address tests: an IPv4 range,
# a single IPv4 address, an IPv6 range.
PROXIES = tuple(
    ipaddress.ip_network(entry) for entry in ("10.0.0.0/8", "192.0.2.1", "2001:db8:1::/48")
)

# How long a test waits for a thread that should be done (or started) by then.
BOUND = 5  # seconds


def environ(peer, forwarded_for=None):
    """A WSGI environ of a request from peer, with X-Forwarded-For if given."""
    environ = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return environ


class ClientAddressTest(unittest.TestCase):
    def client(self, peer, forwarded_for=None, trusted=PROXIES):
        with mock.patch.object(config, "TRUSTED_PROXIES", trusted):
            return limits.client_address(environ(peer, forwarded_for))

    def test_without_trusted_proxies_the_peer_is_the_client_whatever_xff_says(self):
        self.assertEqual(self.client("203.0.113.7", trusted=()), "203.0.113.7")
        self.assertEqual(self.client("203.0.113.7", "198.51.100.1", trusted=()), "203.0.113.7")
        # Not even a peer that would be trusted were it configured.
        self.assertEqual(self.client("10.0.0.5", "198.51.100.1", trusted=()), "10.0.0.5")

    def test_xff_from_a_peer_that_is_not_a_trusted_proxy_is_ignored(self):
        # Any client could otherwise choose the address its rate counts under.
        for peer, forwarded_for in [
            ("203.0.113.7", "198.51.100.1"),
            ("203.0.113.7", "198.51.100.1, 198.51.100.2"),
            ("203.0.113.7", "10.0.0.9"),  # naming a trusted proxy changes nothing
            ("11.0.0.1", "198.51.100.1, 10.0.0.9"),  # just outside 10.0.0.0/8
            ("192.0.2.2", "198.51.100.1"),  # next to the trusted 192.0.2.1
            ("2001:db8:2::1", "2001:db8:ffff::1"),  # outside 2001:db8:1::/48
            ("2001:db8:2::1", "198.51.100.1"),
        ]:
            with self.subTest(peer=peer, forwarded_for=forwarded_for):
                self.assertEqual(self.client(peer, forwarded_for), peer)

    def test_from_a_trusted_proxy_the_right_most_hop_that_is_not_trusted_is_the_client(self):
        for peer, forwarded_for, client in [
            ("10.1.2.3", "198.51.100.9", "198.51.100.9"),
            # The left-most hops are whatever the client wrote: not believed.
            ("10.1.2.3", "1.2.3.4, 198.51.100.9", "198.51.100.9"),
            # Trusted hops (a range, a single address) on the right are skipped.
            ("10.1.2.3", "1.2.3.4, 198.51.100.9, 192.0.2.1, 10.0.0.5", "198.51.100.9"),
            ("192.0.2.1", "1.2.3.4,198.51.100.9,10.255.255.255", "198.51.100.9"),
            # IPv6: a trusted IPv6 proxy, IPv6 clients, and the two mixed.
            ("2001:db8:1::5", "2001:db8:ffff::1, 2001:db8:1::7", "2001:db8:ffff::1"),
            ("2001:db8:1::5", "2001:db8:ffff::1, 2001:db8:2::2", "2001:db8:2::2"),
            ("10.1.2.3", "198.51.100.9, 2001:db8:1:ffff::1", "198.51.100.9"),
            ("2001:db8:1::5", "2001:db8:ffff::1, 10.0.0.5", "2001:db8:ffff::1"),
            ("10.1.2.3", "  198.51.100.9  ,  10.0.0.5  ", "198.51.100.9"),
        ]:
            with self.subTest(peer=peer, forwarded_for=forwarded_for):
                self.assertEqual(self.client(peer, forwarded_for), client)

    def test_when_every_hop_is_a_trusted_proxy_the_left_most_hop_is_the_client(self):
        self.assertEqual(self.client("10.1.2.3", "10.0.0.1, 192.0.2.1, 10.0.0.2"), "10.0.0.1")
        self.assertEqual(self.client("2001:db8:1::5", "2001:db8:1::7"), "2001:db8:1::7")

    def test_a_trusted_proxy_with_no_or_empty_xff_is_the_client(self):
        for forwarded_for in [None, "", "   ", ",", " , ,"]:
            with self.subTest(forwarded_for=forwarded_for):
                self.assertEqual(self.client("10.1.2.3", forwarded_for), "10.1.2.3")

    def test_a_hop_that_is_not_an_address_is_never_taken_for_a_trusted_proxy(self):
        # Were it skipped as trusted, the hop left of it (the client's own
        # writing) would be believed; it counts as the client, as it is.
        for garbage in ["unknown", "not-an-ip", "10.0.0.0/8", "999.1.1.1", "[2001:db8:1::7]"]:
            with self.subTest(garbage=garbage):
                self.assertEqual(
                    self.client("10.1.2.3", f"198.51.100.1, {garbage}, 10.0.0.5"), garbage
                )
        # Left of the client's hop, garbage is as ignored as any chosen address.
        self.assertEqual(self.client("10.1.2.3", "unknown, 198.51.100.9"), "198.51.100.9")

    def test_a_peer_that_is_not_an_address_is_not_trusted(self):
        for peer in ["", "unknown", "10.0.0.0/8"]:
            with self.subTest(peer=peer):
                self.assertEqual(self.client(peer, "198.51.100.1"), peer)
        with mock.patch.object(config, "TRUSTED_PROXIES", PROXIES):  # no REMOTE_ADDR at all
            self.assertEqual(limits.client_address({"HTTP_X_FORWARDED_FOR": "198.51.100.1"}), "")


class WatchedSlots(threading.BoundedSemaphore):
    """A budget's slots that tell when a request starts waiting for one: one
    release of `waiting` per blocking acquire, before it blocks."""

    def __init__(self, size):
        super().__init__(size)
        self.waiting = threading.Semaphore(0)

    def acquire(self, blocking=True, timeout=None):
        if blocking:
            self.waiting.release()
        return super().acquire(blocking, timeout)


class Attempt:
    """One request for a slot of budget, in a thread of its own: on getting
    one it holds it until release(), so that the test decides when it ends."""

    def __init__(self, budget):
        self.entered = threading.Event()  # got a slot
        self.error = None  # the ApiError it got instead
        self.elapsed = None  # seconds from asking to getting the slot or the error
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(budget,), daemon=True)
        self._thread.start()

    def _run(self, budget):
        start = time.monotonic()
        try:
            with budget.held():
                self.elapsed = time.monotonic() - start
                self.entered.set()
                self._release.wait(60)  # bounded, in case a test forgets it
        except ApiError as error:
            self.elapsed = time.monotonic() - start
            self.error = error

    def release(self):
        self._release.set()

    def done(self, timeout):
        """True once the thread has ended (with a slot released, or an error)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class HashBudgetTest(unittest.TestCase):
    def setUp(self):
        self.attempts = []
        self.addCleanup(self.end_attempts)

    def end_attempts(self):
        for attempt in self.attempts:
            attempt.release()
        for attempt in self.attempts:
            attempt.done(BOUND)

    def budget(self, size, waiters):
        budget = limits._HashBudget(size, waiters)
        budget._slots = WatchedSlots(size)
        return budget

    def attempt(self, budget):
        attempt = Attempt(budget)
        self.attempts.append(attempt)
        return attempt

    def hold(self, budget):
        """A slot of budget taken by another thread, until the test ends."""
        holder = self.attempt(budget)
        self.assertTrue(holder.entered.wait(BOUND), "a free slot was not given")
        return holder

    def wait_for_waiters(self, budget, count):
        """Until `count` requests have started waiting for a slot of budget."""
        for _ in range(count):
            self.assertTrue(
                budget._slots.waiting.acquire(timeout=BOUND), "no request waits for a slot"
            )

    def refusal(self, attempt, within):
        """attempt's ApiError, which must come within `within` seconds."""
        if not attempt.done(within):
            self.fail(f"no answer after {within} s: it waits for a slot instead of a 503")
        self.assertIsNotNone(attempt.error, "given a slot that another thread holds")
        return attempt.error

    def assertBusy(self, error):
        """The 503 of CONTRACT.md: the error body, and Retry-After."""
        self.assertEqual(error.status_code, 503)
        retry_after = error.get_header("Retry-After") or ""
        self.assertTrue(
            retry_after.isdigit() and int(retry_after) >= 1, f"Retry-After: {retry_after!r}"
        )
        body = json.loads(error.body)
        self.assertIs(body["success"], False)
        self.assertTrue(body["message"])

    def test_a_full_budget_answers_503_with_retry_after_after_about_hash_wait(self):
        budget = self.budget(1, 1)
        self.hold(budget)
        # With the real HASH_WAIT: it waits briefly, then is refused, never later.
        error = self.refusal(self.attempt(budget), limits.HASH_WAIT + BOUND)
        self.assertBusy(error)
        self.assertGreaterEqual(self.attempts[-1].elapsed, limits.HASH_WAIT * 0.9)
        self.assertLess(self.attempts[-1].elapsed, limits.HASH_WAIT + 2)
        self.assertEqual(budget.refused, 1)
        self.assertEqual(budget.in_flight, 1)  # the holder's

    def test_a_request_beyond_the_allowed_waiters_is_refused_at_once(self):
        budget = self.budget(2, 2)
        self.hold(budget)
        self.hold(budget)
        with mock.patch.object(limits, "HASH_WAIT", 60):  # the waiters wait all along
            waiters = [self.attempt(budget), self.attempt(budget)]
            self.wait_for_waiters(budget, 2)
            error = self.refusal(self.attempt(budget), BOUND)
        self.assertBusy(error)
        self.assertLess(self.attempts[-1].elapsed, 1, "it waited for a slot")
        self.assertEqual(budget.refused, 1)
        for waiter in waiters:  # still waiting, neither refused nor served
            self.assertIsNone(waiter.error)
            self.assertFalse(waiter.entered.is_set())

    def test_a_slot_released_while_a_request_waits_is_taken_not_refused(self):
        budget = self.budget(1, 1)
        holder = self.hold(budget)
        with mock.patch.object(limits, "HASH_WAIT", 60):
            waiter = self.attempt(budget)
            self.wait_for_waiters(budget, 1)
            holder.release()
            self.assertTrue(waiter.entered.wait(BOUND), f"not given the slot: {waiter.error}")
        self.assertIsNone(waiter.error)
        self.assertEqual(budget.refused, 0)
        self.assertEqual(budget.in_flight, 1)

    def test_each_refusal_is_counted(self):
        budget = self.budget(1, 1)
        self.hold(budget)
        with mock.patch.object(limits, "HASH_WAIT", 0.01):
            for refused in (1, 2, 3):
                self.assertBusy(self.refusal(self.attempt(budget), BOUND))
                self.assertEqual(budget.refused, refused)
        self.assertEqual(budget.in_flight, 1)

    def test_in_flight_returns_to_zero_and_slots_come_back_after_use(self):
        budget = self.budget(2, 1)
        first, second = self.hold(budget), self.hold(budget)
        self.assertEqual(budget.in_flight, 2)
        for attempt in (first, second):
            attempt.release()
            self.assertTrue(attempt.done(BOUND))
        self.assertEqual(budget.in_flight, 0)
        # Both slots are free again: taken at once, without waiting.
        self.hold(budget)
        self.hold(budget)
        self.assertTrue(all(attempt.elapsed < 1 for attempt in self.attempts[2:]))
        self.assertEqual(budget.refused, 0)

    def test_in_flight_returns_to_zero_and_the_slot_comes_back_after_an_exception(self):
        budget = self.budget(1, 1)
        raised = []

        def fail_inside():
            try:
                with budget.held():
                    raise RuntimeError("the hash failed")
            except RuntimeError as error:
                raised.append(error)

        thread = threading.Thread(target=fail_inside, daemon=True)
        thread.start()
        thread.join(BOUND)
        self.assertFalse(thread.is_alive(), "the budget did not give its free slot")
        self.assertEqual(len(raised), 1, "the exception did not come out of the block")
        self.assertEqual(budget.in_flight, 0)
        # The slot is free again: taken at once, not after HASH_WAIT and a 503.
        holder = self.hold(budget)
        self.assertLess(holder.elapsed, 1)
        self.assertEqual(budget.refused, 0)


class ThrottleSlotsTest(unittest.TestCase):
    """throttle.py's rules in-process: an event takes the lowest free slot of
    those within the window; Retry-After is when the oldest leaves it."""

    def test_the_lowest_slot_without_an_event_in_the_window_is_taken(self):
        self.assertEqual(throttle.free_slot({}, 3), 0)
        self.assertEqual(throttle.free_slot({0: (1.0, False), 2: (2.0, False)}, 3), 1)
        self.assertEqual(throttle.free_slot({1: (1.0, False)}, 3), 0)
        # From a start of its own, going round: requests at once seldom pick the same.
        self.assertEqual(throttle.free_slot({1: (1.0, False)}, 3, start=1), 2)
        self.assertEqual(throttle.free_slot({2: (1.0, False)}, 3, start=2), 0)

    def test_no_slot_when_the_window_holds_limit_events(self):
        events = {slot: (1000.0 + slot, False) for slot in range(3)}
        self.assertIsNone(throttle.free_slot(events, 3))
        # A lower limit than the rows stored (a restart with a new setting): none either.
        self.assertIsNone(throttle.free_slot(events, 2))

    def test_retry_after_is_when_the_oldest_event_leaves_the_window_at_least_1_s(self):
        events = {0: (1000.0, False), 1: (1030.0, True)}
        self.assertEqual(throttle.seconds_until_one_leaves(events, 1059.5, 60), 1)
        self.assertEqual(throttle.seconds_until_one_leaves(events, 1030.0, 60), 30)
        self.assertEqual(throttle.seconds_until_one_leaves(events, 1000.2, 60), 60)
        self.assertEqual(throttle.seconds_until_one_leaves(events, 1060.0, 60), 1)


if __name__ == "__main__":
    unittest.main()
