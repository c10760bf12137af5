"""CONTRACT.md, Users (with Password changes): sign-up, reading, listing,
updating and deleting users, over HTTP against the real server.

Also how users are stored (only as salted, slow scrypt hashes) and what many
clients at once do to them (8 Waitress threads: no 500, no "database is
locked", ids never reused, counts that match the page). The rules of each
field (validation.USER_FIELDS) are tested in-process too, at their bounds.
"""

import base64
import hashlib
import json
import re
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from urllib.parse import quote

from sqlalchemy import text

import validation
from responses import ApiError
from testing import (
    LONE_SURROGATE,
    NO_SUCH_ID,
    ZERO_STATS,
    ApiTestCase,
    names_word,
    token_version,
    unique_name,
)


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
        padded_or_wide = [quote(" 5"), quote("５")]
        bad = {
            "limit": ["0", "1001", "-1", "abc", "1.5", "", "1e2", "0x10", "+5", *padded_or_wide],
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


class PasswordStorageTest(ApiTestCase):
    """With the production cost of a hash (SCRYPT_N as in production)."""

    service_env = {**ApiTestCase.service_env, "SCRYPT_N": str(2**14)}

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


class UsersAtOnceTest(ApiTestCase):
    """Many requests at once on 8 Waitress threads: no 500 and no
    "database is locked" (ApiTestCase's tearDown reads the log)."""

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


class UserFieldRulesTest(unittest.TestCase):
    """validation.USER_FIELDS in-process: each rule of CONTRACT.md, Users, at
    its bounds, and a refusal that names its field."""

    def assertRule(self, field, accepted, refused):
        rule = validation.USER_FIELDS[field]
        for value in accepted:
            with self.subTest(field=field, accepted=value):
                self.assertTrue(rule.accepts(value))
        for value in refused:
            with self.subTest(field=field, refused=value):
                self.assertFalse(rule.accepts(value))

    def test_username_is_1_to_32_letters_digits_underscores_dashes_or_dots(self):
        self.assertRule(
            "username",
            accepted=["a", "Z", "7", "A_b-c.1", "x" * 32],
            refused=["", "x" * 33, "a b", "ümlaut", "a@b", "a\nb", "a" + LONE_SURROGATE, None],
        )

    def test_password_is_1_to_256_characters_of_any_kind(self):
        self.assertRule(
            "password",
            accepted=["p", "p" * 256, "pass word ü ✓ 😀"],
            refused=["", "p" * 257, "a" + LONE_SURROGATE, None, 5],
        )

    def test_email_is_null_or_an_address_of_at_most_254_characters(self):
        self.assertRule(
            "email",
            accepted=[None, "a@b.co", 'q"uote\\back@example.com', email_of_length(254)],
            refused=["", "a@b", "a b@c.de", "@b.co", email_of_length(255), 5],
        )

    def test_gender_is_null_or_at_most_32_printable_characters(self):
        self.assertRule(
            "gender",
            accepted=[None, "", "female", "g" * 32, "Ωμέγα ✓"],
            refused=["g" * 33, "a\x00b", "a\nb", "a\x7f", 5],
        )

    def test_profile_pic_is_null_or_an_http_or_https_url_of_at_most_2048_characters(self):
        longest = "https://example.com/" + "p" * (2048 - len("https://example.com/"))
        self.assertRule(
            "profile_pic",
            accepted=[None, "http://example.com/p.png", "HTTPS://example.com", longest],
            refused=["ftp://example.com/p", "//example.com/p", "https://", longest + "p", "x"],
        )

    def test_every_value_the_http_tests_send_as_invalid_is_refused_by_its_rule(self):
        for field, value in INVALID_USER_FIELDS:
            with self.subTest(field=field, value=value):
                self.assertFalse(validation.USER_FIELDS[field].accepts(value))

    def test_a_refused_value_is_a_400_whose_message_names_the_field(self):
        for field, value in INVALID_USER_FIELDS:
            with self.subTest(field=field, value=value):
                with self.assertRaises(ApiError) as caught:
                    validation.checked_fields({field: value}, validation.USER_FIELDS)
                self.assertEqual(caught.exception.status_code, 400)
                message = json.loads(caught.exception.body)["message"]
                self.assertTrue(names_word(message, field), message)


if __name__ == "__main__":
    unittest.main()
