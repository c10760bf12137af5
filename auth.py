"""Who is calling: password hashes, login throttling, JWTs, the current user."""

import base64
import hashlib
import hmac
import os
import time
from functools import cache, lru_cache

import jwt

import config
import database
import limits
import models
from responses import ApiError
from serving import USER_ID_KEY
from validation import USER_FIELDS

# OWASP's minimum for scrypt, in the variant that needs 16 MiB per hash
# (128 * N * r bytes): eight logins at once stay well inside a small machine.
SCRYPT_R, SCRYPT_P = 8, 5


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def _scrypt(password, salt, n, r, p):
    # surrogatepass: a JSON string may hold a lone surrogate; hash it, never crash.
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r,
        dklen=32,
    )


def hash_password(password):
    """A self-describing string, so that the cost can be raised later."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, config.SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${config.SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password, stored):
    _, n, r, p, salt, digest = stored.split("$")
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


@lru_cache(maxsize=1)
def _hash_of_nobody():
    return hash_password("no user has this password")


def spend_one_hash(password):
    """What checking a password costs, for a user who does not exist."""
    password_matches(password, _hash_of_nobody())


def check_login(db, username, password):
    """The user for this pair, or None. An unknown name costs one hash, as a wrong password does."""
    user = models.find_user_by_name(db, username)
    if user is None:
        spend_one_hash(password)
        return None
    return user if password_matches(password, user.password_hash) else None


# Login throttling: this many failures for one username within the window
# (300 s; config.LOGIN_FAILURE_WINDOW, which only the tests shorten).
MAX_FAILURES, FAILURE_WINDOW = 10, config.LOGIN_FAILURE_WINDOW
# A check is a hash and two short transactions, each of which may wait for
# the database (up to 30 s on SQLite): an attempt older than this was left
# by a process that stopped mid-check, and no longer counts.
ATTEMPT_TIMEOUT = 120
# While attempts in flight fill the limit, a login waits for them to settle
# (they may yet succeed), polling this often, for at most this long: then it
# is a 503 to try again, for a waiting login holds a Waitress thread.
SETTLE_POLL, SETTLE_WAIT = 0.02, 0.25


def _login_room(db, username):
    """0 when a login may begin; seconds to wait when failures throttle the
    username; None while attempts in flight fill what the failures leave."""
    now = time.time()
    # Failures first: an attempt settling between the two reads is then
    # counted by neither (too few, so writing re-checks), never by both.
    failures = models.recent_login_failures(db, username, now - FAILURE_WINDOW)
    if len(failures) >= MAX_FAILURES:
        # The window opens again when the oldest failure that still counts expires.
        return max(1, int(failures[MAX_FAILURES - 1] + FAILURE_WINDOW - now) + 1)
    in_flight = models.login_attempts_in_flight(db, username, now - ATTEMPT_TIMEOUT)
    return None if len(failures) + in_flight >= MAX_FAILURES else 0


def log_in(username, password):
    """The user for this pair, or None for a bad one; ApiError 429 while the
    username is throttled, 503 when the hashing budget or attempts in flight
    leave no room. Only a checked, wrong pair counts as a failed login."""
    if not USER_FIELDS["username"].accepts(username):
        with limits.hash_budget.held():
            spend_one_hash(password)  # no such user can exist; answer as slowly
        return None
    deadline = time.monotonic() + SETTLE_WAIT
    while True:
        # Reads only, before the budget: a throttled username gets its 429
        # however busy the budget is, and no slot is held while attempts in
        # flight settle.
        wait_for_room(username, deadline)
        # The budget before the attempt is written: a login it refuses has
        # written nothing. (Recording the attempt first cost a refused login
        # two writes: under a login flood, reads fell to 0.18-0.28x of their
        # rate alone, in the benchmark's abuse section.)
        with limits.hash_budget.held():
            attempt = start_login_attempt(username)
            if attempt is not None:
                # Should this fail (the database), the attempt is left in flight, and
                # stops counting after ATTEMPT_TIMEOUT: it is never taken for a failure.
                with database.reading() as db:
                    user = check_login(db, username, password)
                break
        # Attempts begun meanwhile took the room: let them settle, till the deadline.
        if time.monotonic() > deadline:
            raise _busy(username)
        time.sleep(SETTLE_POLL)
    end_login_attempt(username, attempt, failed=user is None)
    return user


def _throttled(username, wait):
    return ApiError(
        429,
        f"Too many failed logins for '{username}'; try again in {wait} seconds.",
        Retry_After=wait,
    )


def _busy(username):
    # Not a throttle (failures may stay under ten): busy, so try again soon.
    # An attempt of a process that died mid-check counts a while yet.
    return ApiError(
        503,
        f"Other logins for '{username}' are being checked; try again in a moment.",
        Retry_After=1,
    )


def wait_for_room(username, deadline):
    """Returns when a login of username may begin; ApiError 429 while it is
    throttled, 503 when attempts in flight still fill the limit at deadline
    (time.monotonic()).

    A right password is refused only after ten failures: while attempts in
    flight fill the limit, this waits for them to settle (they may yet succeed).
    It only reads: a flood of throttled logins writes nothing.
    """
    while True:
        with database.reading() as db:
            wait = _login_room(db, username)
        if wait == 0:
            return
        if wait is not None:
            raise _throttled(username, wait)
        if time.monotonic() > deadline:
            raise _busy(username)
        time.sleep(SETTLE_POLL)


def start_login_attempt(username):
    """The attempt, recorded in flight; ApiError 429 if the username is now
    throttled, None if attempts in flight now fill the limit. They count
    toward it, so that guesses sent at once cannot all get in under it:
    counting and adding one is a single write transaction with the username
    locked."""
    with database.writing() as db:
        models.lock_logins_of(db, username)
        wait = _login_room(db, username)
        if wait == 0:
            return models.begin_login_attempt(
                db, username, forget_before=time.time() - ATTEMPT_TIMEOUT
            )
    if wait is not None:
        raise _throttled(username, wait)
    return None


def end_login_attempt(username, attempt, failed):
    """Settles an attempt: a failure, or nothing."""
    with database.writing() as db:
        # Locked like the count: _login_room reads failures and attempts in two
        # statements, and on PostgreSQL each sees the latest commit.
        models.lock_logins_of(db, username)
        models.end_login_attempt(db, attempt)
        if failed:
            models.record_login_failure(db, username, forget_before=time.time() - FAILURE_WINDOW)


# Tokens


@cache
def secret():
    """JWT_SECRET, or the one generated into the data folder the first time it is needed."""
    if config.JWT_SECRET:
        return config.JWT_SECRET
    path = config.DATA_DIR / "jwt_secret"
    if not path.exists():
        config.DATA_DIR.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".jwt_secret.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(base64.urlsafe_b64encode(os.urandom(32)).decode("ascii"))
        try:
            os.link(draft, path)  # atomic: of two processes starting at once, one wins
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def issue_token(user):
    now = int(time.time())
    claims = {
        "sub": str(user.id),
        "iat": now,
        "exp": now + config.JWT_TTL,
        "ver": user.token_version,
    }
    return jwt.encode(claims, secret(), algorithm="HS256")


def _unauthorized(message):
    return ApiError(401, message, WWW_Authenticate="Bearer")


def token_no_longer_valid():
    """For a token whose user is gone, or whose password changed since it was issued."""
    return _unauthorized("The token is no longer valid; log in again.")


def current_user(db, request, lock=False):
    """The user whose valid token came with the request; 401 for anything else.

    lock=True (in a write) keeps the user as checked until the write commits."""
    # From the environ as sent (latin-1): Bottle's get_header fails on non-UTF-8 bytes.
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(
            "This needs an Authorization: Bearer <token> header; get a token from POST /login."
        )
    try:
        claims = jwt.decode(
            token.strip(),
            secret(),
            algorithms=["HS256"],
            options={"require": ["exp", "iat", "sub", "ver"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired; log in again.") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("The token is not valid; log in again.") from None
    sub, version = claims["sub"], claims["ver"]
    if not (sub.isascii() and sub.isdigit()) or type(version) is not int:
        raise _unauthorized("The token is not valid; log in again.")
    user = models.find_user(db, int(sub), lock)
    if user is None or user.token_version != version:
        raise token_no_longer_valid()
    request.environ[USER_ID_KEY] = user.id
    return user
