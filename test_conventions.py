"""CONTRACT.md, Conventions: JSON in and out, errors, ids, bodies, methods, tokens.

Over HTTP against the real server (testing.ApiTestCase: `server.py` as a
process on a free port, a real SQLite file in a temporary folder): what every
route does alike. The one JSON style has test_json_style.py of its own.
How a body's fields are checked (validation.checked_fields: unknown fields
named, read-only ones ignored, required ones named) is tested in-process.
"""

import json
import unittest
from itertools import product

from sqlalchemy import text

import validation
from responses import ApiError
from testing import (
    MAX_BODY,
    NO_SUCH_ID,
    ZERO_STATS,
    ApiTestCase,
    method_set,
    names_word,
    raw_exchange,
    unique_name,
    wait_until,
)

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


class ProvokedServerErrorTest(ApiTestCase):
    """A route that fails for a reason no request can cause: the stats table
    dropped behind the server's back (on SQLite and PostgreSQL alike)."""

    log_must_stay_clean = False  # the traceback is the point
    share_server = False  # it drops a table

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


class CheckedFieldsTest(unittest.TestCase):
    """validation.checked_fields in-process: unknown fields are refused naming
    them, read-only ones ignored, missing required ones named."""

    def refusal(self, body, **options):
        with self.assertRaises(ApiError) as caught:
            validation.checked_fields(body, validation.USER_FIELDS, **options)
        self.assertEqual(caught.exception.status_code, 400)
        return json.loads(caught.exception.body)["message"]

    def test_unknown_fields_are_a_400_naming_each_of_them(self):
        message = self.refusal({"username": "ok", "nickname": "x", "is_admin": True})
        self.assertIn("'nickname'", message)
        self.assertIn("'is_admin'", message)

    def test_read_only_fields_are_ignored_where_allowed_and_unknown_elsewhere(self):
        body = {"username": "ok", "id": 7, "self": "/users/7", "stats": "x", "pdf": "y"}
        checked = validation.checked_fields(
            body, validation.USER_FIELDS, ignored=validation.READ_ONLY_USER_FIELDS
        )
        self.assertEqual(checked, {"username": "ok"})
        self.assertIn("'id'", self.refusal(body))

    def test_a_missing_required_field_is_a_400_naming_it(self):
        message = self.refusal({"username": "ok"}, required=("username", "password"))
        self.assertTrue(names_word(message, "password"), message)
        self.assertFalse(names_word(message, "username"), message)

    def test_the_fields_sent_are_all_that_come_back(self):
        self.assertEqual(validation.checked_fields({}, validation.USER_FIELDS), {})
        self.assertEqual(
            validation.checked_fields({"email": None}, validation.USER_FIELDS), {"email": None}
        )


if __name__ == "__main__":
    unittest.main()
