"""CONTRACT.md, Users, Logging out (and the jti claim of Tokens): POST /logout
ends the token used, or with {"everywhere": true} every token of its user;
on every server sharing the database; a revoked token is forgotten once it
would have expired anyway. Over HTTP against the real server.
"""

import time

import jwt
from sqlalchemy import text

from testing import ApiTestCase, wait_until


class LoggingOutTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.user, self.token = self.sign_up()
        self.other_token = self.token_of(self.user["username"])

    def log_out(self, token, body=None, port=None):
        return self.request("POST", "/logout", body, token=token, port=port)

    def me(self, token, port=None):
        return self.request("GET", "/users/me", token=token, port=port)

    def test_logging_out_ends_the_token_used_and_only_it(self):
        self.assertNoContent(self.log_out(self.token))
        self.assertUnauthorized(self.me(self.token))
        self.assertUnauthorized(
            self.request("GET", f"/users/{self.user['id']}/stats", token=self.token)
        )
        self.assertEqual(self.assertJson(self.me(self.other_token), 200), self.user)

    def test_everywhere_false_or_an_empty_object_ends_only_the_token_used(self):
        for body in ({"everywhere": False}, {}):
            with self.subTest(body=body):
                token = self.token_of(self.user["username"])
                self.assertNoContent(self.log_out(token, body))
                self.assertUnauthorized(self.me(token))
                self.assertJson(self.me(self.other_token), 200)

    def test_logging_out_everywhere_ends_every_token_of_the_user_and_no_one_elses(self):
        stranger, stranger_token = self.sign_up()
        self.assertNoContent(self.log_out(self.token, {"everywhere": True}))
        for token in (self.token, self.other_token):
            self.assertUnauthorized(self.me(token))
        self.assertJson(self.me(stranger_token), 200)
        fresh = self.token_of(self.user["username"])  # logging in again works
        self.assertEqual(self.assertJson(self.me(fresh), 200), self.user)

    def test_a_logged_out_token_cannot_log_out_again(self):
        self.assertNoContent(self.log_out(self.token))
        self.assertUnauthorized(self.log_out(self.token))
        self.assertUnauthorized(self.log_out(self.token, {"everywhere": True}))
        self.assertJson(self.me(self.other_token), 200)  # nor end the others

    def test_logging_out_without_a_valid_token_is_401(self):
        for token in (None, "not-a-token"):
            with self.subTest(token=token):
                self.assertUnauthorized(self.log_out(token))

    def test_a_bad_body_is_400_and_ends_nothing(self):
        bodies = {
            "everywhere 1": {"everywhere": 1},
            "everywhere 'yes'": {"everywhere": "yes"},
            "everywhere null": {"everywhere": None},
            "unknown field": {"everywhere": True, "all": True},
            "an array": [True],
        }
        for what, body in bodies.items():
            with self.subTest(what):
                answer = self.log_out(self.token, body)
                self.assertError(answer, 400, "everywhere" if "everywhere" in what else None)
        self.assertError(self.request("POST", "/logout", raw=b"{not json", token=self.token), 400)
        for token in (self.token, self.other_token):
            self.assertJson(self.me(token), 200)

    def test_tokens_carry_a_unique_jti(self):
        claims = [
            jwt.decode(token, options={"verify_signature": False})
            for token in (self.token, self.other_token, self.token_of(self.user["username"]))
        ]
        self.assertEqual(len({claim["jti"] for claim in claims}), 3)

    def test_a_token_revoked_on_one_server_is_refused_by_another(self):
        port = self.service.start_another_server()
        self.assertJson(self.me(self.token, port=port), 200)
        self.assertNoContent(self.log_out(self.token))  # on the first server
        self.assertUnauthorized(self.me(self.token, port=port))
        self.assertNoContent(self.log_out(self.other_token, {"everywhere": True}, port=port))
        self.assertUnauthorized(self.me(self.other_token))


class RevokedTokensAreForgottenTest(ApiTestCase):
    service_env = {**ApiTestCase.service_env, "JWT_TTL": "2"}

    def revoked_jtis(self):
        with self.service.database() as db:
            return {row.jti for row in db.execute(text("SELECT jti FROM revoked_tokens"))}

    def test_a_revoked_token_is_forgotten_once_it_would_have_expired(self):
        _, first = self.sign_up()
        self.assertNoContent(self.request("POST", "/logout", token=first))
        first_jti = jwt.decode(first, options={"verify_signature": False})["jti"]
        self.assertIn(first_jti, self.revoked_jtis())
        expires = jwt.decode(first, options={"verify_signature": False})["exp"]
        wait_until(lambda: time.time() > expires + 1, timeout=10, what="the token's expiry")
        _, second = self.sign_up()
        self.assertNoContent(self.request("POST", "/logout", token=second))
        second_jti = jwt.decode(second, options={"verify_signature": False})["jti"]
        self.assertEqual(self.revoked_jtis(), {second_jti})
        self.assertUnauthorized(self.request("GET", "/users/me", token=second))
