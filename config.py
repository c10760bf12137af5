"""Every setting of the service, read from the environment in this one place. Defaults are those
of CONTRACT.md. A bad value stops the process at start-up with a message naming the variable,
rather than failing later on a request."""

import ipaddress
import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent


def _int(name, default, minimum=0):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def _flag(name, default):
    raw = os.environ.get(name, "").strip().lower()
    if raw and raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise SystemExit(f"{name} must be on or off (1/0, true/false), got {raw!r}")
    return raw in ("1", "true", "yes", "on") if raw else default


def _list(name):  # the comma-separated entries of a variable, without blanks
    return [entry.strip() for entry in os.environ.get(name, "").split(",") if entry.strip()]


def _network(name, entry):
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise SystemExit(f"{name}: {entry!r} is not an address or CIDR range") from None


HOST = os.environ.get("HOST", "127.0.0.1")
PORT = _int("PORT", 5000)
WEB_THREADS = _int("WEB_THREADS", 8, minimum=1)

# Where the generated JWT secret lives (the default SQLite file is data/ of the project).
DATA_DIR = Path(os.environ.get("DATA_DIR") or PROJECT_DIR / "data")
DATABASE_URL = os.environ.get("DATABASE_URL") or "sqlite:///data/app.db"

BROKER_URL = os.environ.get("BROKER_URL") or "memory://"
# kombu's in-process broker: the server's own memory, so the worker must be in it.
IN_PROCESS_BROKER = BROKER_URL.startswith("memory://")
# Lets several deployments (or test runs) share one RabbitMQ without mixing jobs.
REPORT_QUEUE = os.environ.get("REPORT_QUEUE") or "reports"
EMBEDDED_WORKER = _flag("EMBEDDED_WORKER", IN_PROCESS_BROKER)

JWT_SECRET = os.environ.get("JWT_SECRET", "")
JWT_SECRET_MIN_BYTES = 32  # RFC 7518 section 3.2: an HS256 key has the hash's 256 bits or more
_secret_bytes = len(JWT_SECRET.encode("utf-8", "surrogateescape"))
if 0 < _secret_bytes < JWT_SECRET_MIN_BYTES:
    raise SystemExit(
        f"JWT_SECRET must be at least {JWT_SECRET_MIN_BYTES} bytes long (RFC 7518 section 3.2), "
        f"got {_secret_bytes}. Leave it unset to have one "
        "generated, or make one: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )
JWT_TTL = _int("JWT_TTL", 86400, minimum=1)

CORS_ORIGINS = frozenset(origin.rstrip("/") for origin in _list("CORS_ORIGINS"))

# scrypt's cost N: OWASP's minimum; only the test suite lowers it, for its many sign-ups.
SCRYPT_N = _int("SCRYPT_N", 2**14, minimum=2)
if SCRYPT_N & (SCRYPT_N - 1):
    raise SystemExit(f"SCRYPT_N must be a power of two, got {SCRYPT_N}")

# Seconds during which 10 failed logins throttle a username (CONTRACT.md); tests shorten it.
LOGIN_FAILURE_WINDOW = _int("LOGIN_FAILURE_WINDOW", 300, minimum=1)

# Seconds after which a pending report's job is taken for lost, and published again.
REPUBLISH_AFTER = _int("REPUBLISH_AFTER", 60, minimum=1)

# Under pressure (CONTRACT.md): what one client, or a flood, may take.
HASH_CONCURRENCY = _int("HASH_CONCURRENCY", max(1, (os.cpu_count() or 2) // 2), minimum=1)
SIGNUP_RATE = _int("SIGNUP_RATE", 60, minimum=1)  # per client address per minute
LOGIN_RATE = _int("LOGIN_RATE", 120, minimum=1)
HEADER_TIMEOUT = _int("HEADER_TIMEOUT", 10, minimum=1)  # seconds
# GET requests waiting on a report at once (Prefer: wait=N): each holds a thread.
MAX_WAITING = _int("MAX_WAITING", WEB_THREADS // 2)

# Peers whose X-Forwarded-For names the client (addresses or CIDR ranges).
TRUSTED_PROXIES = tuple(_network("TRUSTED_PROXIES", entry) for entry in _list("TRUSTED_PROXIES"))

# Every process's log lines on stderr (the access log is serving.py's own).
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# GET /metrics (on by default); a worker process's own metrics port (0: none).
METRICS = _flag("METRICS", True)
WORKER_METRICS_PORT = _int("WORKER_METRICS_PORT", 0)
