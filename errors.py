"""The one shape of every error response: {"success": false, "message": ...}."""
import json

from bottle import HTTPResponse


def error_body(message):
    return json.dumps({"success": False, "message": message})


class ApiError(HTTPResponse):
    """Raise anywhere in a request to answer with a JSON error."""

    def __init__(self, status, message, **headers):
        headers = {key.replace("_", "-"): str(value) for key, value in headers.items()}
        super().__init__(error_body(message), status,
                         {"Content-Type": "application/json", **headers})
