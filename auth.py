"""Who is calling: password hashes, login throttling, JWTs, the current user."""

import base64
import hashlib
import hmac
import os
import time
import uuid
from contextlib import nullcontext, suppress
from functools import cache

import jwt
from sqlalchemy import bindparam, delete, exists, insert, select

import config
import database
import models
import throttle
from database import Statement
from models import possible_id, revoked_tokens, users
from responses import ApiError
from validation import USER_FIELDS

USER_ID_KEY = "stats_api.user_id"  # where current_user leaves the caller's id in the environ

# OWASP's minimum for scrypt, in the variant that needs 16 MiB per hash
# (128 * N * r bytes): eight logins at once stay well inside a small machine.
SCRYPT_R, SCRYPT_P = 8, 5


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def _scrypt(password, salt, n, r, p):
    # surrogatepass: a JSON string may hold a lone surrogate; hash it, never crash.
    encoded = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(encoded, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password):
    """A self-describing string, so that the cost can be raised later."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, config.SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${config.SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password, stored):
    _, n, r, p, salt, digest = stored.split("$")
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


@cache
def _hash_of_nobody():
    return hash_password("no user has this password")


def spend_one_hash(password):
    """What checking a password costs, for a user who does not exist."""
    password_matches(password, _hash_of_nobody())


# At most 10 failed logins per username in the window (300 s; the tests set a shorter one).
MAX_FAILURES, FAILURE_WINDOW = 10, config.LOGIN_FAILURE_WINDOW
FAILURES = throttle.Throttle("login-failure", MAX_FAILURES, FAILURE_WINDOW, pending=True)


def log_in(username, password, hashing=nullcontext):
    """The user for this pair, or None; ApiError 429 while the username is throttled, 503
    while logins being checked fill what its failures leave. hashing() is held around the hash.
    One transaction counts the username's failures and takes a slot for this login as a pending
    failure before the hash, so that logins sent at once count each other; the hash settles it."""
    if not USER_FIELDS["username"].accepts(username):
        with hashing():
            spend_one_hash(password)  # no such user can exist; answer as slowly
        return None

    def too_many(wait):
        message = f"Too many failed logins for '{username}'; try again in {wait} seconds."
        return ApiError(429, message, Retry_After=wait)

    # Not a throttle (failures may stay under ten): busy, so try again soon.
    checking = f"Other logins for '{username}' are being checked; try again in a moment."
    slot, user = FAILURES.take(
        username,
        refusal=too_many,
        busy=lambda: ApiError(503, checking, Retry_After=1),
        then=lambda db: models.find_user_by_name(db, username),
    )
    matched = None
    try:
        with hashing():
            # An unknown name costs one hash, as a wrong password does.
            stored = user.password_hash if user is not None else _hash_of_nobody()
            matched = password_matches(password, stored) and user is not None
    finally:  # a login never checked (the budget was full) is no failure
        with database.writing() as db:
            FAILURES.settle(db, username, slot, happened=matched is False)
    return user if matched else None


@cache
def secret():
    """JWT_SECRET, or the one generated into the data folder the first time it is needed."""
    if config.JWT_SECRET:
        return config.JWT_SECRET
    path = config.DATA_DIR / "jwt_secret"
    if not path.exists():
        config.DATA_DIR.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".jwt_secret.{os.getpid()}")
        draft.touch(mode=0o600)  # for this user's eyes only, from the start
        draft.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode("ascii"))
        try:
            with suppress(FileExistsError):  # atomic: of two processes starting at once, one wins
                os.link(draft, path)
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def issue_token(user):
    now = int(time.time())
    expires = now + config.JWT_TTL
    claims = {"sub": str(user.id), "iat": now, "exp": expires, "ver": user.token_version}
    claims["jti"] = uuid.uuid4().hex  # what POST /logout revokes
    return jwt.encode(claims, secret(), algorithm="HS256")


def _unauthorized(message):
    return ApiError(401, message, WWW_Authenticate="Bearer")


def token_no_longer_valid():
    """For a token whose user is gone, or whose password changed since it was issued."""
    return _unauthorized("The token is no longer valid; log in again.")


# A token's user, and whether the token was revoked: one round trip.
_revoked = exists().where(revoked_tokens.c.jti == bindparam("jti")).label("revoked")
_token_user = select(users, _revoked).where(users.c.id == bindparam("id"))
TOKEN_USER = Statement(_token_user)
TOKEN_USER_LOCKED = Statement(_token_user.with_for_update(key_share=True))  # see models.py
REVOKE = Statement(insert(revoked_tokens).values(jti=bindparam("jti"), expires_at=bindparam("exp")))
FORGET_REVOKED = Statement(
    delete(revoked_tokens).where(revoked_tokens.c.expires_at < bindparam("now"))
)


def current_user(db, request, lock=False):
    """The user whose valid token came with the request; 401 for anything else.
    lock=True (in a write) keeps the user as checked until the write commits."""
    return _token_and_user(db, request, lock)[1]


def _token_and_user(db, request, lock):
    """(the token's claims, its user): see current_user."""
    # From the environ as sent (latin-1): Bottle's get_header fails on non-UTF-8 bytes.
    scheme, _, token = request.environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(
            "This needs an Authorization: Bearer <token> header; get a token from POST /login."
        )
    required = {"require": ["exp", "iat", "sub", "ver", "jti"]}
    try:
        claims = jwt.decode(token.strip(), secret(), algorithms=["HS256"], options=required)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired; log in again.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The token is not valid; log in again.") from None
    sub, version, jti = claims["sub"], claims["ver"], claims["jti"]
    # A jti longer than the revoked_tokens column could not have been revoked.
    well_formed = sub.isascii() and sub.isdigit() and type(version) is int
    if not (well_formed and type(jti) is str and len(jti) <= 64):
        raise _unauthorized("The token is not valid; log in again.")
    statement = TOKEN_USER_LOCKED if lock else TOKEN_USER
    user = statement.first(db, {"id": int(sub), "jti": jti}) if possible_id(int(sub)) else None
    if user is None or user.token_version != version or user.revoked:
        raise token_no_longer_valid()
    request.environ[USER_ID_KEY] = user.id  # for the access log
    return claims, user


def log_out(db, request, everywhere=False):
    """Ends the request's token, or every token of its user (CONTRACT.md, Logging out);
    forgets the revoked tokens that have expired since."""
    claims, user = _token_and_user(db, request, lock=True)
    if everywhere:  # as a password change does: the tokens carry the older version
        models.update_user(db, user.id, {"token_version": users.c.token_version + 1})
    else:
        FORGET_REVOKED.run(db, {"now": time.time()})
        REVOKE.run(db, {"jti": claims["jti"], "exp": claims["exp"]})


def no_such_user(user_id):
    return ApiError(404, f"There is no user {user_id}.")


def user_or_404(db, user_id):
    user = models.find_user(db, user_id)
    if user is None:
        raise no_such_user(user_id)
    return user


def owned_user(db, request, user_id, lock=True):
    """The user at user_id, when the caller's token is theirs: else 401, 404 or 403.
    lock: as in current_user (see models.find_user)."""
    caller = current_user(db, request, lock)
    if caller.id == user_id:
        return caller
    user_or_404(db, user_id)
    raise ApiError(403, "Only the user themself may change this resource.")
