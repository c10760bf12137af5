"""The HTTP contract, tested over HTTP against the real server.

Each test class starts `server.py` as a process on a free port, with a real
SQLite file in a temporary folder, and talks to it with http.client.
"""

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from itertools import product
from urllib.parse import quote

import jwt
from sqlalchemy import text

from testing import (
    BAD_LOGIN,
    MAX_BODY,
    NO_SUCH_ID,
    PAGES,
    STAT_NAMES,
    TEST_DATABASE_URL,
    ZERO_STATS,
    ApiTestCase,
    BoundedTestCase,
    LiveService,
    ServiceClient,
    cors_headers,
    free_port,
    header_words,
    method_set,
    past_busy,
    raw_exchange,
    unique_name,
    wait_until,
)

# Conventions

# Bodies that are not JSON at all, or not JSON the parser may take.
NOT_JSON_BODIES = {
    "plain text": b"not json",
    "empty": b"",
    "truncated": b'{"username": "a"',
    "trailing garbage": b"{} x",
    "single quotes": b"{'username': 'a'}",
    "NaN literal": b'{"loss_count": NaN}',
    "Infinity literal": b'{"loss_count": Infinity}',
    "-Infinity literal": b'{"loss_count": -Infinity}',
    "invalid UTF-8": b'{"username": "\xff\xfe"}',
    "deeply nested arrays": b"[" * 100000,
    "deeply nested arrays, closed": b"[" * 100000 + b"]" * 100000,
    "deeply nested objects": b'{"a": ' * 100000 + b"1" + b"}" * 100000,
}
# Valid JSON that is not an object.
NOT_OBJECT_BODIES = {
    "array": b"[]",
    "array of an object": b'[{"username": "a", "password": "b"}]',
    "string": b'"text"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
}
BAD_IDS = ("abc", "-1", "0", "99999999999999999999", "1.5", "9223372036854775808", "1e3", "0x10")


class ConventionsTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.owner, self.token = self.sign_up(gender="before")

    def body_routes(self):
        """Every route that reads a JSON body, with what it needs to get that far."""
        mine = f"/users/{self.owner['id']}"
        return [
            ("POST", "/users", None),
            ("POST", "/login", None),
            ("PUT", mine, self.token),
            ("PATCH", mine, self.token),
            ("PUT", mine + "/stats", self.token),
            ("PATCH", mine + "/stats", self.token),
        ]

    def assertOwnerUnchanged(self):
        self.assertEqual(self.fetch_user(self.owner["id"]), self.owner)
        self.assertEqual(self.stats(self.owner["id"], self.token), ZERO_STATS)

    def assertEveryBodyRouteRefuses(self, bodies):
        """Each raw body, sent as JSON to each route that reads one: 400, and nothing changed."""
        for (method, path, token), (what, raw) in product(self.body_routes(), bodies.items()):
            with self.subTest(method=method, path=path, body=what):
                answer = self.request(
                    method, path, raw=raw, token=token, headers={"Content-Type": "application/json"}
                )
                self.assertError(answer, 400)
        self.assertOwnerUnchanged()

    def test_body_that_is_not_valid_json_is_400(self):
        self.assertEveryBodyRouteRefuses(NOT_JSON_BODIES)

    def test_body_that_is_json_but_not_an_object_is_400(self):
        self.assertEveryBodyRouteRefuses(NOT_OBJECT_BODIES)

    def test_body_without_content_type_is_read_as_json(self):
        def send(method, path, body, token=None):
            return self.request(method, path, raw=json.dumps(body).encode(), token=token)

        name = unique_name()
        created = self.assertJson(send("POST", "/users", {"username": name, "password": "pw"}), 201)
        self.assertEqual(created["user"]["username"], name)
        self.assertJson(send("POST", "/login", {"username": name, "password": "pw"}), 200)
        mine = f"/users/{self.owner['id']}"
        self.assertEqual(
            self.assertJson(send("PATCH", mine, {"gender": "after"}, self.token), 200)["gender"],
            "after",
        )
        self.assertEqual(
            self.assertJson(send("PUT", mine + "/stats", {"loss_count": 3}, self.token), 200)[
                "loss_count"
            ],
            3,
        )

    def test_body_over_1_mib_is_413_json(self):
        too_big = b'{"gender": "' + b"a" * MAX_BODY + b'"}'
        for method, path, token in self.body_routes():
            with self.subTest(method=method, path=path):
                answer = self.request(
                    method,
                    path,
                    raw=too_big,
                    token=token,
                    headers={"Content-Type": "application/json"},
                )
                self.assertError(answer, 413)
        self.assertOwnerUnchanged()

    def test_chunked_body_over_1_mib_is_413_json(self):
        chunks = iter([b'{"gender": "'] + [b"a" * 65536] * 17 + [b'"}'])
        answer = self.request(
            "PATCH",
            f"/users/{self.owner['id']}",
            raw=chunks,
            token=self.token,
            headers={"Content-Type": "application/json"},
        )
        self.assertError(answer, 413)
        self.assertOwnerUnchanged()

    def test_body_of_exactly_1_mib_is_read(self):
        name = unique_name()
        start = json.dumps({"username": name, "password": "pw"}).encode()[:-1]
        raw = start + b" " * (MAX_BODY - len(start) - 1) + b"}"
        self.assertEqual(len(raw), MAX_BODY)
        answer = self.request(
            "POST", "/users", raw=raw, headers={"Content-Type": "application/json"}
        )
        self.assertEqual(self.assertJson(answer, 201)["user"]["username"], name)

    def test_ids_that_are_not_positive_integers_are_404_json(self):
        routes = [
            ("GET", "/users/{}"),
            ("PUT", "/users/{}"),
            ("PATCH", "/users/{}"),
            ("DELETE", "/users/{}"),
            ("GET", "/users/{}/stats"),
            ("PUT", "/users/{}/stats"),
            ("PATCH", "/users/{}/stats"),
            ("GET", "/users/{}/pdf"),
            ("POST", "/users/{}/pdf"),
        ]
        for bad_id, (method, template) in product(BAD_IDS, routes):
            with self.subTest(method=method, id=bad_id):
                body = {} if method in ("PUT", "PATCH") else None
                answer = self.request(method, template.format(bad_id), body, token=self.token)
                self.assertError(answer, 404)

    def test_well_formed_ids_of_no_user_are_404_json(self):
        for user_id in (NO_SUCH_ID, 2**63 - 1):
            with self.subTest(id=user_id):
                self.assertError(self.request("GET", f"/users/{user_id}"), 404)
                self.assertError(
                    self.request("GET", f"/users/{user_id}/stats", token=self.token), 404
                )
                for method in ("GET", "POST"):
                    self.assertError(
                        self.request(method, f"/users/{user_id}/pdf", token=self.token), 404
                    )

    def test_unknown_fields_are_400_naming_them(self):
        mine = f"/users/{self.owner['id']}"
        cases = [
            (
                "POST",
                "/users",
                {"username": unique_name(), "password": "pw", "admin": True, "role": "root"},
                None,
                ["admin", "role"],
            ),
            (
                "POST",
                "/login",
                {"username": self.owner["username"], "password": "secret-pw", "remember_me": True},
                None,
                ["remember_me"],
            ),
            ("PUT", mine, {"gender": "x", "is_admin": True}, self.token, ["is_admin"]),
            ("PATCH", mine, {"password_hash": "x"}, self.token, ["password_hash"]),
            ("PUT", mine + "/stats", {"wins": 1}, self.token, ["wins"]),
            ("PATCH", mine + "/stats", {"loss_count": 1, "user_id": 2}, self.token, ["user_id"]),
        ]
        for method, path, body, token, unknown in cases:
            with self.subTest(method=method, path=path):
                answer = self.request(method, path, body, token=token)
                self.assertError(answer, 400)
                for name in unknown:
                    self.assertIn(name, answer.json["message"])
        self.assertOwnerUnchanged()

    def test_read_only_fields_are_ignored(self):
        name = unique_name()
        created = self.assertJson(
            self.request(
                "POST",
                "/users",
                {
                    "username": name,
                    "password": "pw",
                    "id": NO_SUCH_ID,
                    "self": f"/users/{NO_SUCH_ID}",
                    "stats": "x",
                    "pdf": "y",
                },
            ),
            201,
        )["user"]
        self.assertNotEqual(created["id"], NO_SUCH_ID)
        self.assertEqual(created["self"], f"/users/{created['id']}")
        # A client may send back what it read, with a change.
        read = self.fetch_user(self.owner["id"])
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                sent = {**read, "gender": verb, "id": NO_SUCH_ID, "stats": "/elsewhere"}
                updated = self.assertJson(
                    self.request(verb, f"/users/{self.owner['id']}", sent, token=self.token), 200
                )
                self.assertEqual(updated, {**read, "gender": verb})

    def test_unknown_method_on_known_path_is_405_with_allow(self):
        mine = f"/users/{self.owner['id']}"
        cases = [
            ("DELETE", "/users", {"GET", "POST"}),
            ("PUT", "/users", {"GET", "POST"}),
            ("POST", mine, {"GET", "PUT", "PATCH", "DELETE"}),
            ("DELETE", "/users/me", {"GET"}),
            ("POST", mine + "/stats", {"GET", "PUT", "PATCH"}),
            ("DELETE", mine + "/stats", {"GET", "PUT", "PATCH"}),
            ("PUT", mine + "/pdf", {"GET", "POST"}),
            ("PATCH", mine + "/pdf", {"GET", "POST"}),
            ("DELETE", mine + "/pdf", {"GET", "POST"}),
            ("GET", "/login", {"POST"}),
            ("POST", "/healthz", {"GET"}),
            ("DELETE", "/openapi.json", {"GET"}),
            ("BREW", "/users", {"GET", "POST"}),
        ]
        for method, path, expected in cases:
            with self.subTest(method=method, path=path):
                answer = self.request(method, path, token=self.token)
                self.assertError(answer, 405)
                allow = method_set(answer.header("Allow"))
                self.assertLessEqual(expected, allow)
                self.assertNotIn(method, allow)
        self.assertOwnerUnchanged()

    def test_unknown_path_is_404_json(self):
        for method, path in [
            ("GET", "/console/nope.js"),
            ("GET", "/nope"),
            ("POST", "/nope"),
            ("GET", f"/users/{self.owner['id']}/nope"),
            ("GET", "/users/me/stats"),
            ("POST", "/login/extra"),
        ]:
            with self.subTest(method=method, path=path):
                self.assertError(self.request(method, path, token=self.token), 404)

    def test_malformed_http_gets_a_json_error(self):
        requests = {
            "garbage request line": b"GARBAGE\r\n\r\n",
            "request line with extra words": b"GET /users HTTP/1.1 extra\r\n\r\n",
            "control bytes": b"\x00\x01\x02\r\n\r\n",
            "header without colon": b"GET /users HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            "bad Content-Length": (
                b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
            ),
            "bad chunk size": (
                b"POST /users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
            ),
        }
        for what, data in requests.items():
            with self.subTest(what):
                status, headers, body = raw_exchange(self.service.port, data)
                self.assertEqual(status, 400, body)
                self.assertTrue(headers.get("content-type", "").startswith("application/json"))
                answer = json.loads(body)
                self.assertIs(answer["success"], False)
                self.assertIsInstance(answer["message"], str)

    def test_header_bytes_that_are_not_utf8_are_a_clean_401_not_500(self):
        for token in (b"\xc3\x28", b"\xe9t\xe9"):
            with self.subTest(token=token):
                status, headers, body = raw_exchange(
                    self.service.port,
                    b"GET /users/me HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n",
                )
                self.assertEqual(status, 401, body)
                self.assertEqual(headers.get("www-authenticate"), "Bearer")

    def test_body_over_1_mib_is_413_even_where_no_body_is_read(self):
        user, token = self.sign_up()
        answer = self.request(
            "POST", f"/users/{user['id']}/pdf", token=token, raw=b"x" * (MAX_BODY + 1)
        )
        self.assertError(answer, 413)

    def test_routes_without_token_are_open(self):
        other, _ = self.sign_up()
        for method, path, body, status in [
            ("GET", "/users", None, 200),
            ("GET", f"/users/{other['id']}", None, 200),
            ("POST", "/users", {"username": unique_name(), "password": "pw"}, 201),
            ("POST", "/login", {"username": other["username"], "password": "secret-pw"}, 200),
            ("GET", "/healthz", None, 200),
            ("GET", "/openapi.json", None, 200),
            ("OPTIONS", f"/users/{other['id']}/stats", None, 204),
        ]:
            with self.subTest(method=method, path=path):
                self.assertEqual(self.request(method, path, body).status, status)

    def test_routes_needing_a_token_are_401_without_one_and_change_nothing(self):
        mine = f"/users/{self.owner['id']}"
        for method, path, body in [
            ("GET", "/users/me", None),
            ("GET", mine + "/stats", None),
            ("PUT", mine, {"gender": "x"}),
            ("PATCH", mine, {"gender": "x"}),
            ("DELETE", mine, None),
            ("PUT", mine + "/stats", {"loss_count": 1}),
            ("PATCH", mine + "/stats", {"loss_count": 1}),
            ("GET", mine + "/pdf", None),
            ("POST", mine + "/pdf", None),
        ]:
            with self.subTest(method=method, path=path):
                self.assertUnauthorized(self.request(method, path, body))
        self.assertOwnerUnchanged()
        # Nothing was queued: the report was never requested.
        self.assertError(self.request("GET", mine + "/pdf", token=self.token), 404)


# Users


def email_of_length(length):
    """A plausible address of exactly `length` characters (labels <= 63, local part 64)."""
    local, labels, left = "a" * 64, [], length - 65 - len(".com")
    while left > 63:
        labels.append("b" * 62)
        left -= 63
    labels.append("c" * left)
    return f"{local}@{'.'.join(labels)}.com"


# Each a field and a value that the contract's rules refuse.
INVALID_USER_FIELDS = [
    ("username", ""),
    ("username", "a" * 33),
    ("username", "with space"),
    ("username", "sl/ash"),
    ("username", "ümlaut"),
    ("username", "nul\x00"),
    ("username", 5),
    ("username", None),
    ("username", ["a"]),
    ("password", ""),
    ("password", "p" * 257),
    ("password", 5),
    ("password", None),
    ("email", "not-an-email"),
    ("email", "a@"),
    ("email", "two@@example.com"),
    ("email", email_of_length(255)),
    ("email", 5),
    ("email", "a\x00@example.com"),
    ("gender", "g" * 33),
    ("gender", 5),
    ("gender", "a\x00b"),
    ("gender", ["male"]),
    ("profile_pic", "ftp://example.com/p.png"),
    ("profile_pic", "not a url"),
    ("profile_pic", "javascript:alert(1)"),
    ("profile_pic", "https://"),
    ("profile_pic", "https://example.com/" + "p" * 2029),
    ("profile_pic", 5),
]
LONE_SURROGATE = "\ud800"


class UsersTest(ApiTestCase):
    def test_sign_up_returns_user_token_and_location(self):
        name = unique_name()
        answer = self.request(
            "POST", "/users", {"username": name, "password": "pw", "email": "a@example.com"}
        )
        self.assertEqual(answer.status, 201)
        user = answer.json["user"]
        self.assertEqual(answer.header("Location"), f"/users/{user['id']}")
        self.assertEqual(answer.header("Cache-Control"), "no-store")
        self.assertEqual(
            user,
            {
                "id": user["id"],
                "username": name,
                "email": "a@example.com",
                "gender": None,
                "profile_pic": None,
                "self": f"/users/{user['id']}",
                "stats": f"/users/{user['id']}/stats",
                "pdf": f"/users/{user['id']}/pdf",
            },
        )
        me = self.request("GET", "/users/me", token=answer.json["token"])
        self.assertEqual(me.json, user)

    def test_sign_up_accepts_every_field_at_its_limit(self):
        name = unique_name("Az09_.-")
        fields = {
            "username": name + "x" * (32 - len(name)),
            "password": "p" * 256,
            "email": email_of_length(254),
            "gender": "é😀" + "g" * 30,
            "profile_pic": "https://example.com/" + "p" * 2028,
        }
        self.assertEqual(len(fields["profile_pic"]), 2048)
        self.assertEqual(len(fields["email"]), 254)
        answer = self.assertJson(self.request("POST", "/users", fields), 201)
        user = answer["user"]
        self.assertEqual(
            {name: user[name] for name in fields if name != "password"},
            {name: value for name, value in fields.items() if name != "password"},
        )
        self.assertJson(self.log_in(fields["username"], "p" * 256), 200)

    def test_sign_up_accepts_nulls_and_plain_http(self):
        user, _ = self.sign_up(email=None, gender=None, profile_pic="http://example.com/a.png")
        self.assertEqual(
            (user["email"], user["gender"], user["profile_pic"]),
            (None, None, "http://example.com/a.png"),
        )

    def test_sign_up_without_username_or_password_is_400_naming_it(self):
        for missing in ("username", "password"):
            with self.subTest(missing=missing):
                body = {"username": unique_name(), "password": "pw"}
                del body[missing]
                self.assertError(self.request("POST", "/users", body), 400, mentions=missing)

    def test_sign_up_with_invalid_field_is_400_naming_it_and_creates_nothing(self):
        for field, value in INVALID_USER_FIELDS:
            with self.subTest(field=field, value=value):
                body = {"username": unique_name(), "password": "pw", field: value}
                self.assertError(self.request("POST", "/users", body), 400, mentions=field)
                if field != "username":  # the name is still free
                    self.sign_up(username=body["username"])

    def test_lone_surrogates_are_400_naming_the_field_and_create_or_change_nothing(self):
        # A lone surrogate is no character: UTF-8 cannot hold it, nor can the
        # database. Every text field refuses it, the username by its rule besides.
        def with_surrogate(field):
            return LONE_SURROGATE + "@example.com" if field == "email" else "a" + LONE_SURROGATE

        for field in ("username", "password", "email", "gender", "profile_pic"):
            with self.subTest(sign_up=field):
                body = {"username": unique_name(), "password": "pw", field: with_surrogate(field)}
                self.assertError(self.request("POST", "/users", body), 400, mentions=field)
                if field != "username":  # nothing was created: the name is still free
                    self.sign_up(username=body["username"])
        user, token = self.sign_up(gender="before")
        for verb, field in product(("PUT", "PATCH"), ("username", "email", "gender")):
            with self.subTest(verb=verb, update=field):
                answer = self.request(
                    verb, f"/users/{user['id']}", {field: with_surrogate(field)}, token=token
                )
                self.assertError(answer, 400, mentions=field)
        answer = self.request(
            "PATCH",
            f"/users/{user['id']}",
            {"password": with_surrogate("password"), "current_password": "secret-pw"},
            token=token,
        )
        self.assertError(answer, 400, mentions="password")
        self.assertEqual(self.fetch_user(user["id"]), user)
        self.assertJson(self.request("GET", "/users/me", token=token), 200)

    def test_taken_username_is_409_and_changes_nothing(self):
        first, token = self.sign_up(email="first@example.com")
        answer = self.request(
            "POST",
            "/users",
            {"username": first["username"], "password": "other", "email": "b@example.com"},
        )
        self.assertError(answer, 409, mentions=first["username"])
        self.assertEqual(self.fetch_user(first["id"]), first)
        self.assertJson(self.log_in(first["username"]), 200)

    def test_password_is_never_returned(self):
        password = "very-secret-" + unique_name()
        signed_up = self.request(
            "POST", "/users", {"username": unique_name(), "password": password}
        )
        user, token = self.assertJson(signed_up, 201)["user"], signed_up.json["token"]
        self.assertNotIn(password.encode(), signed_up.body)
        for what, answer in [
            ("user", self.request("GET", f"/users/{user['id']}")),
            ("me", self.request("GET", "/users/me", token=token)),
            ("list", self.request("GET", "/users?limit=1000")),
            ("update", self.request("PATCH", f"/users/{user['id']}", {"gender": "x"}, token=token)),
            ("login", self.log_in(user["username"], password)),
        ]:
            with self.subTest(what):
                # Whole answers, each with the user in it: an error would prove nothing.
                body = self.assertJson(answer, 200)
                self.assertIn(str(user["id"]), json.dumps(body))
                self.assertNotIn(password.encode(), answer.body)
                self.assertNotIn(b"password", answer.body)
                self.assertNotIn(b"scrypt", answer.body)

    def test_get_user_returns_it(self):
        user, _ = self.sign_up(gender="female")
        self.assertEqual(self.fetch_user(user["id"]), user)

    def test_get_me_returns_the_tokens_user(self):
        user, token = self.sign_up()
        self.assertEqual(self.assertJson(self.request("GET", "/users/me", token=token), 200), user)
        self.assertUnauthorized(self.request("GET", "/users/me"))

    def test_list_is_ordered_by_id_and_counts_every_user(self):
        made = [self.sign_up()[0] for _ in range(3)]
        answer = self.request("GET", "/users?limit=1000")
        users = self.assertJson(answer, 200)
        ids = [user["id"] for user in users]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual(int(answer.header("X-Total-Count")), len(users))
        for user in made:
            self.assertIn(user, users)

    def test_link_header_only_while_more_users_follow(self):
        for _ in range(3):
            self.sign_up()
        everyone = self.request("GET", "/users?limit=1000")
        total = int(everyone.header("X-Total-Count"))
        self.assertIsNone(everyone.header("Link"))
        pages, path = [], "/users?limit=2"
        while path:
            answer = self.request("GET", path)
            pages.extend(self.assertJson(answer, 200))
            self.assertEqual(int(answer.header("X-Total-Count")), total)
            link = answer.header("Link")
            offset = len(pages)
            if offset < total:
                self.assertEqual(link, f'</users?limit=2&offset={offset}>; rel="next"')
                path = re.fullmatch(r"<([^>]*)>; rel=\"next\"", link).group(1)
            else:
                self.assertIsNone(link)
                path = None
        self.assertEqual(pages, everyone.json)
        for offset in (total, total + 5):
            with self.subTest(offset=offset):
                answer = self.request("GET", f"/users?offset={offset}")
                self.assertEqual(self.assertJson(answer, 200), [])
                self.assertEqual(int(answer.header("X-Total-Count")), total)
                self.assertIsNone(answer.header("Link"))

    def test_default_limit_is_100(self):
        total = int(self.request("GET", "/users").header("X-Total-Count"))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: self.sign_up(), range(max(0, 101 - total)), timeout=120))
        answer = self.request("GET", "/users")
        self.assertEqual(len(self.assertJson(answer, 200)), 100)
        self.assertEqual(answer.header("Link"), '</users?limit=100&offset=100>; rel="next"')
        self.assertEqual(
            len(self.assertJson(self.request("GET", "/users?limit=1000"), 200)),
            int(answer.header("X-Total-Count")),
        )

    def test_limit_and_offset_at_their_bounds_are_accepted(self):
        self.sign_up()
        for query in ("limit=1", "limit=1000", "offset=0", "limit=1&offset=0"):
            with self.subTest(query=query):
                self.assertJson(self.request("GET", "/users?" + query), 200)
        self.assertEqual(len(self.request("GET", "/users?limit=1").json), 1)

    def test_bad_limit_or_offset_is_400_naming_it(self):
        bad = {
            "limit": [
                "0",
                "1001",
                "-1",
                "abc",
                "1.5",
                "",
                "1e2",
                "0x10",
                "+5",
                quote(" 5"),
                quote("５"),
            ],
            "offset": ["-1", "abc", "1.5", "", "1e2", "+5", quote("５")],
        }
        for name, values in bad.items():
            for value in values:
                with self.subTest(name=name, value=value):
                    answer = self.request("GET", f"/users?{name}={value}")
                    self.assertError(answer, 400, mentions=name)

    def test_huge_offset_is_never_500(self):
        answer = self.request("GET", "/users?offset=99999999999999999999")
        self.assertIn(answer.status, (200, 400), answer.body)
        self.assertIsInstance(answer.json, (list, dict))

    def test_put_and_patch_change_only_the_fields_sent(self):
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                user, token = self.sign_up(email="me@example.com", gender="female")
                path = f"/users/{user['id']}"
                changed = self.assertJson(
                    self.request(verb, path, {"gender": "male"}, token=token), 200
                )
                self.assertEqual(changed, {**user, "gender": "male"})
                cleared = self.assertJson(
                    self.request(verb, path, {"email": None}, token=token), 200
                )
                self.assertEqual(cleared, {**user, "gender": "male", "email": None})
                self.assertEqual(
                    self.assertJson(self.request(verb, path, {}, token=token), 200), cleared
                )
                self.assertEqual(self.fetch_user(user["id"]), cleared)
                self.assertJson(self.log_in(user["username"]), 200)  # password untouched

    def test_rename_frees_the_old_name_and_keeps_the_password(self):
        user, token = self.sign_up()
        new_name = unique_name("renamed")
        path = f"/users/{user['id']}"
        same = self.assertJson(
            self.request("PATCH", path, {"username": user["username"]}, token=token), 200
        )
        self.assertEqual(same, user)
        renamed = self.assertJson(
            self.request("PUT", path, {"username": new_name}, token=token), 200
        )
        self.assertEqual(renamed["username"], new_name)
        self.assertJson(self.log_in(new_name), 200)
        self.assertEqual(self.log_in(user["username"]).status, 401)
        self.sign_up(username=user["username"])

    def test_update_to_a_taken_username_is_409_and_changes_nothing(self):
        other, _ = self.sign_up()
        user, token = self.sign_up(gender="before")
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                answer = self.request(
                    verb,
                    f"/users/{user['id']}",
                    {"username": other["username"], "gender": "after"},
                    token=token,
                )
                self.assertError(answer, 409, mentions=other["username"])
                self.assertEqual(self.fetch_user(user["id"]), user)

    def test_update_with_invalid_field_is_400_naming_it_and_changes_nothing(self):
        user, token = self.sign_up(gender="before")
        for verb in ("PUT", "PATCH"):
            for field, value in INVALID_USER_FIELDS:
                if field == "password":
                    continue  # see PasswordChangeTest
                with self.subTest(verb=verb, field=field, value=value):
                    answer = self.request(
                        verb, f"/users/{user['id']}", {"gender": "after", field: value}, token=token
                    )
                    self.assertError(answer, 400, mentions=field)
        self.assertEqual(self.fetch_user(user["id"]), user)

    def test_update_of_another_user_is_403_and_changes_nothing(self):
        victim, victim_token = self.sign_up(gender="before")
        _, intruder_token = self.sign_up()
        for verb, body in [
            ("PUT", {"gender": "hacked"}),
            ("PATCH", {"gender": "hacked"}),
            ("PATCH", {"username": unique_name("stolen")}),
            ("PATCH", {"password": "new", "current_password": "secret-pw"}),
        ]:
            with self.subTest(verb=verb, body=body):
                answer = self.request(verb, f"/users/{victim['id']}", body, token=intruder_token)
                self.assertError(answer, 403)
        self.assertEqual(self.fetch_user(victim["id"]), victim)
        self.assertJson(self.request("GET", "/users/me", token=victim_token), 200)
        self.assertJson(self.log_in(victim["username"]), 200)

    def test_update_without_a_valid_token_is_401(self):
        user, _ = self.sign_up(gender="before")
        for verb in ("PUT", "PATCH"):
            for token in (None, "not-a-token"):
                with self.subTest(verb=verb, token=token):
                    self.assertUnauthorized(
                        self.request(verb, f"/users/{user['id']}", {"gender": "x"}, token=token)
                    )
        self.assertEqual(self.fetch_user(user["id"]), user)

    def test_update_or_delete_of_a_missing_user_is_404(self):
        _, token = self.sign_up()
        for method in ("PUT", "PATCH", "DELETE"):
            with self.subTest(method=method):
                body = {"gender": "x"} if method != "DELETE" else None
                self.assertError(
                    self.request(method, f"/users/{NO_SUCH_ID}", body, token=token), 404
                )

    def test_delete_removes_the_user_their_stats_and_their_tokens(self):
        user, token = self.sign_up()
        login_token = self.token_of(user["username"])
        _, reader_token = self.sign_up()
        self.set_stats(user, token, loss_count=4)
        total = int(self.request("GET", "/users").header("X-Total-Count"))

        self.assertNoContent(self.request("DELETE", f"/users/{user['id']}", token=token))

        self.assertError(self.request("GET", f"/users/{user['id']}"), 404)
        self.assertError(self.request("GET", f"/users/{user['id']}/stats", token=reader_token), 404)
        for old in (token, login_token):
            self.assertUnauthorized(self.request("GET", "/users/me", token=old))
            self.assertUnauthorized(self.request("DELETE", f"/users/{user['id']}", token=old))
        self.assertEqual(self.log_in(user["username"]).status, 401)
        everyone = self.request("GET", "/users?limit=1000")
        self.assertEqual(int(everyone.header("X-Total-Count")), total - 1)
        self.assertNotIn(user["id"], [listed["id"] for listed in everyone.json])
        # The name is free again, and its new owner starts from scratch.
        newcomer, newcomer_token = self.sign_up(username=user["username"])
        self.assertEqual(self.stats(newcomer["id"], newcomer_token), ZERO_STATS)

    def test_delete_of_another_user_is_403_and_changes_nothing(self):
        victim, victim_token = self.sign_up()
        self.set_stats(victim, victim_token, victory_count=8)
        _, intruder_token = self.sign_up()
        self.assertError(
            self.request("DELETE", f"/users/{victim['id']}", token=intruder_token), 403
        )
        self.assertEqual(self.fetch_user(victim["id"]), victim)
        self.assertEqual(self.stats(victim["id"], victim_token)["victory_count"], 8)
        self.assertJson(self.request("GET", "/users/me", token=victim_token), 200)

    def test_delete_without_a_valid_token_is_401_and_changes_nothing(self):
        user, _ = self.sign_up()
        for token in (None, "not-a-token"):
            with self.subTest(token=token):
                self.assertUnauthorized(self.request("DELETE", f"/users/{user['id']}", token=token))
        self.assertEqual(self.fetch_user(user["id"]), user)


class PasswordChangeTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.user, self.token = self.sign_up(password="old-pw", gender="before")
        self.path = f"/users/{self.user['id']}"

    def change(self, body, token=None, verb="PATCH"):
        return self.request(verb, self.path, body, token=token or self.token)

    def assertNothingChanged(self):
        self.assertEqual(self.fetch_user(self.user["id"]), self.user)
        self.assertJson(self.request("GET", "/users/me", token=self.token), 200)
        self.assertJson(self.log_in(self.user["username"], "old-pw"), 200)

    def test_password_without_current_password_is_400_and_changes_nothing(self):
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                answer = self.change({"password": "new-pw", "gender": "after"}, verb=verb)
                self.assertError(answer, 400, mentions="current_password", also=["password"])
        self.assertNothingChanged()
        self.assertEqual(self.log_in(self.user["username"], "new-pw").status, 401)

    def test_wrong_current_password_is_403_and_changes_nothing(self):
        for verb in ("PUT", "PATCH"):
            with self.subTest(verb=verb):
                answer = self.change(
                    {"password": "new-pw", "current_password": "wrong", "gender": "after"},
                    verb=verb,
                )
                self.assertError(answer, 403, mentions="current_password", also=["password"])
        self.assertNothingChanged()

    def test_current_password_alone_is_400(self):
        for body in (
            {"current_password": "old-pw"},
            {"current_password": "old-pw", "gender": "after"},
        ):
            with self.subTest(body=body):
                self.assertError(
                    self.change(body), 400, mentions="current_password", also=["password"]
                )
        self.assertNothingChanged()

    def test_invalid_new_or_current_password_is_400_naming_it(self):
        for body, field in [
            ({"password": "", "current_password": "old-pw"}, "password"),
            ({"password": "p" * 257, "current_password": "old-pw"}, "password"),
            ({"password": 5, "current_password": "old-pw"}, "password"),
            ({"password": None, "current_password": "old-pw"}, "password"),
            ({"password": "new-pw", "current_password": 5}, "current_password"),
        ]:
            with self.subTest(body=body):
                self.assertError(self.change(body), 400, mentions=field)
        self.assertNothingChanged()

    def test_change_by_another_user_is_403_and_changes_nothing(self):
        _, intruder_token = self.sign_up()
        answer = self.change(
            {"password": "new-pw", "current_password": "old-pw"}, token=intruder_token
        )
        self.assertError(answer, 403)
        self.assertNothingChanged()

    def test_change_revokes_every_earlier_token_including_the_one_used(self):
        login_token = self.token_of(self.user["username"], "old-pw")
        answer = self.change(
            {"password": "new-pw", "current_password": "old-pw", "gender": "after"},
            token=login_token,
        )
        self.assertEqual(self.assertJson(answer, 200), {**self.user, "gender": "after"})
        for old in (self.token, login_token):
            self.assertUnauthorized(self.request("GET", "/users/me", token=old))
            self.assertUnauthorized(
                self.request("PATCH", self.path + "/stats", {"loss_count": 1}, token=old)
            )
        self.assertEqual(self.log_in(self.user["username"], "old-pw").status, 401)
        self.assertJson(self.log_in(self.user["username"], "new-pw"), 200)

    def test_token_from_a_login_right_after_the_change_works(self):
        # Repeated, so that change and login surely share a second at least once.
        password = "old-pw"
        for round_ in range(3):
            for verb in ("PUT", "PATCH"):
                with self.subTest(round=round_, verb=verb):
                    new = f"pw-{round_}-{verb}"
                    before = self.token_of(self.user["username"], password)
                    self.assertJson(
                        self.change(
                            {"password": new, "current_password": password}, token=before, verb=verb
                        ),
                        200,
                    )
                    fresh = self.token_of(self.user["username"], new)
                    self.assertGreater(token_version(fresh), token_version(before))
                    self.assertJson(self.request("GET", "/users/me", token=fresh), 200)
                    self.set_stats(self.user, fresh, session_count=round_)
                    self.assertUnauthorized(self.request("GET", "/users/me", token=before))
                    password = new


# Stats

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


# Login


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
    """With the production cost of a hash (SCRYPT_N as in production), where
    the hash is most of what a login costs."""

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

    def test_passwords_are_stored_only_as_salted_slow_scrypt_hashes(self):
        password = "stored-" + unique_name()
        first, _ = self.sign_up(password=password)
        second, _ = self.sign_up(password=password)
        with self.service.database() as db:
            stored = dict(
                db.execute(
                    text("SELECT id, password_hash FROM users WHERE id IN (:first, :second)"),
                    {"first": first["id"], "second": second["id"]},
                ).all()
            )
        self.assertEqual(set(stored), {first["id"], second["id"]})
        salts = set()
        for user_id, value in stored.items():
            with self.subTest(user=user_id):
                for form in (password, base64.b64encode(password.encode()).decode()):
                    self.assertNotIn(form, value)
                scheme, n, r, p, salt, digest = value.split("$")
                self.assertEqual(scheme, "scrypt")
                # OWASP's minimum for scrypt: N=2**14, r=8, p=5 (16 MiB per hash).
                self.assertEqual((int(n), int(r), int(p)), (2**14, 8, 5))
                salt, digest = base64.b64decode(salt), base64.b64decode(digest)
                self.assertGreaterEqual(len(salt), 16)
                # It is the hash of this very password, with this salt.
                computed = hashlib.scrypt(
                    password.encode(),
                    salt=salt,
                    n=int(n),
                    r=int(r),
                    p=int(p),
                    maxmem=256 * int(n) * int(r),
                    dklen=len(digest),
                )
                self.assertEqual(computed, digest)
                salts.add(salt)
        self.assertEqual(len(salts), 2, "two users with one password share a salt")
        self.assertNotEqual(stored[first["id"]], stored[second["id"]])


# Headers on every response


EXPOSED = {"location", "link", "x-total-count", "etag", "last-modified", "retry-after"}
# Beyond CONTRACT.md's six: what waiting for a report (Prefer: wait=N) needs.
EXPOSED_FOR_WAITING = {"preference-applied"}
ALLOWED_FOR_WAITING = {"prefer", "if-none-match", "if-modified-since"}


class HeadersTest(ApiTestCase):
    def test_every_response_is_nosniff(self):
        user, token = self.sign_up()
        doomed, doomed_token = self.sign_up()
        _, other_token = self.sign_up()
        mine = f"/users/{user['id']}"
        # No embedded worker here: the report stays pending (the PDF's own
        # answers, 200 and 304, are test_reports.py's; the 503 too).
        answers = {
            "202 report requested": self.request("POST", mine + "/pdf", token=token),
            "202 report pending": self.request("GET", mine + "/pdf", token=token),
            "200 list": self.request("GET", "/users"),
            "200 user": self.request("GET", mine),
            "200 stats": self.request("GET", mine + "/stats", token=token),
            "200 login": self.log_in(user["username"]),
            "201 sign-up": self.request(
                "POST", "/users", {"username": unique_name(), "password": "pw"}
            ),
            "204 options": self.request("OPTIONS", "/users"),
            "204 delete": self.request("DELETE", f"/users/{doomed['id']}", token=doomed_token),
            "400": self.request("PATCH", mine, raw=b"not json", token=token),
            "401": self.request("GET", "/users/me"),
            "403": self.request("PATCH", mine, {"gender": "x"}, token=other_token),
            "404": self.request("GET", "/nope"),
            "405": self.request("DELETE", "/users"),
            "409": self.request("POST", "/users", {"username": user["username"], "password": "pw"}),
            "413": self.request("POST", "/users", raw=b" " * (MAX_BODY + 1)),
            "healthz": self.request("GET", "/healthz"),
            "openapi": self.request("GET", "/openapi.json"),
            "metrics": self.request("GET", "/metrics"),
            **{f"page {path}": self.request("GET", path) for path in PAGES},
        }
        for what, answer in answers.items():
            with self.subTest(what):
                status = what.split()[0]
                if status.isdigit():
                    self.assertEqual(answer.status, int(status), answer.body)
                self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
        _, headers, _ = raw_exchange(self.service.port, b"GARBAGE\r\n\r\n")
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")

    def test_responses_carrying_a_token_are_no_store(self):
        name = unique_name()
        for what, answer in [
            ("sign-up", self.request("POST", "/users", {"username": name, "password": "pw"})),
            ("login", self.log_in(name, "pw")),
        ]:
            with self.subTest(what):
                self.assertIn("token", answer.json)
                self.assertIn("no-store", header_words(answer.header("Cache-Control")))

    def test_answers_of_routes_that_need_a_token_are_private_no_cache(self):
        user, token = self.sign_up()
        doomed, doomed_token = self.sign_up()
        _, other_token = self.sign_up()
        mine = f"/users/{user['id']}"
        answers = {
            "200 me": self.request("GET", "/users/me", token=token),
            "200 stats": self.request("GET", mine + "/stats", token=token),
            "200 stats changed": self.request(
                "PATCH", mine + "/stats", {"loss_count": 1}, token=token
            ),
            "200 user changed": self.request("PATCH", mine, {"gender": "x"}, token=token),
            "202 report requested": self.request("POST", mine + "/pdf", token=token),
            "202 report pending": self.request("GET", mine + "/pdf", token=token),
            "204 delete": self.request("DELETE", f"/users/{doomed['id']}", token=doomed_token),
            "401 me": self.request("GET", "/users/me"),
            "401 stats": self.request("GET", mine + "/stats"),
            "403 user": self.request("PATCH", mine, {"gender": "x"}, token=other_token),
            "404 stats": self.request("GET", f"/users/{NO_SUCH_ID}/stats", token=token),
        }
        for what, answer in answers.items():
            with self.subTest(what):
                self.assertEqual(answer.status, int(what.split()[0]), answer.body)
                words = header_words(answer.header("Cache-Control"))
                self.assertTrue({"private", "no-cache"} <= words, answer.header("Cache-Control"))
        # Public reads stay cacheable as they were: no private marking there.
        for path in ("/users", mine):
            with self.subTest(path):
                self.assertIsNone(self.request("GET", path).header("Cache-Control"))

    def test_options_on_known_paths_is_204_with_allow_and_needs_no_token(self):
        user, _ = self.sign_up()
        mine = f"/users/{user['id']}"
        expected = {
            "/users": {"GET", "POST"},
            mine: {"GET", "PUT", "PATCH", "DELETE"},
            "/users/me": {"GET"},
            mine + "/stats": {"GET", "PUT", "PATCH"},
            mine + "/pdf": {"GET", "POST"},
            "/login": {"POST"},
            "/healthz": {"GET"},
            "/openapi.json": {"GET"},
        }
        for path, methods in expected.items():
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                with self.subTest(path=path, headers=headers):
                    answer = self.request("OPTIONS", path, headers=headers)
                    self.assertNoContent(answer)
                    self.assertEqual(
                        method_set(answer.header("Allow")) - {"HEAD", "OPTIONS"}, methods
                    )

    def test_no_cors_headers_without_cors_origins(self):
        origin = {"Origin": "https://app.example"}
        for method, headers in [
            ("GET", origin),
            ("OPTIONS", {**origin, "Access-Control-Request-Method": "POST"}),
        ]:
            with self.subTest(method=method):
                self.assertEqual(cors_headers(self.request(method, "/users", headers=headers)), {})


ALLOWED_ORIGINS = ("https://app.example", "https://admin.example")


class InlineScript(HTMLParser):
    """Collects what a page would run inline: script bodies and on* attributes."""

    def __init__(self):
        super().__init__()
        self.found, self.in_script = [], False

    def handle_starttag(self, tag, attrs):
        self.in_script = tag == "script"
        self.found += [f"{tag} {name}=" for name, _ in attrs if name.startswith("on")]
        if tag == "script" and not dict(attrs).get("src"):
            self.found.append("script without src")

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.found.append(f"script body {data.strip()[:40]!r}")

    def handle_endtag(self, tag):
        self.in_script = False


class PagesTest(ApiTestCase):
    def test_pages_and_their_files_hold_the_browser_to_this_origin(self):
        for path in PAGES:
            with self.subTest(path):
                answer = self.request("GET", path)
                self.assertEqual(answer.status, 200)
                policy = answer.header("Content-Security-Policy") or ""
                directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
                self.assertEqual(directives.get("default-src"), "'self'", policy)
                self.assertNotIn("unsafe-inline", policy)
                self.assertNotIn("unsafe-eval", policy)

    def test_pages_run_no_inline_script(self):
        for path in ("/", "/docs"):
            with self.subTest(path):
                answer = self.request("GET", path)
                self.assertTrue(answer.header("Content-Type").startswith("text/html"))
                parser = InlineScript()
                parser.feed(answer.body.decode())
                self.assertEqual(parser.found, [])


class CorsTest(ApiTestCase):
    service_env = {**ApiTestCase.service_env, "CORS_ORIGINS": ",".join(ALLOWED_ORIGINS)}

    def test_allowed_origins_get_allow_origin_and_exposed_headers(self):
        user, token = self.sign_up()
        for origin in ALLOWED_ORIGINS:
            for what, method, path, body, bearer in [
                ("list", "GET", "/users", None, None),
                ("sign-up", "POST", "/users", {"username": unique_name(), "password": "pw"}, None),
                ("stats", "GET", f"/users/{user['id']}/stats", None, token),
                ("report requested", "POST", f"/users/{user['id']}/pdf", None, token),
                ("report pending", "GET", f"/users/{user['id']}/pdf", None, token),
                ("401", "GET", "/users/me", None, None),
                ("404", "GET", "/nope", None, None),
            ]:
                with self.subTest(origin=origin, request=what):
                    answer = self.request(
                        method, path, body, token=bearer, headers={"Origin": origin}
                    )
                    self.assertEqual(answer.header("Access-Control-Allow-Origin"), origin)
                    self.assertLessEqual(
                        EXPOSED | EXPOSED_FOR_WAITING,
                        header_words(answer.header("Access-Control-Expose-Headers")),
                    )

    def test_preflight_of_allowed_origin_gets_methods_and_headers(self):
        user, _ = self.sign_up()
        mine = f"/users/{user['id']}"
        for origin in ALLOWED_ORIGINS:
            for path, method, methods in [
                ("/users", "POST", {"GET", "POST"}),
                (mine, "PATCH", {"GET", "PUT", "PATCH", "DELETE"}),
                (mine + "/stats", "PUT", {"GET", "PUT", "PATCH"}),
                (mine + "/pdf", "POST", {"GET", "POST"}),
                ("/login", "POST", {"POST"}),
            ]:
                with self.subTest(origin=origin, path=path):
                    answer = self.request(
                        "OPTIONS",
                        path,
                        headers={
                            "Origin": origin,
                            "Access-Control-Request-Method": method,
                            "Access-Control-Request-Headers": "authorization, content-type",
                        },
                    )
                    self.assertNoContent(answer)
                    self.assertEqual(answer.header("Access-Control-Allow-Origin"), origin)
                    self.assertLessEqual(
                        methods, method_set(answer.header("Access-Control-Allow-Methods"))
                    )
                    self.assertLessEqual(
                        {"authorization", "content-type"} | ALLOWED_FOR_WAITING,
                        header_words(answer.header("Access-Control-Allow-Headers")),
                    )

    def test_other_origins_get_no_cors_headers(self):
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        for origin in (
            "https://evil.example",
            "http://app.example",
            "https://app.example.evil.com",
            "https://app.example:8443",
            "null",
        ):
            for method, headers in [("GET", {}), ("OPTIONS", preflight)]:
                with self.subTest(origin=origin, method=method):
                    answer = self.request(method, "/users", headers={"Origin": origin, **headers})
                    self.assertEqual(cors_headers(answer), {})
        self.assertEqual(cors_headers(self.request("GET", "/users")), {})


# Tokens


def token_version(token):
    """The ver claim of a token the server issued (read, not verified)."""
    return jwt.decode(token, options={"verify_signature": False})["ver"]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokensTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.user, self.token = self.sign_up()
        self.secret = self.service.env["JWT_SECRET"]
        self.claims = jwt.decode(self.token, self.secret, algorithms=["HS256"])

    def forge(self, key=None, algorithm="HS256", drop=(), **changes):
        """self.user's token with some claims changed or dropped, signed as told."""
        claims = {
            name: value for name, value in {**self.claims, **changes}.items() if name not in drop
        }
        return jwt.encode(claims, self.secret if key is None else key, algorithm=algorithm)

    def bad_tokens(self):
        now = int(time.time())
        other, _ = self.sign_up()
        header, payload, signature = self.token.split(".")
        none_header = b64url(b'{"alg":"none","typ":"JWT"}')
        other_payload = b64url(json.dumps({**self.claims, "sub": str(other["id"])}).encode())
        subs = {
            "int": self.user["id"],
            "of no user": str(NO_SUCH_ID),
            "not a number": "abc",
            "zero": "0",
            "negative": "-1",
            "20 digits": "99999999999999999999",
            "2**63": str(2**63),
            "padded": f" {self.user['id']} ",
            "decimal": f"{self.user['id']}.0",
            "empty": "",
        }
        return {
            "alg none": jwt.encode(self.claims, None, algorithm="none"),
            "alg none, real signature": f"{none_header}.{payload}.{signature}",
            "HS512 with the secret": self.forge(algorithm="HS512"),
            "HS384 with the secret": self.forge(algorithm="HS384"),
            "wrong secret": self.forge(key="not-the-secret-" + "x" * 64),
            "expired": self.forge(iat=now - 7200, exp=now - 3600),
            "no exp": self.forge(drop=["exp"]),
            "no iat": self.forge(drop=["iat"]),
            "no sub": self.forge(drop=["sub"]),
            "no ver": self.forge(drop=["ver"]),
            "ver ahead of the user's": self.forge(ver=1),
            **{f"ver {value!r}": self.forge(ver=value) for value in ("0", True, False, 0.0, None)},
            "exp not a number": self.forge(exp="tomorrow"),
            "iat not a number": self.forge(iat="now"),
            **{f"sub {what}": self.forge(sub=sub) for what, sub in subs.items()},
            "another user's payload, signature kept": f"{header}.{other_payload}.{signature}",
            "signature cut short": self.token[:-4],
            "signature missing": f"{header}.{payload}.",
            "not a JWT": "not-a-token",
            "three parts of garbage": "a.b.c",
        }

    def test_issued_tokens_are_hs256_with_string_sub_iat_exp_and_ver_0(self):
        for what, token in [
            ("sign-up", self.token),
            ("login", self.token_of(self.user["username"])),
        ]:
            with self.subTest(what):
                self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")
                claims = jwt.decode(token, self.secret, algorithms=["HS256"])
                self.assertEqual(claims["sub"], str(self.user["id"]))
                self.assertIsInstance(claims["iat"], int)
                self.assertEqual(claims["exp"] - claims["iat"], 86400)
                self.assertIs(type(claims["ver"]), int)
                self.assertEqual(claims["ver"], 0)

    def test_a_token_forged_with_the_secret_is_accepted(self):
        # The forgeries below fail only for what each one changes.
        now = int(time.time())
        token = self.forge(iat=now, exp=now + 600)
        self.assertEqual(
            self.assertJson(self.request("GET", "/users/me", token=token), 200), self.user
        )

    def test_bad_tokens_are_401_with_www_authenticate_bearer(self):
        headers = {what: f"Bearer {token}" for what, token in self.bad_tokens().items()}
        headers.update(
            {
                "Bearer without a token": "Bearer",
                "Basic scheme": "Basic dXNlcjpwdw==",
                "token without a scheme": self.token,
                "Token scheme": f"Token {self.token}",
                "two tokens": f"Bearer {self.token} {self.token}",
            }
        )
        stats = f"/users/{self.user['id']}/stats"
        for what, header in headers.items():
            with self.subTest(what):
                authorization = {"Authorization": header}
                self.assertUnauthorized(self.request("GET", "/users/me", headers=authorization))
                self.assertUnauthorized(
                    self.request("PATCH", stats, {"loss_count": 1}, headers=authorization)
                )
        self.assertEqual(self.stats(self.user["id"], self.token), ZERO_STATS)

    def test_tokens_of_a_deleted_user_are_401(self):
        doomed, doomed_token = self.sign_up()
        claims = jwt.decode(doomed_token, self.secret, algorithms=["HS256"])
        self.assertNoContent(self.request("DELETE", f"/users/{doomed['id']}", token=doomed_token))
        now = int(time.time())
        fresh = jwt.encode({**claims, "iat": now, "exp": now + 600}, self.secret, "HS256")
        for what, token in [("issued", doomed_token), ("freshly signed", fresh)]:
            with self.subTest(what):
                self.assertUnauthorized(self.request("GET", "/users/me", token=token))
                self.assertUnauthorized(
                    self.request("GET", f"/users/{self.user['id']}/stats", token=token)
                )


class TokenTtlTest(ApiTestCase):
    service_env = {**ApiTestCase.service_env, "JWT_TTL": "120"}

    def test_tokens_expire_jwt_ttl_seconds_after_issue(self):
        user, token = self.sign_up()
        for issued in (token, self.token_of(user["username"])):
            claims = jwt.decode(issued, self.service.env["JWT_SECRET"], algorithms=["HS256"])
            self.assertEqual(claims["exp"] - claims["iat"], 120)


class GeneratedSecretTest(ApiTestCase):
    """Without JWT_SECRET: a secret made once and kept in the data folder, mode 0600."""

    service_env = {**ApiTestCase.service_env, "JWT_SECRET": ""}

    def key_files(self, token):
        """The files of the data folder holding the key that signed token."""
        found = []
        for path in self.service.dir.iterdir():
            content = path.read_bytes() if path.is_file() else b""
            for key in {content, content.strip()} - {b""}:
                try:
                    jwt.decode(token, key, algorithms=["HS256"])
                except jwt.InvalidTokenError:
                    continue
                found.append(path)
                break
        return found

    def test_generated_secret_is_kept_in_the_data_folder_with_mode_0600(self):
        _, token = self.sign_up()
        files = self.key_files(token)
        self.assertTrue(files, "no file in the data folder holds the key of the tokens")
        for path in files:
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)

    def test_generated_secret_survives_a_restart(self):
        user, token = self.sign_up()
        self.service.server.stop()
        self.service.start_server()
        self.assertEqual(self.assertJson(self.request("GET", "/users/me", token=token), 200), user)

    def test_there_is_no_built_in_default_secret(self):
        self.sign_up()  # user 1 exists here, as it will there
        other = LiveService(**self.service_env)
        self.addCleanup(other.stop)
        other.start_server()
        stranger = other.request("POST", "/users", {"username": unique_name(), "password": "pw"})
        self.assertEqual(stranger.status, 201, stranger.body)
        self.assertEqual(stranger.json["user"]["id"], 1)
        self.assertUnauthorized(self.request("GET", "/users/me", token=stranger.json["token"]))


class WeakSecretTest(BoundedTestCase):
    """A JWT_SECRET shorter than 32 bytes (RFC 7518 section 3.2) refuses to start."""

    def start_with_secret(self, secret):
        service = LiveService(JWT_SECRET=secret)
        self.addCleanup(service.stop)
        process = service.start("server.py", PORT=str(free_port()))
        try:
            process.popen.wait(30)
        except subprocess.TimeoutExpired:
            return None, process.output()
        return process.popen.returncode, process.output()

    def test_a_31_byte_secret_refuses_to_start_naming_the_variable_and_the_minimum(self):
        # 31 bytes, of which the "é"s are 2 each: bytes count, not characters.
        code, output = self.start_with_secret("é" * 10 + "x" * 11)
        self.assertIsNotNone(code, "the server started with a 31-byte JWT_SECRET")
        self.assertNotEqual(code, 0)
        self.assertIn("JWT_SECRET", output)
        self.assertIn("32 bytes", output)
        self.assertNotIn("Traceback", output)

    def test_a_32_byte_secret_starts(self):
        service = LiveService(JWT_SECRET="s" * 32)
        self.addCleanup(service.stop)
        service.start_server()
        self.assertEqual(service.request("GET", "/healthz").status, 200)


# Service

ROUTES = {
    "/users": {"get", "post"},
    "/users/me": {"get"},
    "/users/{id}": {"get", "put", "patch", "delete"},
    "/users/{id}/stats": {"get", "put", "patch"},
    "/users/{id}/pdf": {"get", "post"},
    "/login": {"post"},
    "/healthz": {"get"},
    "/openapi.json": {"get"},
}
CONTRACT_STATUSES = {
    ("/users", "get"): {"200", "400"},
    ("/users", "post"): {"201", "400", "409"},
    ("/users/me", "get"): {"200", "401"},
    ("/users/{id}", "get"): {"200", "404"},
    ("/users/{id}", "put"): {"200", "400", "401", "403", "404", "409"},
    ("/users/{id}", "patch"): {"200", "400", "401", "403", "404", "409"},
    ("/users/{id}", "delete"): {"204", "401", "403", "404"},
    ("/users/{id}/stats", "get"): {"200", "401", "404"},
    ("/users/{id}/stats", "put"): {"200", "400", "401", "403", "404"},
    ("/users/{id}/stats", "patch"): {"200", "400", "401", "403", "404"},
    ("/users/{id}/pdf", "post"): {"202", "401", "403", "404", "503"},
    ("/users/{id}/pdf", "get"): {"200", "202", "401", "404"},
    ("/login", "post"): {"200", "400", "401", "429"},
    ("/healthz", "get"): {"200", "503"},
    ("/openapi.json", "get"): {"200"},
}
PROTECTED = {
    ("/users/me", "get"),
    ("/users/{id}", "put"),
    ("/users/{id}", "patch"),
    ("/users/{id}", "delete"),
    ("/users/{id}/stats", "get"),
    ("/users/{id}/stats", "put"),
    ("/users/{id}/stats", "patch"),
    ("/users/{id}/pdf", "post"),
    ("/users/{id}/pdf", "get"),
}
WITH_BODY = {
    ("/users", "post"),
    ("/users/{id}", "put"),
    ("/users/{id}", "patch"),
    ("/users/{id}/stats", "put"),
    ("/users/{id}/stats", "patch"),
    ("/login", "post"),
}
VERBS = {"get", "put", "post", "patch", "delete", "options", "head"}


def allows_null(schema):
    kinds = schema.get("type")
    options = schema.get("anyOf", []) + schema.get("oneOf", [])
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(allows_null(option) for option in options)
    )


class ServiceTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.document = self.assertJson(self.request("GET", "/openapi.json"), 200)

    def resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def operations(self):
        """{(path with its parameter spelt {id}, verb): operation}"""
        return {
            (re.sub(r"\{[^}]*\}", "{id}", path), verb): self.resolve(operation)
            for path, item in self.document["paths"].items()
            for verb, operation in self.resolve(item).items()
            if verb in VERBS
        }

    def json_schema(self, holder):
        return self.resolve(self.resolve(holder)["content"]["application/json"]["schema"])

    def test_healthz_reports_the_database_ok(self):
        body = self.assertJson(self.request("GET", "/healthz"), 200)
        self.assertEqual(body, {"status": "ok", "database": "ok", "broker": "ok"})

    def test_every_operation_has_a_unique_operation_id_a_summary_and_a_known_tag(self):
        tags = {tag["name"] for tag in self.document["tags"]}
        ids = []
        for (path, verb), operation in self.operations().items():
            with self.subTest(path=path, verb=verb):
                self.assertRegex(operation.get("operationId", ""), r"^[a-z][A-Za-z]+$")
                self.assertTrue(operation.get("summary"))
                self.assertTrue(operation.get("tags"))
                self.assertLessEqual(set(operation["tags"]), tags)
                ids.append(operation["operationId"])
        self.assertEqual(len(ids), len(set(ids)), sorted(ids))
        self.assertGreaterEqual(len(ids), sum(len(verbs) for verbs in ROUTES.values()))

    def test_openapi_is_3_1_and_describes_every_route(self):
        self.assertRegex(self.document["openapi"], r"^3\.1\.")
        self.assertIn("title", self.document["info"])
        operations = self.operations()
        for path, verbs in ROUTES.items():
            for verb in verbs:
                self.assertIn((path, verb), operations)

    def test_openapi_names_every_status_of_the_contract(self):
        operations = self.operations()
        for route, statuses in CONTRACT_STATUSES.items():
            with self.subTest(route=route):
                self.assertLessEqual(statuses, set(operations[route]["responses"]))

    def test_openapi_has_request_and_response_schemas(self):
        for route, operation in self.operations().items():
            with self.subTest(route=route):
                if route in WITH_BODY:
                    self.assertEqual(self.json_schema(operation["requestBody"])["type"], "object")
                for status, answer in operation["responses"].items():
                    # Not JSON: a PDF, and the Prometheus text of /metrics.
                    not_json = route == ("/users/{id}/pdf", "get") or (
                        route == ("/metrics", "get") and status == "200"
                    )
                    if status not in ("204", "304") and not not_json:
                        self.assertIsInstance(self.json_schema(answer), dict, status)

    def test_openapi_has_the_bearer_scheme_on_exactly_the_protected_routes(self):
        schemes = self.document["components"]["securitySchemes"]
        bearer = {
            name
            for name, scheme in schemes.items()
            if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer"
        }
        self.assertTrue(bearer)
        for route, operation in self.operations().items():
            with self.subTest(route=route):
                security = operation.get("security", self.document.get("security", []))
                if route in PROTECTED:
                    self.assertTrue(security)
                    for requirement in security:
                        self.assertTrue(set(requirement) & bearer, requirement)
                else:
                    self.assertTrue(not security or {} in security, security)

    def test_openapi_schemas_state_the_validation_rules(self):
        operations = self.operations()
        for route in [("/users", "post"), ("/users/{id}", "put"), ("/users/{id}", "patch")]:
            with self.subTest(route=route):
                schema = self.json_schema(operations[route]["requestBody"])
                fields = {name: self.resolve(rule) for name, rule in schema["properties"].items()}
                username = fields["username"]
                self.assertEqual((username["minLength"], username["maxLength"]), (1, 32))
                self.assertRegex("a.b-c_1", username["pattern"])
                self.assertNotRegex("a b", username["pattern"])
                self.assertEqual(
                    (fields["password"]["minLength"], fields["password"]["maxLength"]), (1, 256)
                )
                for name, length in [("email", 254), ("gender", 32), ("profile_pic", 2048)]:
                    self.assertEqual(fields[name]["maxLength"], length, name)
                    self.assertTrue(allows_null(fields[name]), name)
        self.assertLessEqual(
            {"username", "password"},
            set(self.json_schema(operations[("/users", "post")]["requestBody"])["required"]),
        )
        for verb in ("put", "patch"):
            schema = self.json_schema(operations[("/users/{id}/stats", verb)]["requestBody"])
            for name in STAT_NAMES:
                with self.subTest(verb=verb, field=name):
                    rule = self.resolve(schema["properties"][name])
                    self.assertEqual((rule["type"], rule["minimum"]), ("integer", 0))
                    self.assertTrue(
                        rule.get("maximum") == 2**63 - 1 or rule.get("exclusiveMaximum") == 2**63,
                        rule,
                    )
        listing = operations[("/users", "get")]["parameters"]
        parameters = {
            parameter["name"]: parameter["schema"] for parameter in map(self.resolve, listing)
        }
        limit = parameters["limit"]
        self.assertEqual((limit["minimum"], limit["maximum"]), (1, 1000))
        self.assertEqual(parameters["offset"]["minimum"], 0)


@unittest.skipIf(TEST_DATABASE_URL, "it breaks an SQLite file; there is none on PostgreSQL")
class BrokenDatabaseTest(ApiTestCase):
    log_must_stay_clean = False  # a broken database may well be logged

    def test_healthz_is_503_naming_the_database_when_it_is_unusable(self):
        self.sign_up()
        for path in self.service.dir.glob("app.db*"):
            with open(path, "r+b") as file:
                file.write(os.urandom(max(path.stat().st_size, 4096)))
        body = self.assertJson(self.request("GET", "/healthz"), 503)
        self.assertEqual(body, {"status": "down", "database": "down", "broker": "ok"})


class ProvokedServerErrorTest(ApiTestCase):
    """A route that fails for a reason no request can cause: the stats table
    dropped behind the server's back (on SQLite and PostgreSQL alike)."""

    log_must_stay_clean = False  # the traceback is the point

    def test_an_unexpected_error_is_a_json_500_and_its_traceback_is_logged(self):
        user, token = self.sign_up()
        with self.service.database() as db:
            db.execute(text("DROP TABLE stats"))
        path = f"/users/{user['id']}/stats"
        answer = self.request("GET", path, token=token)
        self.assertEqual(
            self.assertJson(answer, 500),
            {"success": False, "message": "Internal server error; it has been logged."},
        )
        self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
        server = self.service.server
        wait_until(lambda: f"GET {path} 500 " in server.output(), what="the 500's access-log line")
        log = server.output()
        self.assertIn(f"Unhandled error on GET {path}", log)
        traceback = log[log.index(f"Unhandled error on GET {path}") :]
        self.assertIn("Traceback (most recent call last)", traceback)
        self.assertRegex(traceback, r"(?i)no such table: stats|relation \"stats\" does not exist")
        self.assertNotIn(token, log)
        # The rest of the service carries on.
        self.assertEqual(self.fetch_user(user["id"]), user)


class EnvironmentIsolationTest(ServiceClient, BoundedTestCase):
    """What the caller's shell holds does not reach the service under test."""

    def test_service_settings_in_the_callers_environment_do_not_reach_the_service(self):
        meddling = {
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:9//",
            "EMBEDDED_WORKER": "off",
            "CORS_ORIGINS": "https://app.example",
            "JWT_TTL": "7",
            "METRICS": "off",
            "REPORT_QUEUE": "somebody-elses",
        }
        saved = {name: os.environ.get(name) for name in meddling}
        os.environ.update(meddling)
        try:
            self.service = LiveService()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.addCleanup(self.service.stop)
        for name in meddling:
            self.assertNotIn(name, self.service.env)
        server = self.service.start_server()
        user, token = self.sign_up()
        claims = jwt.decode(token, self.service.env["JWT_SECRET"], algorithms=["HS256"])
        self.assertEqual(claims["exp"] - claims["iat"], 86400)
        answer = self.request("GET", "/users", headers={"Origin": "https://app.example"})
        self.assertEqual(cors_headers(answer), {})
        self.assertEqual(self.request("GET", "/metrics").status, 200)
        # memory:// and its embedded worker, as by default: the report gets made.
        self.assertEqual(
            self.request("GET", "/healthz").json, {"status": "ok", "database": "ok", "broker": "ok"}
        )
        self.assertEqual(self.request("POST", user["pdf"], token=token).status, 202)
        wait_until(
            lambda: self.request("GET", user["pdf"], token=token).status == 200,
            what="the report, made by the embedded worker",
        )
        self.assertIn("consuming report jobs from memory://", server.output())


# Concurrency: 8 Waitress threads at once, no 500 and no "database is locked" (see tearDown)


class ConcurrencyTest(ApiTestCase):
    @staticmethod
    def in_parallel(function, items, timeout=120):
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(function, items, timeout=timeout))

    def test_concurrent_sign_ups_of_one_name_give_one_201_and_409s(self):
        name = unique_name()
        answers = self.in_parallel(
            lambda _: self.request("POST", "/users", {"username": name, "password": "pw"}), range(8)
        )
        statuses = sorted(answer.status for answer in answers)
        self.assertEqual(statuses, [201] + [409] * 7)
        for answer in answers:
            if answer.status == 409:
                self.assertError(answer, 409, mentions=name)

    def test_concurrent_sign_ups_all_succeed_with_distinct_ids(self):
        answers = self.in_parallel(
            lambda _: self.request("POST", "/users", {"username": unique_name(), "password": "pw"}),
            range(40),
        )
        self.assertEqual([answer.status for answer in answers], [201] * 40)
        ids = {answer.json["user"]["id"] for answer in answers}
        self.assertEqual(len(ids), 40)
        mes = self.in_parallel(
            lambda answer: self.request("GET", "/users/me", token=answer.json["token"]), answers
        )
        self.assertEqual({me.json["id"] for me in mes}, ids)

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

    def test_mixed_writes_at_once_never_fail(self):
        users = self.in_parallel(lambda _: self.sign_up(), range(16))

        def work(index):
            user, token = users[index]
            path = f"/users/{user['id']}"
            answers = [
                self.log_in(user["username"]),
                self.request("PATCH", path, {"gender": f"g{index}"}, token=token),
                self.request("PUT", path + "/stats", {"session_count": index}, token=token),
                self.request("POST", "/users", {"username": unique_name(), "password": "pw"}),
                self.request("GET", "/users?limit=1000"),
            ]
            if index % 2:
                answers.append(self.request("DELETE", path, token=token))
            return [answer.status for answer in answers]

        for index, statuses in enumerate(self.in_parallel(work, range(16))):
            self.assertEqual(statuses, [200, 200, 200, 201, 200] + ([204] if index % 2 else []))
        for index, (user, token) in enumerate(users):
            if index % 2:
                self.assertError(self.request("GET", f"/users/{user['id']}"), 404)
            else:
                self.assertEqual(self.fetch_user(user["id"])["gender"], f"g{index}")
                self.assertEqual(self.stats(user["id"], token)["session_count"], index)

    def test_requests_racing_their_users_deletion_get_a_whole_answer_or_401(self):
        # Each route checks the token, then reads or writes: a deletion that
        # commits in between must not turn the answer into an empty 200 or a 500.
        def racing_requests(path):
            return [
                ("GET", "/users/me", None),
                ("PATCH", path, {"gender": "x"}),
                ("PATCH", path + "/stats", {"victory_count": 1}),
                ("POST", path + "/pdf", None),
            ]

        def until_gone(user, token, method, path, body, started, stop):
            # Until the 401 that the deletion brings, or told to stop (the
            # deletion failed), or the deadline: never forever.
            wrong, deadline = [], time.monotonic() + 10
            while not stop.is_set():
                answer = self.request(method, path, body, token=token)
                started.set()
                if answer.status == 401:
                    return wrong
                if answer.status not in (200, 202) or not answer.body.startswith(b"{"):
                    wrong.append(f"{method} {path}: {answer.status} {answer.body[:60]!r}")
                if time.monotonic() > deadline:
                    return wrong + [f"{method} {path}: still no 401 after 10 s"]
            return wrong + [f"{method} {path}: stopped before its 401"]

        wrong = []
        stop = threading.Event()
        with ThreadPoolExecutor(4) as pool:
            try:
                for _ in range(30):
                    user, token = self.sign_up()
                    path = f"/users/{user['id']}"
                    started = [threading.Event() for _ in racing_requests(path)]
                    racers = [
                        pool.submit(until_gone, user, token, *request, event, stop)
                        for request, event in zip(racing_requests(path), started, strict=True)
                    ]
                    for event in started:
                        self.assertTrue(event.wait(10), "a racing request got no answer")
                    self.assertNoContent(self.request("DELETE", path, token=token))
                    for racer in racers:
                        wrong += racer.result(timeout=60)
                    if wrong:
                        break  # one round tells: no need for 29 more
            finally:
                stop.set()  # whatever failed above, the racers end
        self.assertEqual(wrong, [])

    def test_the_total_count_always_matches_the_page_during_sign_ups_and_deletions(self):
        changing = True
        deadline = time.monotonic() + 120

        def sign_up_and_delete():
            while changing and time.monotonic() < deadline:
                user, token = self.sign_up()
                self.assertNoContent(self.request("DELETE", f"/users/{user['id']}", token=token))

        with ThreadPoolExecutor(2) as pool:
            changers = [pool.submit(sign_up_and_delete) for _ in range(2)]
            try:
                mismatches = []
                for _ in range(300):
                    answer = self.request("GET", "/users?limit=1000")
                    total = int(answer.header("X-Total-Count"))
                    if len(answer.json) != total:  # fewer than 1000 users: one page
                        mismatches.append((total, len(answer.json)))
            finally:
                changing = False
            for changer in changers:
                changer.result(timeout=60)
        self.assertEqual(mismatches, [])

    def assertIdNotReused(self, restart):
        self.sign_up()
        doomed, doomed_token = self.sign_up()
        total = int(self.request("GET", "/users").header("X-Total-Count"))
        last = self.request("GET", f"/users?offset={total - 1}").json
        self.assertEqual(last, [doomed])  # the highest id
        self.assertNoContent(self.request("DELETE", f"/users/{doomed['id']}", token=doomed_token))
        if restart:
            self.service.server.stop()
            self.service.start_server()
        newcomer, newcomer_token = self.sign_up()
        self.assertGreater(newcomer["id"], doomed["id"])
        self.assertUnauthorized(self.request("GET", "/users/me", token=doomed_token))
        self.assertError(self.request("GET", f"/users/{doomed['id']}"), 404)
        self.assertEqual(
            self.assertJson(self.request("GET", "/users/me", token=newcomer_token), 200), newcomer
        )

    def test_ids_are_never_reused_after_deletion(self):
        self.assertIdNotReused(restart=False)

    def test_ids_are_never_reused_after_deletion_and_restart(self):
        self.assertIdNotReused(restart=True)


if __name__ == "__main__":
    unittest.main()
