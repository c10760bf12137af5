"""CONTRACT.md, Headers on every response: nosniff, Cache-Control, OPTIONS
and CORS, over HTTP against the real server.
"""

import unittest

from testing import (
    MAX_BODY,
    NO_SUCH_ID,
    PAGES,
    ApiTestCase,
    cors_headers,
    header_words,
    method_set,
    raw_exchange,
    unique_name,
)

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
        # answers, 200 and 304, are test_pdf_report.py's; the 503 too).
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


if __name__ == "__main__":
    unittest.main()
