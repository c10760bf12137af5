"""The OpenAPI 3.1 document served at /openapi.json: OPERATIONS, every route of CONTRACT.md
by tag with its operationId (generated clients name their functions after it), summary and
answers; the SCHEMAS, EXAMPLES and HEADERS they refer to. Body schemas are built from
validation.py's rules, so that the document cannot drift from the server."""

from functools import cache

import validation
from conventions import ID_PATTERN
from leaderboard import ORDERS
from models import MAX_ID
from responses import to_json
from validation import STATS_FIELDS, USER_FIELDS, object_schema

STRING = {"type": "string"}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def ref(name, kind="schemas"):
    return {"$ref": f"#/components/{kind}/{name}"}


def string(pattern):
    return {"type": "string", "pattern": pattern}


def user_path(suffix=""):  # as the server writes them
    return string(f"^/users/{ID_PATTERN}{suffix}$")


LINK = r'^</(users\?|leaderboard\?by=[a-z_]+&)limit=[0-9]+&offset=[0-9]+>; rel="next"$'
DISPOSITION = r'^inline; filename="[A-Za-z0-9_.-]+_stats\.pdf"$'
WAIT, COUNT = string("^wait=[0-9]+$"), {"type": "integer", "minimum": 0}
# name: (description, schema). Each is sent on every answer that lists it, but OPTIONAL ones.
HEADERS = {
    "Location": ("Where the resource is", user_path("(/pdf)?")),
    "Link": ('The next page, rel="next", when more follow', string(LINK)),
    "X-Total-Count": ("Number of users in all (on GET /leaderboard: ranked)", COUNT),
    "WWW-Authenticate": ("Bearer", {"const": "Bearer"}),
    "Preference-Applied": ("wait=N when the request waited on the report (Prefer: wait=N)", WAIT),
    "Retry-After": ("Seconds to wait", {"type": "integer", "minimum": 1}),
    "Cache-Control": ("no-store: carries a token", {"const": "no-store"}),
    "ETag": ("Identifies this report", string('^"report-[1-9][0-9]*"$')),
    "Last-Modified": ("When it was made (an HTTP date)", STRING),
    "Content-Disposition": ('inline; filename="<username>_stats.pdf"', string(DISPOSITION)),
}
OPTIONAL = {"Link", "Preference-Applied"}  # when more follow; when the request waited


def answer(spec):
    """(status, response) from "status [body] [header ...]: description". The body: a schema
    ("[User]": an array of them) or one of MEDIA; an error naming none has the Error body."""
    head, description = spec.split(": ", 1)
    status, *names = head.split()
    result = {"description": description}
    bodies = [name for name in names if name not in HEADERS]
    if bodies or status >= "4":
        name = bodies[0] if bodies else "Error"
        items = {"type": "array", "items": ref(name[1:-1])} if name[0] == "[" else ref(name)
        result["content"] = MEDIA.get(name) or {"application/json": {"schema": items}}
    if headers := [name for name in names if name in HEADERS]:
        result["headers"] = {name: ref(name, "headers") for name in headers}
    return status, result


def operation(name_and_summary, *answers, body=None, optional_body=None, **more):
    """An operation from "operationId: summary" ("putX|updateX" for "PUT|PATCH /path"),
    answer()'s specs, the request body's schema name, and more (parameters)."""
    name, summary = name_and_summary.split(": ", 1)
    if body or optional_body:
        content = {"application/json": {"schema": ref(body or optional_body)}}
        more["requestBody"] = {"required": bool(body), "content": content}
    responses = dict(answer(spec) for spec in answers)
    return {"operationId": name, "summary": summary, **more, "responses": responses}


# CONTRACT.md: no token is needed for exactly these (and for /metrics, which it leaves open).
OPEN = {"GET /users", "GET /users/{id}", "POST /users", "POST /login", "GET /healthz"}
OPEN |= {"GET /openapi.json", "GET /metrics"}
CONVENTIONS = [
    "400: Malformed body, or a field breaks its rule (the message names it)",
    "401 WWW-Authenticate: Missing, invalid or expired token",
    "403: The token belongs to another user",
    "404: No such user",
    # Every route checks the body's size first, whether it reads the body or not.
    "413: Body over 1 MiB",
]


def with_conventions(verb, path, operation):
    """The operation with CONVENTIONS' answers where it has none of its own: 400 if it reads a
    body, 401 (and bearer) with a token, 403 if it writes a user's, 404 with {id}, 413 always."""
    token, by_id = f"{verb} {path}" not in OPEN, "{id}" in path
    applies = ["requestBody" in operation, token, token and by_id and verb != "GET", by_id, 1]
    answers = dict(answer(spec) for spec, yes in zip(CONVENTIONS, applies, strict=True) if yes)
    answers = dict(sorted({**answers, **operation["responses"]}.items()))
    return {**operation, "responses": answers} | ({"security": [{"bearer": []}]} if token else {})


def parameter(name, schema=STRING, where="query"):
    return {"name": name, "in": where, "schema": schema}


def paging(most, default):
    """?limit= and ?offset=, as GET /users and GET /leaderboard read them."""
    limit = {"type": "integer", "minimum": 1, "maximum": most, "default": default}
    return [parameter("limit", limit), parameter("offset", {**ID, "minimum": 0, "default": 0})]


BUSY_HASHING = (
    "503 Retry-After: The server is busy hashing other passwords (or checking other logins of "
    "this username); nothing was created or changed, and it is not a failed login: retry "
    "after Retry-After seconds"
)
# application/pdf, and the same bytes as octet-stream: openapi-python-client drops a response
# of a media type it does not know, and gives a File for this one.
PDF_BYTES = {"type": "string", "format": "binary", "contentMediaType": "application/pdf"}
PDF = {"application/pdf": {"schema": PDF_BYTES}, "application/octet-stream": {"schema": PDF_BYTES}}
PREFER = parameter("Prefer", {**STRING, "examples": ["wait=10"]}, "header")
PREFER["description"] = (
    "wait=N (RFC 7240; N whole seconds, at most 10): while the first report is being made, "
    "answer as soon as it is done (200, or the failure), or after N seconds with the 202. At "
    "most MAX_WAITING requests wait at once; beyond them the 202 comes at once."
)
ANY = {"application/json": {"schema": {"type": "object"}}}
# The bodies answer() knows by name that are not JSON of a schema.
MEDIA = {"PDF": PDF, "JSON": ANY, "Text": {"text/plain": {"schema": STRING}}}
IF = [parameter(name, where="header") for name in ("If-None-Match", "If-Modified-Since")]
BY = parameter("by", {**STRING, "enum": ORDERS, "default": ORDERS[0]})

# By "tag: description" of the operations under it.
OPERATIONS = {
    "users: Sign up, and read, change or delete users": {
        "GET /users": operation(
            "listUsers: List users, ordered by id",
            "200 [User] X-Total-Count Link: A page of users",
            "400: Bad limit or offset",
            parameters=paging(1000, 100),
        ),
        "POST /users": operation(
            "createUser: Sign up",
            "201 UserCreated Location Cache-Control: Created, with a token",
            "409: Username taken",
            "429 Retry-After: Too many sign-ups from this client address (SIGNUP_RATE a minute)",
            BUSY_HASHING,
            body="UserCreate",
        ),
        "GET /users/me": operation("getMe: The token's user", "200 User: The user"),
        "GET /users/{id}": operation("getUser: One user", "200 User: The user"),
        "PUT|PATCH /users/{id}": operation(
            "putUser|updateUser: Change the fields sent (a password change needs "
            "current_password and revokes older tokens)",
            "200 User: The updated user",
            "403: Another user's token, or a wrong current_password",
            "409: Username taken",
            BUSY_HASHING,
            body="UserUpdate",
        ),
        "DELETE /users/{id}": operation(
            "deleteUser: Delete the user, their stats and reports", "204: Deleted"
        ),
    },
    "stats: A user's game statistics": {
        "GET /users/{id}/stats": operation("getStats: A user's stats", "200 Stats: The stats"),
        "PUT|PATCH /users/{id}/stats": operation(
            "putStats|updateStats: Change the stats sent",
            "200 Stats: The updated stats",
            body="StatsUpdate",
        ),
    },
    "leaderboard: Users ranked by one of their stats": {
        "GET /leaderboard": operation(
            "getLeaderboard: Users ranked by one of their stats, best first; ties share a rank",
            "200 [LeaderboardEntry] X-Total-Count Link: A page of the ranking",
            "400: Bad by, limit or offset (the message names the allowed values)",
            parameters=[BY, *paging(100, 10)],
        ),
    },
    "reports: PDF reports of a user's stats, drawn by a worker": {
        "POST /users/{id}/pdf": operation(
            "requestReport: Queue a new report of the user's stats",
            "202 ReportQueued Location: Queued, or already queued and not yet started (a job "
            "being drawn has read the data: a new one is queued)",
            "503 Retry-After: The broker cannot take the job; nothing was queued",
        ),
        "GET /users/{id}/pdf": operation(
            "getReport: The newest finished report",
            "200 PDF ETag Last-Modified Content-Disposition Preference-Applied: The report",
            "202 ReportPending Retry-After Preference-Applied: The first report is still being "
            "made; Retry-After is the server's estimate of when it will be ready",
            "304 ETag: Unchanged since the ETag or date given",  # Bottle drops Last-Modified
            "404: No such user, or no report was ever requested",
            "409 Preference-Applied: The last report failed and none exists; POST again",
            parameters=[*IF, PREFER],
        ),
    },
    "login: Tokens for the bearer scheme: log in, log out": {
        "POST /login": operation(
            "logIn: Exchange a username and password for a token",
            "200 LoginOk Cache-Control: Logged in",
            "400: Bad username or password (missing or not a non-empty string)",
            "401 WWW-Authenticate: Bad username or password",
            "429 Retry-After: Too many failed logins for this username, or too many logins from "
            "this client address (LOGIN_RATE a minute)",
            BUSY_HASHING,
            body="Login",
        ),
        "POST /logout": operation(
            "logOut: Revoke the token used, or with everywhere every token of its user",
            "204: Logged out: the token (or every token of the user) is refused from now on",
            optional_body="Logout",
        ),
    },
    "service: Health, metrics and this document": {
        "GET /healthz": operation(
            "getHealth: Is the service and what it needs up",
            "200 Health: All up",
            "503 Health: A part is down",
        ),
        "GET /openapi.json": operation("getOpenApi: This document", "200 JSON: OpenAPI 3.1"),
        "GET /metrics": operation(
            "getMetrics: Prometheus metrics: counts and durations, never user data",
            "200 Text: The Prometheus text format",
            "404: METRICS is off",
        ),
    },
}
TAGS = [dict(name=tag, description=text) for tag, text in (g.split(": ", 1) for g in OPERATIONS)]
ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": ID}
ID_PARAMETER["description"] = "A positive integer below 2**63; any other id is a 404"


def paths():
    result = {}
    for group, operations in OPERATIONS.items():
        for route, operation in operations.items():
            verbs, path = route.split(" ")
            item = result.setdefault(path, {"parameters": [ID_PARAMETER]} if "{id}" in path else {})
            names = operation["operationId"].split("|")
            for verb, name in zip(verbs.split("|"), names, strict=True):
                named = {**operation, "operationId": name, "tags": [group.split(":")[0]]}
                item[verb.lower()] = with_conventions(verb, path, named)
    return result


def strict(**properties):
    """An object of exactly these properties, all of them required."""
    schema = {"type": "object", "required": list(properties), "additionalProperties": False}
    return {**schema, "properties": properties}


JWT = string("^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$")
UP = {"enum": ["ok", "down"]}
PENDING = {"const": "pending"}
NON_EMPTY = {**STRING, "minLength": 1}
USERNAME = USER_FIELDS["username"].schema()
WRITABLE = {name: rule.schema() for name, rule in USER_FIELDS.items() if name != "password"}
LINK_ENDS = {"self": "", "stats": "/stats", "pdf": "/pdf"}
LINKS = {name: {**user_path(end), "readOnly": True} for name, end in LINK_ENDS.items()}
READ_ONLY = {name: {"readOnly": True} for name in sorted(validation.READ_ONLY_USER_FIELDS)}
BOTH_OR_NEITHER = {"password": ["current_password"], "current_password": ["password"]}
USER_CHANGE = object_schema(validation.USER_CHANGE_FIELDS, extra=READ_ONLY)
EVERYWHERE = {"type": "boolean", "default": False}
EVERYWHERE["description"] = "true: all the user's tokens end, the one used included"
RANK = {"type": "integer", "minimum": 1, "description": "Ties share a rank (1, 2, 2, 4)"}
VALUE = {"type": "number", "minimum": 0, "description": "A count, or a win_rate from 0 to 1"}
SCHEMAS = {
    "Error": strict(success={"const": False}, message=NON_EMPTY),
    "User": strict(id={**ID, "readOnly": True}, **WRITABLE, **LINKS),
    "UserCreate": object_schema(USER_FIELDS, required=["username", "password"], extra=READ_ONLY),
    "UserUpdate": USER_CHANGE | {"dependentRequired": BOTH_OR_NEITHER},
    "UserCreated": strict(user=ref("User"), token=JWT),
    "Stats": object_schema(STATS_FIELDS, required=list(STATS_FIELDS)),
    "StatsUpdate": object_schema(STATS_FIELDS),
    # Any non-empty strings are accepted here (a name no user can have is a 401, as
    # a wrong password is): only sign-up and changes hold them to the field rules.
    "Login": strict(username=NON_EMPTY, password=NON_EMPTY),
    "LoginOk": strict(success={"const": True}, token=JWT, user=user_path()),
    "Logout": object_schema({}, extra={"everywhere": EVERYWHERE}),
    "LeaderboardEntry": strict(rank=RANK, id=ID, username=USERNAME, self=user_path(), value=VALUE),
    "Health": strict(status=UP, database=UP, broker=UP),
    "ReportQueued": strict(url=user_path("/pdf"), status=PENDING),
    "ReportPending": strict(status=PENDING),
}
# What Swagger UI shows and fills "Try it out" with (else values made up from the patterns).
USER = {"id": 1, "username": "user1", "email": "user1@ggmail.com", "gender": "male"}
USER |= {"profile_pic": None, "self": "/users/1", "stats": "/users/1/stats", "pdf": "/users/1/pdf"}
LOGIN = {"username": "user1", "password": "s3cret"}
TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
EXAMPLES = {
    "Error": {"success": False, "message": "There is no user 1."},
    "User": USER,
    "UserCreate": LOGIN | {"email": "user1@ggmail.com", "gender": "male"},
    "UserUpdate": {"profile_pic": "https://example.com/me.png"},
    "UserCreated": {"user": USER, "token": TOKEN},
    "Stats": {"loss_count": 4, "session_count": 12, "total_time": 5000, "victory_count": 8},
    "StatsUpdate": {"victory_count": 9, "session_count": 13},
    "Login": LOGIN,
    "LoginOk": {"success": True, "token": TOKEN, "user": "/users/1"},
    "Logout": {"everywhere": True},
    "LeaderboardEntry": {"rank": 1, "id": 7, "username": "ace", "self": "/users/7", "value": 120},
    "Health": {"status": "ok", "database": "ok", "broker": "ok"},
    "ReportQueued": {"url": "/users/1/pdf", "status": "pending"},
    "ReportPending": {"status": "pending"},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "Game stats API",
        "version": "1.0.0",
        "description": "Users, their game statistics, and PDF reports of them. Besides the "
        "operations below: OPTIONS on any of these paths is 204 with Allow, HEAD is GET "
        "without the body, and any other method is 405 with Allow. Request bodies are read "
        "as JSON whatever their Content-Type.",
    },
    # Relative: OpenAPI 3.1 reads it against the document's own URL, right on any host.
    "servers": [{"url": "/", "description": "This service, where this document was read"}],
    "tags": TAGS,
    "paths": paths(),
    "components": {
        "schemas": {name: {**SCHEMAS[name], "examples": [EXAMPLES[name]]} for name in SCHEMAS},
        "headers": {
            name: {"schema": schema, "required": name not in OPTIONAL, "description": description}
            for name, (description, schema) in HEADERS.items()
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
}


@cache
def document_json():
    """The document in the one JSON style, made once: it never changes."""
    return to_json(DOCUMENT)
