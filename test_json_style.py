"""One JSON style (CONTRACT.md, Conventions), on SQLite and on PostgreSQL.

A user has byte-identical JSON from every route that returns it and from
either database, with the fields in CONTRACT.md's order; every other JSON
answer is written in the same style (compact, UTF-8 as it is).
responses.to_json, which writes it, is also tested in-process.
"""

import json
import unittest
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import OperationalError

import responses
from testing import (
    CI,
    LONE_SURROGATE,
    TEST_DATABASE_URL,
    LiveService,
    ScratchPostgres,
)

POSTGRES_URL = TEST_DATABASE_URL or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
USER_FIELD_ORDER = ["id", "username", "email", "gender", "profile_pic", "self", "stats", "pdf"]
# Text each database must escape alike: quotes, backslashes, non-ASCII,
# a character outside the BMP and U+2028 (raw in JSON, not in JavaScript).
AWKWARD_USER = {
    "username": "Zoe.is_ok-1",
    "password": "pw",
    "email": 'q"uote\\back@example.com',
    "gender": 'é ☃ 😀 \u2028 "x" \\ /',
    "profile_pic": 'https://example.com/ü?a=1&b="2"',
}


def in_the_one_style(body):
    """body as the one style writes it: compact, UTF-8 as it is, keys in the order given."""
    data = json.loads(body, object_pairs_hook=dict)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def keys_in_order(body):
    return [key for key, _ in json.loads(body, object_pairs_hook=lambda pairs: pairs)]


class OneJsonStyleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        try:
            cls.postgres = ScratchPostgres(POSTGRES_URL)
        except OperationalError as error:
            if CI:
                raise
            raise unittest.SkipTest(f"no PostgreSQL at {POSTGRES_URL} ({error})") from error
        cls.services = {
            "sqlite": LiveService(EMBEDDED_WORKER="off"),
            "postgresql": LiveService(EMBEDDED_WORKER="off", DATABASE_URL=cls.postgres.url),
        }
        for service in cls.services.values():
            if service.postgres:  # TEST_DATABASE_URL: the SQLite one must stay SQLite
                service.postgres.drop()
                service.postgres = None
            service.env["DATABASE_URL"] = (
                cls.postgres.url
                if service is cls.services["postgresql"]
                else f"sqlite:///{service.dir}/app.db"
            )
        try:  # both at once: each server starts on a database of its own
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(LiveService.start_server, cls.services.values()))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.services["postgresql"].after_stop.append(cls.postgres.drop)  # once it is stopped
        for service in cls.services.values():
            service.stop_in_background()

    def user_bytes_from_every_route(self, service):
        """{route: the bytes of the awkward user it returned}, on a fresh database."""
        created = service.request("POST", "/users", AWKWARD_USER)
        self.assertEqual(created.status, 201, created.body)
        token = json.loads(created.body)["token"]
        head, tail = b'{"user":', b',"token":'
        self.assertTrue(created.body.startswith(head), created.body)
        user_id = json.loads(created.body)["user"]["id"]
        answers = {
            "POST /users": created.body[len(head) : created.body.index(tail)],
            "GET /users/{id}": service.request("GET", f"/users/{user_id}").body,
            "GET /users/me": service.request("GET", "/users/me", token=token).body,
            "PATCH /users/{id}": service.request(
                "PATCH", f"/users/{user_id}", {}, token=token
            ).body,
            "PUT /users/{id}": service.request("PUT", f"/users/{user_id}", {}, token=token).body,
        }
        listed = service.request("GET", "/users").body
        start = listed.index(b'{"id":%d,' % user_id)
        end = listed.index(b'"pdf":"/users/%d/pdf"}' % user_id, start)
        answers["GET /users"] = listed[start : end + len(b'"pdf":"/users/%d/pdf"}' % user_id)]
        return answers

    def test_a_user_has_the_same_bytes_from_every_route_and_both_databases(self):
        seen = {
            name: self.user_bytes_from_every_route(service)
            for name, service in self.services.items()
        }
        reference = seen["sqlite"]["GET /users/{id}"]
        self.assertEqual(keys_in_order(reference), USER_FIELD_ORDER)
        self.assertEqual(reference, in_the_one_style(reference))
        for database, answers in seen.items():
            for route, body in answers.items():
                self.assertEqual(body, reference, f"{route} on {database}")

    def test_every_json_answer_is_in_the_one_style(self):
        for name, service in self.services.items():
            created = service.request(
                "POST", "/users", {"username": f"style_{name}", "password": "pw"}
            )
            user = json.loads(created.body)["user"]
            token = json.loads(created.body)["token"]
            answers = {
                "sign-up": created,
                "two users": service.request("GET", "/users"),
                "stats": service.request("GET", f"/users/{user['id']}/stats", token=token),
                "stats written": service.request(
                    "PATCH", f"/users/{user['id']}/stats", {"victory_count": 3}, token=token
                ),
                "login": service.request(
                    "POST", "/login", {"username": f"style_{name}", "password": "pw"}
                ),
                "error": service.request("GET", "/users/999999"),
                "error naming a field": service.request("POST", "/users", {"é\u2028": 1}),
                "health": service.request("GET", "/healthz"),
                "openapi": service.request("GET", "/openapi.json"),
            }
            for what, answer in answers.items():
                with self.subTest(database=name, answer=what):
                    self.assertTrue(answer.header("Content-Type").startswith("application/json"))
                    self.assertEqual(answer.body, in_the_one_style(answer.body))


class ToJsonTest(unittest.TestCase):
    """responses.to_json in-process: the one style every answer is written in."""

    def test_compact_with_keys_in_the_order_given(self):
        self.assertEqual(
            responses.to_json({"b": 1, "a": [1, 2], "c": {"d": None, "e": True}}),
            '{"b":1,"a":[1,2],"c":{"d":null,"e":true}}',
        )

    def test_text_is_utf_8_as_it_is_never_ascii_escapes(self):
        text = 'é ☃ 😀 \u2028 "x" \\ /'
        written = responses.to_json({"gender": text})
        self.assertEqual(written, '{"gender":"é ☃ 😀 \u2028 \\"x\\" \\\\ /"}')
        self.assertEqual(written, in_the_one_style(json.dumps({"gender": text})).decode())

    def test_a_lone_surrogate_is_written_as_its_json_escape_and_the_text_stays_utf_8(self):
        written = responses.to_json({"message": "field 'a" + LONE_SURROGATE + "' é"})
        self.assertEqual(written, '{"message":"field \'a\\ud800\' é"}')
        written.encode("utf-8")  # raises if it could not be sent
        self.assertEqual(json.loads(written)["message"], "field 'a" + LONE_SURROGATE + "' é")

    def test_errors_are_success_false_and_a_message(self):
        self.assertEqual(responses.error_body("Say why."), '{"success":false,"message":"Say why."}')


if __name__ == "__main__":
    unittest.main()
