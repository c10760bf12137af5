"""CONTRACT.md, Login: tokens for the right password, the same 401 for every
wrong pair (in body and in time), and the throttle of 10 failures per
username in 5 minutes, over HTTP against the real server.

Many clients at once against the throttle are here too; the throttle shared
by several servers is test_faults.py's, the rates per client address
test_under_pressure.py's.
"""

import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from testing import (
    BAD_LOGIN,
    LONE_SURROGATE,
    ApiTestCase,
    past_busy,
    unique_name,
    wait_until,
)


class LoginTest(ApiTestCase):
    def fail_logins(self, username, times):
        for _ in range(times):
            self.assertEqual(self.assertJson(self.log_in(username, "wrong"), 401), BAD_LOGIN)

    def test_login_returns_a_token_and_the_user_path(self):
        user, _ = self.sign_up()
        answer = self.log_in(user["username"])
        body = self.assertJson(answer, 200)
        self.assertEqual(set(body), {"success", "token", "user"})
        self.assertIs(body["success"], True)
        self.assertEqual(body["user"], f"/users/{user['id']}")
        self.assertEqual(
            self.assertJson(self.request("GET", "/users/me", token=body["token"]), 200), user
        )

    def test_missing_empty_or_non_string_fields_are_400_bad_username_or_password(self):
        name = self.sign_up()[0]["username"]
        bodies = [
            {},
            {"username": name},
            {"password": "secret-pw"},
            {"username": "", "password": "secret-pw"},
            {"username": name, "password": ""},
            {"username": None, "password": "secret-pw"},
            {"username": name, "password": None},
            {"username": 5, "password": "secret-pw"},
            {"username": name, "password": 5},
            {"username": [name], "password": "secret-pw"},
            {"username": name, "password": {"value": "secret-pw"}},
            {"username": name, "password": True},
        ]
        for body in bodies:
            with self.subTest(body=body):
                self.assertEqual(
                    self.assertJson(self.request("POST", "/login", body), 400), BAD_LOGIN
                )

    def test_unknown_username_and_wrong_password_get_the_same_401(self):
        user, _ = self.sign_up()
        wrong_password = self.log_in(user["username"], "wrong")
        for what, answer in [
            ("unknown username", self.log_in(unique_name("nobody"), "wrong")),
            ("impossible username", self.log_in("no such/user!", "wrong")),
        ]:
            with self.subTest(what):
                self.assertEqual(self.assertJson(answer, 401), BAD_LOGIN)
                self.assertEqual(answer.body, wrong_password.body)
                self.assertEqual(
                    answer.header("WWW-Authenticate"), wrong_password.header("WWW-Authenticate")
                )
        self.assertEqual(self.assertJson(wrong_password, 401), BAD_LOGIN)

    def test_lone_surrogates_in_login_are_refused_never_500(self):
        name = self.sign_up()[0]["username"]
        for body in (
            {"username": "a" + LONE_SURROGATE, "password": "pw"},
            {"username": name, "password": "a" + LONE_SURROGATE},
        ):
            with self.subTest(body=body):
                answer = self.request("POST", "/login", body)
                self.assertIn(answer.status, (400, 401), answer.body)
                self.assertEqual(answer.json, BAD_LOGIN)

    def test_ten_failed_logins_throttle_that_username_even_for_the_right_password(self):
        user, token = self.sign_up()
        bystander, _ = self.sign_up()
        self.fail_logins(user["username"], 10)
        for password in ("secret-pw", "wrong"):
            with self.subTest(password=password):
                answer = self.log_in(user["username"], password)
                self.assertError(answer, 429)
                self.assertNotIn("token", answer.json)
                retry_after = answer.header("Retry-After") or ""
                self.assertRegex(retry_after, r"^[0-9]+$")
                self.assertTrue(0 < int(retry_after) <= 300, retry_after)
                self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
        # Other usernames are not affected, nor are the tokens the user holds.
        self.assertJson(self.log_in(bystander["username"]), 200)
        self.assertEqual(self.log_in(bystander["username"], "wrong").status, 401)
        self.assertJson(self.request("GET", "/users/me", token=token), 200)

    def test_nine_failed_logins_do_not_throttle(self):
        user, _ = self.sign_up()
        self.fail_logins(user["username"], 9)
        self.assertJson(self.log_in(user["username"]), 200)

    def test_unknown_usernames_are_throttled_alike(self):
        name = unique_name("nobody")
        self.fail_logins(name, 10)
        self.assertError(self.log_in(name, "wrong"), 429)

    def test_concurrent_logins_get_ten_guesses_not_ten_per_thread(self):
        user, _ = self.sign_up()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda _: past_busy(lambda: self.log_in(user["username"], "wrong")).status,
                    range(24),
                    timeout=120,
                )
            )
        self.assertEqual(sorted(statuses), [401] * 10 + [429] * 14)
        self.assertError(self.log_in(user["username"]), 429)

    def test_right_passwords_sent_at_once_one_short_of_the_limit_all_succeed(self):
        # Nine failures, then logins in flight fill the tenth place: the others
        # wait for them to settle, or answer 503 to retry, never 429; no success counts.
        user, _ = self.sign_up()
        self.fail_logins(user["username"], 9)
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _: past_busy(lambda: self.log_in(user["username"])),
                    range(16),
                    timeout=120,
                )
            )
        for answer in answers:
            self.assertJson(answer, 200)
        self.assertJson(self.log_in(user["username"]), 200)
        self.fail_logins(user["username"], 1)  # the tenth failure, so nine before it
        self.assertError(self.log_in(user["username"]), 429)


class LoginWindowTest(ApiTestCase):
    # For tests only (config.py): a window of 3 s instead of 300, to see it pass.
    window = 3
    service_env = {**ApiTestCase.service_env, "LOGIN_FAILURE_WINDOW": str(window)}

    def test_the_throttle_lifts_once_the_window_has_passed(self):
        user, _ = self.sign_up()
        for _ in range(10):
            self.assertEqual(
                self.assertJson(self.log_in(user["username"], "wrong"), 401), BAD_LOGIN
            )
        throttled = self.log_in(user["username"])
        self.assertError(throttled, 429)
        self.assertTrue(0 < int(throttled.header("Retry-After")) <= self.window, throttled.headers)

        def logged_in():
            answer = self.log_in(user["username"])
            if answer.status == 429:
                return None  # still inside the window
            return self.assertJson(answer, 200)

        body = wait_until(logged_in, timeout=self.window + 20, what="the throttle to lift")
        self.assertJson(self.request("GET", "/users/me", token=body["token"]), 200)
        # The old failures no longer count: a wrong password is a plain 401 again.
        self.assertEqual(self.assertJson(self.log_in(user["username"], "wrong"), 401), BAD_LOGIN)


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle] + ordered[~middle]) / 2


class RealPasswordCostTest(ApiTestCase):
    """With the production cost of a hash (SCRYPT_N as in production),
    where the hash is most of what a login costs."""

    service_env = {**ApiTestCase.service_env, "SCRYPT_N": str(2**14)}

    def test_unknown_usernames_take_as_long_as_wrong_passwords(self):
        user, _ = self.sign_up()

        def seconds(username):
            started = time.monotonic()
            answer = past_busy(lambda: self.log_in(username, "wrong"))
            took = time.monotonic() - started
            self.assertEqual(self.assertJson(answer, 401), BAD_LOGIN)
            return took

        times = {"wrong password": [], "unknown username": [], "impossible username": []}
        for round_ in range(7):  # interleaved, so that a busy moment hits all alike
            times["wrong password"].append(seconds(user["username"]))  # 7 of 10 failures
            times["unknown username"].append(seconds(unique_name("nobody")))
            times["impossible username"].append(seconds(f"no such/user {round_}!"))
        medians = {what: median(values) for what, values in times.items()}
        reference = medians["wrong password"]
        for what in ("unknown username", "impossible username"):
            with self.subTest(what):
                # Generous: a login that skipped the hash would take a fraction of one.
                self.assertTrue(0.5 * reference < medians[what] < 2 * reference, medians)


if __name__ == "__main__":
    unittest.main()
