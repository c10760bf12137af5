"""The OpenAPI 3.1 document served at /openapi.json: every operation, with
its operationId, summary and tag. The schemas, examples, headers and shared
answers they refer to are openapi_schemas.py's.
"""

from functools import cache

from models import MAX_ID
from openapi_schemas import (
    BAD_REQUEST,
    BEARER,
    BUSY_HASHING,
    ERROR,
    FORBIDDEN,
    HEADERS,
    ID_PARAMETER,
    NOT_FOUND,
    PDF,
    SCHEMAS,
    TOO_LARGE,
    TOO_MANY_SIGN_UPS,
    UNAUTHORIZED,
    answer,
    json_content,
    ref,
)
from responses import to_json

PATHS = {
    "/users": {
        "get": {
            "summary": "List users, ordered by id",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID, "default": 0},
                },
            ],
            "responses": {
                "200": answer(
                    "A page of users",
                    {"type": "array", "items": ref("User")},
                    ["X-Total-Count", "Link"],
                ),
                "400": answer("Bad limit or offset", ERROR),
            },
        },
        "post": {
            "summary": "Sign up",
            "requestBody": {"required": True, "content": json_content(ref("UserCreate"))},
            "responses": {
                "201": answer(
                    "Created, with a token", ref("UserCreated"), ["Location", "Cache-Control"]
                ),
                "400": BAD_REQUEST,
                "409": answer("Username taken", ERROR),
                "429": TOO_MANY_SIGN_UPS,
                "503": BUSY_HASHING,
            },
        },
    },
    "/users/me": {
        "get": {
            "summary": "The token's user",
            "security": BEARER,
            "responses": {"200": answer("The user", ref("User")), "401": UNAUTHORIZED},
        },
    },
    "/users/{id}": {
        "parameters": [ID_PARAMETER],
        "get": {
            "summary": "One user",
            "responses": {"200": answer("The user", ref("User")), "404": NOT_FOUND},
        },
        **{
            verb: {
                "summary": "Change the fields sent (a password change needs "
                "current_password and revokes older tokens)",
                "security": BEARER,
                "requestBody": {"required": True, "content": json_content(ref("UserUpdate"))},
                "responses": {
                    "200": answer("The updated user", ref("User")),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "403": answer("Another user's token, or a wrong current_password", ERROR),
                    "404": NOT_FOUND,
                    "409": answer("Username taken", ERROR),
                    "503": BUSY_HASHING,
                },
            }
            for verb in ("put", "patch")
        },
        "delete": {
            "summary": "Delete the user, their stats and reports",
            "security": BEARER,
            "responses": {
                "204": {"description": "Deleted"},
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
            },
        },
    },
    "/users/{id}/stats": {
        "parameters": [ID_PARAMETER],
        "get": {
            "summary": "A user's stats",
            "security": BEARER,
            "responses": {
                "200": answer("The stats", ref("Stats")),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
        **{
            verb: {
                "summary": "Change the stats sent",
                "security": BEARER,
                "requestBody": {"required": True, "content": json_content(ref("StatsUpdate"))},
                "responses": {
                    "200": answer("The updated stats", ref("Stats")),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "403": FORBIDDEN,
                    "404": NOT_FOUND,
                },
            }
            for verb in ("put", "patch")
        },
    },
    "/users/{id}/pdf": {
        "parameters": [ID_PARAMETER],
        "post": {
            "summary": "Queue a new report of the user's stats",
            "security": BEARER,
            "responses": {
                "202": answer(
                    "Queued, or already queued and not yet started (a job "
                    "being drawn has read the data: a new one is queued)",
                    ref("ReportQueued"),
                    ["Location"],
                ),
                "401": UNAUTHORIZED,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "503": answer(
                    "The broker cannot take the job; nothing was queued", ERROR, ["Retry-After"]
                ),
            },
        },
        "get": {
            "summary": "The newest finished report",
            "security": BEARER,
            "parameters": [
                {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                {"name": "If-Modified-Since", "in": "header", "schema": {"type": "string"}},
                {
                    "name": "Prefer",
                    "in": "header",
                    "description": "wait=N (RFC 7240; N whole seconds, at most 10): while the "
                    "first report is being made, answer as soon as it is done (200, or the "
                    "failure), or after N seconds with the 202. At most MAX_WAITING requests "
                    "wait at once; beyond them the 202 comes at once.",
                    "schema": {"type": "string", "examples": ["wait=10"]},
                },
            ],
            "responses": {
                "200": {
                    "description": "The report",
                    # The server sends application/pdf. openapi-python-client reads no
                    # such media type (it warns and drops the response): the
                    # octet-stream entry, the same bytes, makes its clients give a File.
                    "content": {
                        "application/pdf": {"schema": PDF},
                        "application/octet-stream": {"schema": PDF},
                    },
                    "headers": {
                        name: {"$ref": f"#/components/headers/{name}"}
                        for name in (
                            "ETag",
                            "Last-Modified",
                            "Content-Disposition",
                            "Preference-Applied",
                        )
                    },
                },
                "202": answer(
                    "The first report is still being made; Retry-After is the server's "
                    "estimate of when it will be ready",
                    ref("ReportPending"),
                    ["Retry-After", "Preference-Applied"],
                ),
                # Bottle drops Last-Modified from a 304.
                "304": {
                    "description": "Unchanged since the ETag or date given",
                    "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                },
                "401": UNAUTHORIZED,
                "404": answer("No such user, or no report was ever requested", ERROR),
                "409": answer(
                    "The last report failed and none exists; POST again",
                    ERROR,
                    ["Preference-Applied"],
                ),
            },
        },
    },
    "/login": {
        "post": {
            "summary": "Exchange a username and password for a token",
            "requestBody": {"required": True, "content": json_content(ref("Login"))},
            "responses": {
                "200": answer("Logged in", ref("LoginOk"), ["Cache-Control"]),
                "400": answer(
                    "Bad username or password (missing or not a non-empty string)", ERROR
                ),
                "401": answer("Bad username or password", ERROR, ["WWW-Authenticate"]),
                "429": answer(
                    "Too many failed logins for this username, or too many logins from "
                    "this client address (LOGIN_RATE a minute)",
                    ERROR,
                    ["Retry-After"],
                ),
                "503": BUSY_HASHING,
            },
        },
    },
    "/healthz": {
        "get": {
            "summary": "Is the service and what it needs up",
            "responses": {
                "200": answer("All up", ref("Health")),
                "503": answer("A part is down", ref("Health")),
            },
        },
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": answer("OpenAPI 3.1", {"type": "object"})},
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics: counts and durations, never user data",
            "responses": {
                "200": {
                    "description": "The Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": answer("METRICS is off", ERROR),
            },
        },
    },
}

# Each operation's name in generated clients (operationId) and its group (tag).
# PUT is named put*, not replace*: like PATCH, it changes only the fields sent.
OPERATION_NAMES = {
    ("/users", "get"): ("listUsers", "users"),
    ("/users", "post"): ("createUser", "users"),
    ("/users/me", "get"): ("getMe", "users"),
    ("/users/{id}", "get"): ("getUser", "users"),
    ("/users/{id}", "put"): ("putUser", "users"),
    ("/users/{id}", "patch"): ("updateUser", "users"),
    ("/users/{id}", "delete"): ("deleteUser", "users"),
    ("/users/{id}/stats", "get"): ("getStats", "stats"),
    ("/users/{id}/stats", "put"): ("putStats", "stats"),
    ("/users/{id}/stats", "patch"): ("updateStats", "stats"),
    ("/users/{id}/pdf", "post"): ("requestReport", "reports"),
    ("/users/{id}/pdf", "get"): ("getReport", "reports"),
    ("/login", "post"): ("logIn", "login"),
    ("/healthz", "get"): ("getHealth", "service"),
    ("/openapi.json", "get"): ("getOpenApi", "service"),
    ("/metrics", "get"): ("getMetrics", "service"),
}
TAGS = [
    {"name": "users", "description": "Sign up, and read, change or delete users"},
    {"name": "stats", "description": "A user's game statistics"},
    {"name": "reports", "description": "PDF reports of a user's stats, drawn by a worker"},
    {"name": "login", "description": "Tokens for the bearer scheme"},
    {"name": "service", "description": "Health, metrics and this document"},
]

# Every operation may meet the 413 of a body over 1 MiB (conventions.py).
for _path, _operations in PATHS.items():
    for _verb, _operation in _operations.items():
        if _verb != "parameters":
            _operation["responses"].setdefault("413", TOO_LARGE)
            _name, _tag = OPERATION_NAMES[_path, _verb]  # a KeyError: a new operation unnamed
            _operation.update(operationId=_name, tags=[_tag])

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "Game stats API",
        "version": "1.0.0",
        "description": "Users, their game statistics, and PDF reports of them. "
        "Besides the operations below: OPTIONS on any of these paths "
        "is 204 with Allow, HEAD is GET without the body, and any "
        "other method is 405 with Allow. Request bodies are read as "
        "JSON whatever their Content-Type.",
    },
    # Relative, so right on any host and port: OpenAPI 3.1 reads a relative
    # server URL against the document's own location (this service's root).
    "servers": [{"url": "/", "description": "This service, where this document was read"}],
    "tags": TAGS,
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "headers": HEADERS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
}


@cache
def document_json():
    """The document in the one JSON style, made once: it never changes."""
    return to_json(DOCUMENT)
