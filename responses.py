"""Every JSON answer in the service's one style (CONTRACT.md, Conventions): compact JSON (no
space after "," or ":"), text in UTF-8 as it is. models.py has both databases write the user
representation in it: a resource has the same bytes from every route and either database."""

import json

from bottle import HTTPResponse, response


def to_json(data):
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    # A JSON string may carry a lone surrogate (a field name in an error message,
    # say), which UTF-8 cannot encode: write it as its JSON escape, \udc00.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_text_response(text, status=200, headers=None):
    """Answers with JSON text already in the one style (the database's, or to_json's)."""
    response.status = status
    response.content_type = "application/json"
    for name, value in (headers or {}).items():
        response.set_header(name, str(value))
    return text


def json_response(data, status=200, headers=None):
    return json_text_response(to_json(data), status, headers)


def error_body(message):
    return to_json({"success": False, "message": message})


class JsonAnswer(HTTPResponse):
    """An answer with data as its JSON body, to return or raise; headers as keywords."""

    def __init__(self, data, status, **headers):
        headers = {key.replace("_", "-"): str(value) for key, value in headers.items()}
        super().__init__(to_json(data), status, {"Content-Type": "application/json", **headers})


class ApiError(JsonAnswer):
    """Raise anywhere in a request to answer with a JSON error: {"success": false, "message"}."""

    def __init__(self, status, message, **headers):
        super().__init__({"success": False, "message": message}, status, **headers)
