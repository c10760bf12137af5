"""CONTRACT.md, Stats: reading and writing a user's four counts, over HTTP
against the real server, one writer and many at once; and their rule
(validation.STATS_FIELDS) in-process.
"""

import json
import unittest
from concurrent.futures import ThreadPoolExecutor

import validation
from responses import ApiError
from testing import (
    NO_SUCH_ID,
    STAT_NAMES,
    ZERO_STATS,
    ApiTestCase,
    names_word,
)

# Each a value that is not a non-negative integer below 2**63.
INVALID_STAT_VALUES = [True, False, 1.5, 1.0, "5", "", None, -1, 2**63, 10**30, [], {}, [1]]


class StatsTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.user, self.token = self.sign_up()
        self.path = f"/users/{self.user['id']}/stats"

    def test_new_user_starts_with_all_stats_at_zero(self):
        self.assertEqual(self.stats(self.user["id"], self.token), ZERO_STATS)

    def test_any_valid_token_may_read_stats(self):
        _, reader_token = self.sign_up()
        self.set_stats(self.user, self.token, total_time=5000)
        self.assertEqual(
            self.stats(self.user["id"], reader_token), {**ZERO_STATS, "total_time": 5000}
        )

    def test_reading_stats_without_a_valid_token_is_401(self):
        for token in (None, "not-a-token"):
            with self.subTest(token=token):
                self.assertUnauthorized(self.request("GET", self.path, token=token))

    def test_stats_of_a_missing_user_are_404(self):
        for method in ("GET", "PUT", "PATCH"):
            with self.subTest(method=method):
                body = {"loss_count": 1} if method != "GET" else None
                self.assertError(
                    self.request(method, f"/users/{NO_SUCH_ID}/stats", body, token=self.token), 404
                )

    def test_put_and_patch_change_only_the_fields_sent(self):
        expected = dict(ZERO_STATS)
        for verb, body in [
            ("PATCH", {"loss_count": 4}),
            ("PUT", {"session_count": 12, "total_time": 5000}),
            ("PATCH", {"victory_count": 8}),
            ("PUT", {}),
            ("PUT", {"total_time": 2**63 - 1, "loss_count": 0}),
        ]:
            with self.subTest(verb=verb, body=body):
                expected.update(body)
                answer = self.request(verb, self.path, body, token=self.token)
                self.assertEqual(self.assertJson(answer, 200), expected)
                self.assertEqual(self.stats(self.user["id"], self.token), expected)

    def test_invalid_values_are_400_naming_the_field_and_change_nothing(self):
        before = self.set_stats(self.user, self.token, loss_count=4, victory_count=8)
        for verb in ("PUT", "PATCH"):
            for name in STAT_NAMES:
                for value in INVALID_STAT_VALUES:
                    with self.subTest(verb=verb, field=name, value=value):
                        # A valid field beside it must not be applied either.
                        other = "session_count" if name != "session_count" else "total_time"
                        answer = self.request(
                            verb, self.path, {other: 99, name: value}, token=self.token
                        )
                        self.assertError(answer, 400, mentions=name)
        self.assertEqual(self.stats(self.user["id"], self.token), before)

    def test_float_spellings_of_integers_are_400(self):
        for raw in (b'{"loss_count": 1e2}', b'{"loss_count": 1.0}', b'{"loss_count": -0.0}'):
            with self.subTest(raw=raw):
                answer = self.request(
                    "PATCH",
                    self.path,
                    raw=raw,
                    token=self.token,
                    headers={"Content-Type": "application/json"},
                )
                self.assertError(answer, 400, mentions="loss_count")
        self.assertEqual(self.stats(self.user["id"], self.token), ZERO_STATS)

    def test_writing_another_users_stats_is_403_and_changes_nothing(self):
        _, intruder_token = self.sign_up()
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                self.assertError(
                    self.request(verb, self.path, {"victory_count": 999}, token=intruder_token), 403
                )
        self.assertEqual(self.stats(self.user["id"], self.token), ZERO_STATS)

    def test_writing_stats_without_a_valid_token_is_401_and_changes_nothing(self):
        for verb in ("PUT", "PATCH"):
            for token in (None, "not-a-token"):
                with self.subTest(verb=verb, token=token):
                    self.assertUnauthorized(
                        self.request(verb, self.path, {"loss_count": 1}, token=token)
                    )
        self.assertEqual(self.stats(self.user["id"], self.token), ZERO_STATS)


class StatsAtOnceTest(ApiTestCase):
    """Many writes at once on 8 Waitress threads: no 500 and no
    "database is locked" (ApiTestCase's tearDown reads the log)."""

    @staticmethod
    def in_parallel(function, items, timeout=120):
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(function, items, timeout=timeout))

    def test_eight_users_writing_their_stats_at_once_never_fail(self):
        users = self.in_parallel(lambda _: self.sign_up(), range(8))

        def play(pair):
            user, token = pair
            path = f"/users/{user['id']}/stats"
            statuses = []
            for round_ in range(1, 16):
                verb = "PUT" if round_ % 2 else "PATCH"
                statuses.append(
                    self.request(
                        verb, path, {"loss_count": round_, "total_time": round_ * 10}, token=token
                    ).status
                )
                statuses.append(self.request("GET", path, token=token).status)
            return statuses

        for statuses in self.in_parallel(play, users):
            self.assertEqual(set(statuses), {200})
        for user, token in users:
            self.assertEqual(
                self.stats(user["id"], token), {**ZERO_STATS, "loss_count": 15, "total_time": 150}
            )

    def test_eight_threads_writing_one_users_stats_at_once_never_fail(self):
        user, token = self.sign_up()
        path = f"/users/{user['id']}/stats"
        answers = self.in_parallel(
            lambda value: self.request("PATCH", path, {"victory_count": value}, token=token),
            range(64),
        )
        self.assertEqual({answer.status for answer in answers}, {200})
        self.assertIn(self.stats(user["id"], token)["victory_count"], range(64))


class StatRulesTest(unittest.TestCase):
    """validation.STATS_FIELDS in-process: each stat a non-negative integer
    below 2**63, written as a JSON integer."""

    def test_integers_from_0_to_2_63_minus_1_are_accepted_as_they_are(self):
        for name in STAT_NAMES:
            for value in (0, 1, 2**63 - 1):
                with self.subTest(name=name, value=value):
                    self.assertEqual(
                        validation.checked_fields({name: value}, validation.STATS_FIELDS),
                        {name: value},
                    )

    def test_anything_else_is_a_400_naming_the_field(self):
        for name in STAT_NAMES:
            for value in INVALID_STAT_VALUES:
                with self.subTest(name=name, value=value):
                    with self.assertRaises(ApiError) as caught:
                        validation.checked_fields({name: value}, validation.STATS_FIELDS)
                    self.assertEqual(caught.exception.status_code, 400)
                    message = json.loads(caught.exception.body)["message"]
                    self.assertTrue(names_word(message, name), message)


if __name__ == "__main__":
    unittest.main()
