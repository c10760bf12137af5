"""What every route of a Bottle app shares (CONTRACT.md, Conventions): positive integer
ids, 413 for a body over 1 MiB, OPTIONS and 405 with Allow, and Bottle's own error pages
(no route, wrong method, an uncaught exception) as JSON errors."""

import logging
from contextlib import suppress

import bottle
from bottle import HTTPError, request, response

from responses import ApiError, error_body
from validation import MAX_BODY

log = logging.getLogger("server")

ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# An id: positive, and at most 19 digits (models.MAX_ID checks the rest).
ID_PATTERN = "[1-9][0-9]{0,18}"
ERROR_MESSAGES = {
    400: "The request is malformed.",
    404: "There is nothing at this path.",
    405: "This method is not allowed here; the Allow header lists those that are.",
    413: "The request body is larger than 1 MiB.",
    500: "Internal server error; it has been logged.",
}


def new_app():
    app = bottle.Bottle()
    # Bottle keeps bodies up to this size in memory; larger ones get the JSON 413.
    bottle.BaseRequest.MEMFILE_MAX = MAX_BODY
    # Anything but an id is simply not a route, hence a 404.
    app.router.add_filter("id", lambda _conf: (ID_PATTERN, int, str))

    def allowed_methods(path):
        allowed = []
        for method in ROUTE_METHODS:
            with suppress(HTTPError):  # 404 or 405: no route of this method here
                app.router.match({"PATH_INFO": path, "REQUEST_METHOD": method})
                allowed.append(method)
        if "GET" in allowed:
            allowed.insert(1, "HEAD")
        return ", ".join(allowed + ["OPTIONS"]) if allowed else ""

    @app.hook("before_request")
    def refuse_large_bodies_and_answer_options():
        if request.content_length > MAX_BODY:  # on every route, body read or not
            raise ApiError(413, ERROR_MESSAGES[413])
        if request.method == "OPTIONS":
            allow = allowed_methods(request.path)
            if not allow:
                raise ApiError(404, f"There is nothing at {request.path}.")
            raise bottle.HTTPResponse(status=204, Allow=allow)

    def json_error_page(error):
        if error.status_code == 405:
            response.set_header("Allow", allowed_methods(request.path))
        if error.status_code == 500:
            log.error("Unhandled error on %s %s\n%s", request.method, request.path, error.traceback)
        response.content_type = "application/json"
        return error_body(ERROR_MESSAGES.get(error.status_code, error.status_line))

    app.default_error_handler = json_error_page
    return app
