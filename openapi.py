"""The OpenAPI 3.1 document served at /openapi.json.

Request schemas are built from the same rules that validation.py enforces,
so the document cannot drift from the server.
"""

from models import MAX_ID
from validation import (
    PASSWORD_CHANGE_FIELDS,
    READ_ONLY_USER_FIELDS,
    STATS_FIELDS,
    USER_FIELDS,
    object_schema,
)


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema):
    return {"application/json": {"schema": schema}}


def answer(description, schema=None, headers=()):
    result = {"description": description}
    if schema is not None:
        result["content"] = json_content(schema)
    if headers:
        result["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return result


ERROR = ref("Error")
# Every route checks the body's size first, whether it reads the body or not.
TOO_LARGE = answer("Body over 1 MiB", ERROR)
BAD_REQUEST = answer("Malformed body, or a field breaks its rule (the message names it)", ERROR)
UNAUTHORIZED = answer("Missing, invalid or expired token", ERROR, ["WWW-Authenticate"])
FORBIDDEN = answer("The token belongs to another user", ERROR)
NOT_FOUND = answer("No such user", ERROR)
BEARER = [{"bearer": []}]
ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A positive integer below 2**63; any other id is a 404",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
# What the server writes, exactly.
USER_PATH = "/users/[1-9][0-9]{0,18}"
JWT = {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"}
# format binary: bytes, which generated clients hand over as a file.
PDF = {"type": "string", "format": "binary", "contentMediaType": "application/pdf"}


# Under pressure (CONTRACT.md): the hashing budget, and per-client rates.
BUSY_HASHING = answer(
    "The server is busy hashing other passwords (or checking other logins of this "
    "username); nothing was created or changed, and it is not a failed login: retry after "
    "Retry-After seconds",
    ERROR,
    ["Retry-After"],
)
TOO_MANY_SIGN_UPS = answer(
    "Too many sign-ups from this client address (SIGNUP_RATE a minute)", ERROR, ["Retry-After"]
)


def path_string(suffix=""):
    return {"type": "string", "pattern": f"^{USER_PATH}{suffix}$"}


read_only = {name: {"readOnly": True} for name in sorted(READ_ONLY_USER_FIELDS)}
user_writable = {name: rule for name, rule in USER_FIELDS.items() if name != "password"}
user_schema = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": MAX_ID, "readOnly": True},
        **{name: rule.schema() for name, rule in user_writable.items()},
        "self": {**path_string(), "readOnly": True},
        "stats": {**path_string("/stats"), "readOnly": True},
        "pdf": {**path_string("/pdf"), "readOnly": True},
    },
    "required": ["id", *user_writable, "self", "stats", "pdf"],
    "additionalProperties": False,
}
user_update = object_schema(USER_FIELDS | PASSWORD_CHANGE_FIELDS, extra=read_only)
user_update["dependentRequired"] = {
    "password": ["current_password"],
    "current_password": ["password"],
}
stats_schema = object_schema(STATS_FIELDS, required=list(STATS_FIELDS))

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["success", "message"],
        "additionalProperties": False,
        "properties": {"success": {"const": False}, "message": {"type": "string", "minLength": 1}},
    },
    "User": user_schema,
    "UserCreate": object_schema(USER_FIELDS, required=["username", "password"], extra=read_only),
    "UserUpdate": user_update,
    "UserCreated": {
        "type": "object",
        "required": ["user", "token"],
        "additionalProperties": False,
        "properties": {"user": ref("User"), "token": JWT},
    },
    "Stats": stats_schema,
    "StatsUpdate": object_schema(STATS_FIELDS),
    # Any non-empty strings are accepted here (a name no user can have is a 401, as
    # a wrong password is): only sign-up and changes hold them to the field rules.
    "Login": {
        "type": "object",
        "required": ["username", "password"],
        "additionalProperties": False,
        "properties": {
            "username": {"type": "string", "minLength": 1},
            "password": {"type": "string", "minLength": 1},
        },
    },
    "LoginOk": {
        "type": "object",
        "required": ["success", "token", "user"],
        "additionalProperties": False,
        "properties": {"success": {"const": True}, "token": JWT, "user": path_string()},
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "broker"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["ok", "down"]},
            "database": {"enum": ["ok", "down"]},
            "broker": {"enum": ["ok", "down"]},
        },
    },
    "ReportQueued": {
        "type": "object",
        "required": ["url", "status"],
        "additionalProperties": False,
        "properties": {"url": path_string("/pdf"), "status": {"const": "pending"}},
    },
    "ReportPending": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "pending"}},
    },
}

# What Swagger UI at /docs shows, and fills "Try it out" with; without them it
# makes values up from the patterns, unreadable ones. Each is valid for its schema.
USER_EXAMPLE = {
    "id": 1,
    "username": "user1",
    "email": "user1@ggmail.com",
    "gender": "male",
    "profile_pic": None,
    "self": "/users/1",
    "stats": "/users/1/stats",
    "pdf": "/users/1/pdf",
}
TOKEN_EXAMPLE = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
EXAMPLES = {
    "Error": {"success": False, "message": "There is no user 1."},
    "User": USER_EXAMPLE,
    "UserCreate": {
        "username": "user1",
        "password": "s3cret",
        "email": "user1@ggmail.com",
        "gender": "male",
    },
    "UserUpdate": {"profile_pic": "https://example.com/me.png"},
    "UserCreated": {"user": USER_EXAMPLE, "token": TOKEN_EXAMPLE},
    "Stats": {"loss_count": 4, "session_count": 12, "total_time": 5000, "victory_count": 8},
    "StatsUpdate": {"victory_count": 9, "session_count": 13},
    "Login": {"username": "user1", "password": "s3cret"},
    "LoginOk": {"success": True, "token": TOKEN_EXAMPLE, "user": "/users/1"},
    "Health": {"status": "ok", "database": "ok", "broker": "ok"},
    "ReportQueued": {"url": "/users/1/pdf", "status": "pending"},
    "ReportPending": {"status": "pending"},
}
for _name, _example in EXAMPLES.items():
    SCHEMAS[_name]["examples"] = [_example]

# Each is sent on every response that lists it, except Link (only when more users follow).
HEADERS = {
    "Location": {
        "schema": {"type": "string", "pattern": f"^{USER_PATH}(/pdf)?$"},
        "required": True,
        "description": "Where the resource is",
    },
    "Link": {
        "schema": {
            "type": "string",
            "pattern": r'^</users\?limit=[0-9]+&offset=[0-9]+>; rel="next"$',
        },
        "description": 'The next page, rel="next", when more users follow',
    },
    "X-Total-Count": {
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
        "description": "Number of users in all",
    },
    "WWW-Authenticate": {"schema": {"const": "Bearer"}, "required": True, "description": "Bearer"},
    "Preference-Applied": {
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
        "description": "wait=N when the request waited on the report (Prefer: wait=N)",
    },
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 1},
        "required": True,
        "description": "Seconds to wait",
    },
    "Cache-Control": {
        "schema": {"const": "no-store"},
        "required": True,
        "description": "no-store: carries a token",
    },
    "ETag": {
        "schema": {"type": "string", "pattern": '^"report-[1-9][0-9]*"$'},
        "required": True,
        "description": "Identifies this report",
    },
    "Last-Modified": {
        "schema": {"type": "string"},
        "required": True,
        "description": "When it was made (an HTTP date)",
    },
    "Content-Disposition": {
        "schema": {"type": "string", "pattern": r'^inline; filename="[A-Za-z0-9_.-]+_stats\.pdf"$'},
        "required": True,
        "description": 'inline; filename="<username>_stats.pdf"',
    },
}

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
                "413": TOO_LARGE,
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
                    "413": TOO_LARGE,
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
                    "413": TOO_LARGE,
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
                "413": TOO_LARGE,
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
                "413": TOO_LARGE,
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
    "tags": TAGS,
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "headers": HEADERS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
}
