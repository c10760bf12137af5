"""The OpenAPI 3.1 document served at /openapi.json.

Request schemas are built from the same rules that validation.py enforces,
so the document cannot drift from the server.
"""
from models import MAX_ID
from validation import (PASSWORD_CHANGE_FIELDS, READ_ONLY_USER_FIELDS, STATS_FIELDS,
                        USER_FIELDS, object_schema)


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
BAD_REQUEST = answer("Malformed body, or a field breaks its rule (the message names it)", ERROR)
UNAUTHORIZED = answer("Missing, invalid or expired token", ERROR, ["WWW-Authenticate"])
FORBIDDEN = answer("The token belongs to another user", ERROR)
NOT_FOUND = answer("No such user", ERROR)
TOO_LARGE = answer("Body over 1 MiB", ERROR)
BEARER = [{"bearer": []}]
ID_PARAMETER = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}

read_only = {name: {"readOnly": True} for name in sorted(READ_ONLY_USER_FIELDS)}
user_writable = {name: rule for name, rule in USER_FIELDS.items() if name != "password"}
user_schema = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 1, "readOnly": True},
                   **{name: rule.schema() for name, rule in user_writable.items()},
                   "self": {"type": "string", "readOnly": True},
                   "stats": {"type": "string", "readOnly": True},
                   "pdf": {"type": "string", "readOnly": True}},
    "required": ["id", *user_writable, "self", "stats", "pdf"],
}
user_update = object_schema(USER_FIELDS | PASSWORD_CHANGE_FIELDS, extra=read_only)
user_update["dependentRequired"] = {"password": ["current_password"],
                                    "current_password": ["password"]}
stats_schema = object_schema(STATS_FIELDS, required=list(STATS_FIELDS))

SCHEMAS = {
    "Error": {"type": "object", "required": ["success", "message"],
              "properties": {"success": {"const": False}, "message": {"type": "string"}}},
    "User": user_schema,
    "UserCreate": object_schema(USER_FIELDS, required=["username", "password"], extra=read_only),
    "UserUpdate": user_update,
    "UserCreated": {"type": "object", "required": ["user", "token"],
                    "properties": {"user": ref("User"), "token": {"type": "string"}}},
    "Stats": stats_schema,
    "StatsUpdate": object_schema(STATS_FIELDS),
    "Login": {"type": "object", "required": ["username", "password"],
              "additionalProperties": False,
              "properties": {"username": {"type": "string", "minLength": 1},
                             "password": {"type": "string", "minLength": 1}}},
    "LoginOk": {"type": "object", "required": ["success", "token", "user"],
                "properties": {"success": {"const": True}, "token": {"type": "string"},
                               "user": {"type": "string"}}},
    "Health": {"type": "object", "required": ["status", "database", "broker"],
               "properties": {"status": {"enum": ["ok", "down"]},
                              "database": {"enum": ["ok", "down"]},
                              "broker": {"enum": ["ok", "down"]}}},
    "ReportQueued": {"type": "object", "required": ["url", "status"],
                     "properties": {"url": {"type": "string"}, "status": {"const": "pending"}}},
    "ReportPending": {"type": "object", "required": ["status"],
                      "properties": {"status": {"const": "pending"}}},
}

HEADERS = {
    "Location": {"schema": {"type": "string"}, "description": "Where the resource is"},
    "Link": {"schema": {"type": "string"}, "description": 'The next page, rel="next"'},
    "X-Total-Count": {"schema": {"type": "integer"}, "description": "Number of users in all"},
    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"},
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"},
    "Cache-Control": {"schema": {"type": "string"}, "description": "no-store: carries a token"},
    "ETag": {"schema": {"type": "string"}, "description": "Identifies this report"},
    "Last-Modified": {"schema": {"type": "string"}, "description": "When it was made"},
    "Content-Disposition": {"schema": {"type": "string"},
                            "description": 'inline; filename="<username>_stats.pdf"'},
}

PATHS = {
    "/users": {
        "get": {
            "summary": "List users, ordered by id",
            "parameters": [
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "offset", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID, "default": 0}}],
            "responses": {
                "200": answer("A page of users", {"type": "array", "items": ref("User")},
                              ["X-Total-Count", "Link"]),
                "400": answer("Bad limit or offset", ERROR)}},
        "post": {
            "summary": "Sign up",
            "requestBody": {"required": True, "content": json_content(ref("UserCreate"))},
            "responses": {
                "201": answer("Created, with a token", ref("UserCreated"),
                              ["Location", "Cache-Control"]),
                "400": BAD_REQUEST, "409": answer("Username taken", ERROR),
                "413": TOO_LARGE}},
    },
    "/users/me": {
        "get": {"summary": "The token's user", "security": BEARER,
                "responses": {"200": answer("The user", ref("User")),
                              "401": UNAUTHORIZED}},
    },
    "/users/{id}": {
        "parameters": [ID_PARAMETER],
        "get": {"summary": "One user",
                "responses": {"200": answer("The user", ref("User")), "404": NOT_FOUND}},
        **{verb: {"summary": "Change the fields sent (a password change needs "
                             "current_password and revokes older tokens)",
                  "security": BEARER,
                  "requestBody": {"required": True, "content": json_content(ref("UserUpdate"))},
                  "responses": {"200": answer("The updated user", ref("User")),
                                "400": BAD_REQUEST, "401": UNAUTHORIZED,
                                "403": answer("Another user's token, or a wrong "
                                              "current_password", ERROR),
                                "404": NOT_FOUND, "409": answer("Username taken", ERROR),
                                "413": TOO_LARGE}}
           for verb in ("put", "patch")},
        "delete": {"summary": "Delete the user, their stats and reports",
                   "security": BEARER,
                   "responses": {"204": {"description": "Deleted"}, "401": UNAUTHORIZED,
                                 "403": FORBIDDEN, "404": NOT_FOUND}},
    },
    "/users/{id}/stats": {
        "parameters": [ID_PARAMETER],
        "get": {"summary": "A user's stats", "security": BEARER,
                "responses": {"200": answer("The stats", ref("Stats")),
                              "401": UNAUTHORIZED, "404": NOT_FOUND}},
        **{verb: {"summary": "Change the stats sent", "security": BEARER,
                  "requestBody": {"required": True, "content": json_content(ref("StatsUpdate"))},
                  "responses": {"200": answer("The updated stats", ref("Stats")),
                                "400": BAD_REQUEST, "401": UNAUTHORIZED, "403": FORBIDDEN,
                                "404": NOT_FOUND, "413": TOO_LARGE}}
           for verb in ("put", "patch")},
    },
    "/users/{id}/pdf": {
        "parameters": [ID_PARAMETER],
        "post": {"summary": "Queue a new report of the user's stats", "security": BEARER,
                 "responses": {
                     "202": answer("Queued (or already queued)", ref("ReportQueued"), ["Location"]),
                     "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND, "413": TOO_LARGE,
                     "503": answer("The broker cannot take the job; nothing was queued",
                                   ERROR, ["Retry-After"])}},
        "get": {"summary": "The newest finished report", "security": BEARER,
                "parameters": [{"name": "If-None-Match", "in": "header",
                                "schema": {"type": "string"}},
                               {"name": "If-Modified-Since", "in": "header",
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The report",
                            "content": {"application/pdf": {"schema": {
                                "type": "string", "contentMediaType": "application/pdf"}}},
                            "headers": {name: {"$ref": f"#/components/headers/{name}"}
                                        for name in ("ETag", "Last-Modified",
                                                     "Content-Disposition")}},
                    "202": answer("The first report is still being made",
                                  ref("ReportPending"), ["Retry-After"]),
                    "304": {"description": "Unchanged since the ETag or date given"},
                    "401": UNAUTHORIZED,
                    "404": answer("No such user, or no report was ever requested", ERROR),
                    "409": answer("The last report failed and none exists; POST again",
                                  ERROR)}},
    },
    "/login": {
        "post": {
            "summary": "Exchange a username and password for a token",
            "requestBody": {"required": True, "content": json_content(ref("Login"))},
            "responses": {
                "200": answer("Logged in", ref("LoginOk"), ["Cache-Control"]),
                "400": answer("Bad username or password (missing or not a non-empty string)",
                              ERROR),
                "401": answer("Bad username or password", ERROR, ["WWW-Authenticate"]),
                "413": TOO_LARGE,
                "429": answer("Too many failed logins for this username", ERROR,
                              ["Retry-After"])}},
    },
    "/healthz": {
        "get": {"summary": "Is the service and what it needs up",
                "responses": {"200": answer("All up", ref("Health")),
                              "503": answer("A part is down", ref("Health"))}},
    },
    "/openapi.json": {
        "get": {"summary": "This document",
                "responses": {"200": answer("OpenAPI 3.1", {"type": "object"})}},
    },
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Game stats API", "version": "1.0.0",
             "description": "Users, their game statistics, and PDF reports of them."},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "headers": HEADERS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "bearerFormat": "JWT"}},
    },
}
