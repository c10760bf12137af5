"""CONTRACT.md, Leaderboard: the users ranked by one of their stats, over HTTP
against the real server, on a board of hand-made ties; and, on SQLite, that
each order is read from its index (the query plan), as it must be to stay
fast with many users.
"""

import re
import unittest
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import text

import leaderboard
from testing import TEST_DATABASE_URL, ApiTestCase

# victory_count, loss_count, session_count, total_time of each player, in
# the order they sign up (so by id): ties in every order.
BOARD = {
    "ace": (8, 2, 10, 100),
    "bo": (8, 0, 3, 5000),
    "cy": (5, 5, 12, 100),
    "di": (8, 8, 1, 0),
    "ed": (0, 0, 0, 0),  # never played: not ranked by win rate
    "flo": (2, 2, 12, 7),
}
FIELDS = ("victory_count", "loss_count", "session_count", "total_time")


def expected_board(players, by):
    """[(rank, id, value)] as CONTRACT.md says: best value first, then lowest
    id; a rank is 1 + the number of players with a better value."""
    values = {}
    for user_id, stats in players.items():
        if by == "win_rate":
            victories, losses = stats["victory_count"], stats["loss_count"]
            if victories + losses:
                values[user_id] = victories / (victories + losses)
        else:
            values[user_id] = stats[by]
    ordered = sorted(values, key=lambda user_id: (-values[user_id], user_id))
    return [
        (1 + sum(other > values[user_id] for other in values.values()), user_id, values[user_id])
        for user_id in ordered
    ]


class LeaderboardTest(ApiTestCase):
    """The only test class of this module: its server holds this board alone."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.players, cls.names = {}, {}
        for name, values in BOARD.items():
            answer = cls.service.request("POST", "/users", {"username": name, "password": "pw"})
            assert answer.status == 201, answer.body
            user, token = answer.json["user"], answer.json["token"]
            stats = dict(zip(FIELDS, values, strict=True))
            answer = cls.service.request("PATCH", f"/users/{user['id']}/stats", stats, token=token)
            assert answer.status == 200, answer.body
            cls.players[user["id"]], cls.names[user["id"]] = stats, user["username"]
            cls.token = token

    def board(self, query="", token=None):
        return self.request("GET", f"/leaderboard{query}", token=token or self.token)

    def test_every_order_ranks_best_first_with_shared_ranks_that_skip(self):
        for by in leaderboard.ORDERS:
            with self.subTest(by=by):
                answer = self.board(f"?by={by}&limit=100")
                entries = self.assertJson(answer, 200)
                self.assertEqual(
                    [(e["rank"], e["id"], e["value"]) for e in entries],
                    expected_board(self.players, by),
                )
                self.assertEqual(answer.header("X-Total-Count"), str(len(entries)))
                self.assertIsNone(answer.header("Link"))

    def test_ties_share_a_rank_and_the_next_one_skips(self):
        ranks = [e["rank"] for e in self.assertJson(self.board("?by=victory_count"), 200)]
        self.assertEqual(ranks, [1, 1, 1, 4, 5, 6])
        ranks = [e["rank"] for e in self.assertJson(self.board("?by=win_rate"), 200)]
        self.assertEqual(ranks, [1, 2, 3, 3, 3])

    def test_an_entry_is_rank_id_username_self_and_value(self):
        first = self.assertJson(self.board("?by=total_time"), 200)[0]
        bo = next(i for i, stats in self.players.items() if stats["total_time"] == 5000)
        self.assertEqual(
            first,
            {
                "rank": 1,
                "id": bo,
                "username": self.names[bo],
                "self": f"/users/{bo}",
                "value": 5000,
            },
        )
        self.assertEqual(list(first), ["rank", "id", "username", "self", "value"])

    def test_victory_count_is_the_default_order_and_ten_the_default_limit(self):
        self.assertEqual(self.board().body, self.board("?by=victory_count&limit=10").body)

    def test_pages_follow_their_links_and_keep_every_rank(self):
        for by in leaderboard.ORDERS:
            with self.subTest(by=by):
                whole = self.assertJson(self.board(f"?by={by}&limit=100"), 200)
                walked, path, pages = [], f"/leaderboard?by={by}&limit=2", 0
                while path:
                    answer = self.request("GET", path, token=self.token)
                    walked += self.assertJson(answer, 200)
                    self.assertEqual(answer.header("X-Total-Count"), str(len(whole)))
                    path = next_link(answer.header("Link"))
                    pages += 1
                self.assertEqual(walked, whole)
                self.assertEqual(pages, (len(whole) + 1) // 2)

    def test_a_page_that_starts_inside_a_tie_keeps_its_rank(self):
        # Three users share victory rank 1; a page from the second and third of
        # them on still ranks them 1, and the next value 4.
        entries = self.assertJson(self.board("?by=victory_count&offset=1&limit=3"), 200)
        self.assertEqual([e["rank"] for e in entries], [1, 1, 4])

    def test_a_page_past_the_end_is_empty(self):
        answer = self.board("?offset=1000")
        self.assertEqual(self.assertJson(answer, 200), [])
        self.assertEqual(answer.header("X-Total-Count"), str(len(BOARD)))

    def test_an_unknown_order_is_400_naming_the_allowed_ones(self):
        for by in ("wins", "", "VICTORY_COUNT", "id", "win_rate%20"):
            with self.subTest(by=by):
                answer = self.board(f"?by={by}")
                self.assertError(answer, 400, "by")
                for allowed in leaderboard.ORDERS:
                    self.assertIn(allowed, answer.json["message"])

    def test_bad_limit_or_offset_is_400_naming_it(self):
        for name, value in [("limit", "0"), ("limit", "101"), ("limit", "x"), ("offset", "-1")]:
            with self.subTest(name=name, value=value):
                self.assertError(self.board(f"?{name}={value}"), 400, name)
        self.assertJson(self.board("?limit=100"), 200)

    def test_the_leaderboard_needs_a_valid_token_and_is_private(self):
        for token in (None, "not-a-token"):
            with self.subTest(token=token):
                answer = self.request("GET", "/leaderboard", token=token)
                self.assertUnauthorized(answer)
        answer = self.board()
        self.assertEqual(answer.header("Cache-Control"), "private, no-cache")

    @unittest.skipIf(TEST_DATABASE_URL, "PostgreSQL plans a table of six rows by its own costs")
    def test_every_order_reads_its_own_index_on_sqlite(self):
        for by in leaderboard.ORDERS:
            _, better, page = leaderboard.STATEMENTS[by]
            for statement, step in ((page, "SCAN"), (better, "SEARCH")):
                with self.subTest(by=by, step=step), self.service.database() as db:
                    plan = " | ".join(
                        row[-1]
                        for row in db.execute(
                            text(f"EXPLAIN QUERY PLAN {statement.sql}"),
                            {**statement.constants, "limit": 10, "offset": 0, "value": 1},
                        )
                    )
                    self.assertRegex(plan, rf"{step} stats USING (COVERING )?INDEX stats_by_{by}\b")
                    self.assertNotIn("TEMP B-TREE", plan)


def next_link(header):
    """The path of a Link: <...>; rel="next" header, or None."""
    if header is None:
        return None
    found = re.fullmatch(r'<([^>]+)>; rel="next"', header)
    assert found, header
    query = parse_qs(urlsplit(found.group(1)).query)
    assert set(query) == {"by", "limit", "offset"}, header
    return found.group(1)
