"""Under pressure (CONTRACT.md), the rules themselves, called in-process.

Whose address a rate counts (limits.client_address with TRUSTED_PROXIES),
and the hashing budget (limits._HashBudget): a request that finds it full
waits about HASH_WAIT, only a few wait at once, and the others get 503 with
Retry-After at once. test_pressure.py sees the same through a live server;
these tests pin each rule down, so that breaking one fails a test.

Every wait here is bounded: a budget that never refuses fails its test within
seconds, instead of hanging the suite.
"""

import ipaddress
import json
import threading
import time
import unittest
from unittest import mock

import config
import limits
from responses import ApiError

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


if __name__ == "__main__":
    unittest.main()
