"""CONTRACT.md, Tokens: HS256 JWTs with sub, iat, exp and ver; every other
token refused; JWT_TTL; the secret generated and kept when JWT_SECRET is
unset, and a short one refused at start-up. The claims auth.issue_token
writes are also read in-process.
"""

import base64
import json
import stat
import subprocess
import time
import unittest
from types import SimpleNamespace
from unittest import mock

import jwt

import auth
import config
from testing import (
    NO_SUCH_ID,
    ZERO_STATS,
    ApiTestCase,
    BoundedTestCase,
    LiveService,
    free_port,
    unique_name,
)


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
            "no jti": self.forge(drop=["jti"]),
            **{f"jti {value!r}": self.forge(jti=value) for value in (1, None, ["a"], "j" * 65)},
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

    def test_issued_tokens_are_hs256_with_string_sub_iat_exp_ver_0_and_a_jti(self):
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
                self.assertRegex(claims["jti"], r"^[0-9a-f]{32}$")

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
        self.addCleanup(other.stop_in_background)
        other.start_server()
        stranger = other.request("POST", "/users", {"username": unique_name(), "password": "pw"})
        self.assertEqual(stranger.status, 201, stranger.body)
        self.assertEqual(stranger.json["user"]["id"], 1)
        self.assertUnauthorized(self.request("GET", "/users/me", token=stranger.json["token"]))


class WeakSecretTest(BoundedTestCase):
    """A JWT_SECRET shorter than 32 bytes (RFC 7518 section 3.2) refuses to start.
    (No embedded worker: no report is made, and a server starts faster without.)"""

    def start_with_secret(self, secret):
        service = LiveService(JWT_SECRET=secret, EMBEDDED_WORKER="off")
        self.addCleanup(service.stop_in_background)
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
        service = LiveService(JWT_SECRET="s" * 32, EMBEDDED_WORKER="off")
        self.addCleanup(service.stop_in_background)
        service.start_server()
        self.assertEqual(service.request("GET", "/healthz").status, 200)


class TokenClaimsTest(unittest.TestCase):
    """auth.issue_token in-process, with config's JWT_SECRET and JWT_TTL set
    as a server would have them: the claims, and the signature."""

    secret = "in-process-secret-" + "s" * 32

    def issue(self, user_id=7, version=0, ttl=86400):
        user = SimpleNamespace(id=user_id, token_version=version)
        with (
            mock.patch.object(config, "JWT_SECRET", self.secret),
            mock.patch.object(config, "JWT_TTL", ttl),
        ):
            auth.secret.cache_clear()  # the secret is read once per process
            try:
                return auth.issue_token(user)
            finally:
                auth.secret.cache_clear()

    def test_a_token_is_hs256_signed_with_jwt_secret(self):
        token = self.issue()
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")
        jwt.decode(token, self.secret, algorithms=["HS256"])  # the signature holds
        with self.assertRaises(jwt.InvalidSignatureError):
            jwt.decode(token, "another-secret-" + "s" * 32, algorithms=["HS256"])

    def test_claims_are_sub_as_a_string_iat_exp_jwt_ttl_later_and_the_users_ver(self):
        before = int(time.time())
        claims = jwt.decode(self.issue(42, version=3, ttl=120), self.secret, algorithms=["HS256"])
        self.assertEqual(claims["sub"], "42")
        self.assertIs(type(claims["iat"]), int)
        self.assertTrue(before <= claims["iat"] <= time.time(), claims)
        self.assertEqual(claims["exp"] - claims["iat"], 120)
        self.assertIs(type(claims["ver"]), int)
        self.assertEqual(claims["ver"], 3)


if __name__ == "__main__":
    unittest.main()
