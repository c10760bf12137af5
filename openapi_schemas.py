"""What the operations of /openapi.json refer to: the JSON Schemas of bodies
(built from the same rules that validation.py enforces, so the document
cannot drift from the server), their examples, the headers, and the answers
many operations share."""

from conventions import ID_PATTERN
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
USER_PATH = f"/users/{ID_PATTERN}"
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
