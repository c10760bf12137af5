"""The ceiling: the benchmark's routes on bare Bottle + Waitress, with constant data.

`PORT=N python tools/bench_ceiling.py` (bench_api's Ceiling runs it) serves
GET /users/{id}, GET /users and PATCH /users/{id}/stats with answers of the
service's shape and nothing behind them: what the framework alone does here.
"""

import json
import os

import bottle
import waitress
from bench_users import sample_stats, sample_user_fields

WEB_THREADS = 8  # the service's default, and the ceiling's


def user_json(number):
    """A user as the service's GET /users/{id} answers it."""
    path = f"/users/{number}"
    return {
        "id": number,
        **sample_user_fields(number),
        "profile_pic": None,
        "self": path,
        "stats": path + "/stats",
        "pdf": path + "/pdf",
    }


def ceiling_app():
    app = bottle.Bottle()
    one_user = user_json(1)
    hundred_users = [user_json(n) for n in range(1, 101)]
    stats = dict(sorted(sample_stats(1).items()))

    @app.get("/users/<user_id:int>")
    def get_user(user_id):
        bottle.response.content_type = "application/json"
        return json.dumps(one_user)

    @app.get("/users")
    def list_users():
        bottle.response.content_type = "application/json"
        return json.dumps(hundred_users)

    @app.route("/users/<user_id:int>/stats", method="PATCH")
    def update_stats(user_id):
        json.loads(bottle.request.body.read())
        bottle.response.content_type = "application/json"
        return json.dumps(stats)

    return app


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    waitress.serve(ceiling_app(), host="127.0.0.1", port=port, threads=WEB_THREADS, ident="")
