"""The chaos run's clients (tools/chaos.py): the soak's (soak.py), on both servers.

Each client sends its requests to its home server first. A request with no
answer (a kill cut its connection, or nobody listens on the port) goes again
to the other server; one answered 503 with Retry-After goes again after that
(at most a second); for up to RETRY_FOR seconds. A request sent again after a
cut may find its first attempt done: a sign-up then meets 409 (the client logs
in instead) and a deletion 401 or 404 (the user is gone).

Every PDF not seen before is read: it must be its user's, no older a report
than one served before, and, for a report awaited, show stats no older than
those its request was made after (the client is the only writer of its
users' stats and keeps every version of them).
"""

import json
import time
from dataclasses import dataclass, field

from bench_setup import testing
from soak import Client, Player, SoakClient

RETRY_FOR = 60  # seconds a client keeps sending a request that gets no answer, or a 503
CUT, REFUSED = "cut", "refused"  # no answer: the connection broke, or nobody listened
# What a request sent again after a cut may find, its first attempt done.
AFTER_CUT = {"POST /users": {409}, "DELETE /users/{id}": {401, 404}}
REPORT_CARDS = ("Victories", "Losses", "Sessions", "Games played", "Win rate")


class Http(Client):
    """soak.py's client, telling a refused connection (no request sent) from a cut one."""

    def no_answer(self, error):
        return REFUSED if isinstance(error, ConnectionRefusedError) else CUT


@dataclass
class ChaosPlayer(Player):
    stats: list = field(default_factory=lambda: [dict(testing.ZERO_STATS)])  # every version
    asked_from: int = 0  # the stats version current when the awaited report was asked for
    newest_report: int = 0  # the id of the newest report served


class ChaosClient(SoakClient):
    """A soak client on both servers, its home first, that sends a request again
    when it gets no answer, and reads every new PDF of its users."""

    def __init__(self, number, ports, run_tag, known_ids):
        super().__init__(number, ports[0], run_tag, known_ids)
        self.servers = [Http(port) for port in ports]
        self.home = number % len(ports)
        self.cut = False  # whether the last call was sent again after a cut
        self.stopping = None

    def run(self, load_until, reports_until, stopping):
        self.stopping = stopping  # Ctrl-C: no more sending again
        try:
            super().run(load_until, reports_until, stopping)
        finally:
            for server in self.servers:
                server.close()

    def call(self, route, expected, method, path, body=None, token=None):
        give_up, server, self.cut = time.monotonic() + RETRY_FOR, self.home, False
        while True:
            started = time.perf_counter()
            status, headers, data = self.servers[server].call(method, path, body, token)
            self.tally.seconds[route].append(time.perf_counter() - started)
            self.tally.answers[route, status] += 1
            self.tally.requests += 1
            retry_after = headers.get("Retry-After", "") if status == 503 else ""
            if status in (CUT, REFUSED):
                self.cut = self.cut or status == CUT
                server = (server + 1) % len(self.servers)  # the other one
                pause = 0.05
            elif retry_after.isdigit():  # 503, documented: busy, or no broker
                pause = max(0.05, min(int(retry_after), 1))
            else:
                if status == 503:
                    self.tally.reports["503 without Retry-After"] += 1
                break
            if self.stopping.is_set():
                return status, headers, data
            if time.monotonic() + pause > give_up:
                self.tally.reports["gave up"] += 1
                self.tally.unexpected.append(
                    f"{method} {path}: still {status} after {RETRY_FOR} s: {data[:200]!r}"
                )
                return status, headers, data
            time.sleep(pause)  # the client's own pace, as a person's
        if self.cut:
            expected = expected | AFTER_CUT.get(route, set())
        if status not in expected:
            self.tally.unexpected.append(
                f"{method} {path}: {status}, expected {' or '.join(map(str, sorted(expected)))}"
                f"{' (sent again after a cut)' if self.cut else ''}: {data[:200]!r}"
            )
        return status, headers, data

    # Users: what a request sent again after a cut may have done

    def sign_up(self):
        username, password = next(self.usernames), f"pw-{self.rng.random()}"
        fields = {
            "username": username,
            "password": password,
            "email": f"{username}@example.com",
            "gender": self.rng.choice(("female", "male", None)),
        }
        status, _, data = self.call("POST /users", {201}, "POST", "/users", fields)
        if status == 201:
            answer = json.loads(data)
            self.add_player(answer["user"]["id"], username, password, answer["token"])
        elif status == 409 and self.cut:  # the first attempt signed the user up: log in
            credentials = {"username": username, "password": password}
            status, _, data = self.call("POST /login", {200}, "POST", "/login", credentials)
            if status == 200:
                token = json.loads(data)["token"]
                status, _, data = self.call("GET /users/me", {200}, "GET", "/users/me", token=token)
                if status == 200:
                    self.add_player(json.loads(data)["id"], username, password, token)

    def add_player(self, user_id, username, password, token):
        self.players.append(ChaosPlayer(user_id, username, password, token))
        self.known_ids.append(user_id)

    def delete_user(self):
        player = self.players.pop(self.rng.randrange(len(self.players)))
        status, _, _ = self.call(
            "DELETE /users/{id}", {204}, "DELETE", f"/users/{player.id}", token=player.token
        )
        if not (status == 204 or (self.cut and status in AFTER_CUT["DELETE /users/{id}"])):
            self.players.append(player)
        elif player.report_waiting and self.players:
            self.check_report(player, deleted=True)

    # Stats: every version, for what a PDF may show

    def write_stats(self, method, stats):
        player = self.some_player()
        status, _, data = self.call(
            f"{method} /users/{{id}}/stats",
            {200},
            method,
            f"/users/{player.id}/stats",
            stats,
            player.token,
        )
        # Unanswered, it may have been written: a version the PDF may show.
        player.stats.append(json.loads(data) if status == 200 else {**player.stats[-1], **stats})

    # Reports: what each new PDF shows

    def request_report(self):
        waiting = {player.id for player in self.players if player.report_waiting}
        super().request_report()
        for player in self.players:
            if player.report_waiting and player.id not in waiting:
                player.asked_from = len(player.stats) - 1

    def new_report(self, player, headers, data):
        self.tally.reports["read"] += 1
        where = f"GET /users/{player.id}/pdf ({headers.get('ETag')})"
        report_id = int(headers.get("ETag", "0").strip('"').removeprefix("report-") or 0)
        if report_id < player.newest_report:
            self.tally.reports["older"] += 1
            self.tally.unexpected.append(
                f"{where}: an older report than report-{player.newest_report}, served before"
            )
        player.newest_report = max(player.newest_report, report_id)
        try:
            lines = testing.pdf_lines(data)
        except Exception as error:
            self.tally.reports["wrong state"] += 1
            self.tally.unexpected.append(f"{where}: not a readable PDF: {error!r}")
            return
        if not lines or lines[0] != player.username:
            self.tally.reports["wrong state"] += 1
            self.tally.unexpected.append(f"{where}: not {player.username}'s: {lines[:3]}")
        elif player.report_waiting and not any(
            shows(lines, stats) for stats in player.stats[player.asked_from :]
        ):
            self.tally.reports["wrong state"] += 1
            self.tally.unexpected.append(
                f"{where}: stats its user did not have at or after its request "
                f"(then {player.stats[player.asked_from]}): {cards(lines)}"
            )


def shows(lines, stats):
    """Whether a report's text lines show these stats on every card."""
    return all(
        label in lines
        and lines.index(label) + 1 < len(lines)
        and lines[lines.index(label) + 1] == value
        for label, value in testing.expected_cards(**stats).items()
    )


def cards(lines):
    return {
        label: lines[lines.index(label) + 1]
        for label in REPORT_CARDS
        if label in lines and lines.index(label) + 1 < len(lines)
    }
