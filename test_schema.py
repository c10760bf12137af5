"""The OpenAPI document against the server, by schemathesis: hostile input, generated.

A live server (testing.LiveService: a real process, a temporary database) is
tested by the schemathesis CLI from its own /openapi.json, with every check
schemathesis has: no 5xx; every status, header, content type and body as
documented; schema-valid input accepted and schema-invalid input rejected;
405 with Allow for undocumented methods; 401 without a token; deleted users
gone. Any failure fails the test, with schemathesis's report (and curl
commands reproducing each failure) in the message.

Four runs, one server, all at once:

- without a token: every operation (the protected ones answer 401, or 404
  for an id that is not one), with no sign-up flow either (auto-signup off);
  the examples and fuzzing phases, 5 examples per operation: whatever a
  protected operation is sent, it is a 401;
- with a token, every phase (examples, coverage, fuzzing, stateful): every
  operation but DELETE /users/{id} and POST /logout, as a user whose id is
  the path's id half the time (else a generated one: 403s and 404s), so that
  the owner-only writes, stats, PDFs and password checks are reached; an
  operation that never gets past 401/403/404 fails the run;
- DELETE /users/{id} alone, with the token of a throwaway user of its own;
- POST /logout alone, likewise (it ends its token).

Why DELETE is kept apart: it is the one operation that can destroy the
credentials of a run. Once it deleted the token's user, everything after in
that run would be a 401, untested. A password change also revokes the token,
but it needs current_password, which schemathesis never learns (the user's
password is random and never sent through it): in the token run that path is
the documented 403 of a wrong current_password, while test_users.py covers
successful changes. After the token run its token must still work, proving
the run stayed authenticated; after the DELETE run its user must be gone.

Deterministic: a fixed seed, one worker, no example database (nothing
remembered between runs), and nothing timing-based (the too_slow health check
is off). SCHEMATHESIS_SEED and SCHEMATHESIS_MAX_EXAMPLES change the seed and
the number of examples per operation (15; 100 before the suite had to fit in
four minutes), e.g. for a longer hunt by hand.

tools/schemathesis_hooks.py (loaded by every run) holds the one rule of the server
that JSON Schema cannot state; it says why.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

from testing import (
    PROJECT,
    ServiceTestCase,
    inherited_environment,
    unique_name,
)

SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261126"))
# Examples per operation of the fuzzing and stateful phases. The coverage
# phase (each field's boundaries, wrong types and missing parts: what
# hostile input tries first) is deterministic and costs the same whatever this
# is; 100 examples took over three minutes of the suite's time on 2 cores, 15
# about a minute.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "15"))
# Seconds for one run: at 15 examples the three take about a minute on 2 cores.
DEADLINE = max(240, 4 * MAX_EXAMPLES)
# Every phase, as schemathesis runs by default.
ALL_PHASES = "examples,coverage,fuzzing,stateful"
# Without a token every protected operation answers 401 whatever it is sent:
# a few random inputs (fuzzing) show that, and the 404 of a bad id, for each;
# the coverage and stateful phases run where a token takes them past the 401
# (and reach the open operations just the same).
NO_TOKEN_PHASES = "examples,fuzzing"
NO_TOKEN_EXAMPLES = min(MAX_EXAMPLES, 5)
DELETE = "DELETE /users/{id}"
LOGOUT = "POST /logout"

# Every run: no sign-up of its own; warnings that mean the document and the
# server misunderstand each other fail the run.
CONFIG = """
[auth]
auto-signup = false

[warnings]
fail-on = ["validation_mismatch", "unsupported_regex", "unresolvable_reference",
           "missing_deserializer", "method_not_allowed"]
"""

# A token run: the token's own id half the time, and it must reach past 401/403/404.
TOKEN_CONFIG = """
[auth]
auto-signup = false

[dictionaries.own_id]
values = [{user_id}]

[parameters]
"path.id" = {{ dictionary = "own_id", probability = 0.5 }}

[warnings]
fail-on = ["validation_mismatch", "unsupported_regex", "unresolvable_reference",
           "missing_deserializer", "method_not_allowed", "missing_auth", "missing_test_data"]
"""


class SchemathesisTest(ServiceTestCase):
    """The four runs start together, once the server is up (setUpClass): one
    run alone keeps a core of two busy at most, waiting on the server, and
    they touch no user of another's. Each test then waits for its own run
    and reads its report."""

    # The default broker and embedded worker: PDFs are really made, so the
    # 200 application/pdf and 304 answers are tested too.

    test_timeout = DEADLINE + 60  # a run's own deadline fails it first, with its report

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.runs = {}
        cls.addClassCleanup(cls.stop_runs)
        cls.start_run("without a token", phases=NO_TOKEN_PHASES, examples=NO_TOKEN_EXAMPLES)
        cls.start_run("with a token", "--exclude-name", DELETE, "--exclude-name", LOGOUT)
        cls.start_run("delete", "--include-name", DELETE)
        cls.start_run("logout", "--include-name", LOGOUT)

    @classmethod
    def new_secret_user(cls):
        """A new user with a random password: (user id, token)."""
        body = {"username": unique_name("schema"), "password": os.urandom(16).hex()}
        answer = cls.service.request("POST", "/users", body)
        if answer.status != 201:
            raise AssertionError(f"no user for a run: {answer.status} {answer.body!r}")
        return answer.json["user"]["id"], answer.json["token"]

    @classmethod
    def start_run(cls, name, *options, phases=ALL_PHASES, examples=MAX_EXAMPLES):
        """Starts schemathesis on the live server: with a user's token of its
        own (and its id, half the time, for the path's id) unless phases are
        NO_TOKEN_PHASES. cls.runs[name] is (the run, the user's id and token)."""
        workdir = Path(tempfile.mkdtemp(prefix="schemathesis-", dir=cls.service.dir))
        user_id, token, config = None, None, CONFIG
        if phases != NO_TOKEN_PHASES:
            user_id, token = cls.new_secret_user()
            config = textwrap.dedent(TOKEN_CONFIG).format(user_id=user_id)
        config_file = workdir / "schemathesis.toml"
        config_file.write_text(config)
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config_file),
            "run",
            f"http://127.0.0.1:{cls.service.port}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--phases",
            phases,
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--suppress-health-check",
            "too_slow",
            "--request-timeout",
            "30",
            "--output-sanitize",
            "false",  # a test token: show the requests as sent
            "--no-color",
            *options,
        ]
        if token:
            command += ["--header", f"Authorization: Bearer {token}"]
        # Not the caller's environment: an HTTP_PROXY there would reroute the run.
        env = {
            **inherited_environment(),
            "SCHEMATHESIS_HOOKS": str(PROJECT / "tools" / "schemathesis_hooks.py"),
            "PYTHONIOENCODING": "utf-8",
            "COLUMNS": "120",
        }
        with open(workdir / "output.txt", "wb") as output:
            run = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        run.output_path = workdir / "output.txt"
        run.deadline = time.monotonic() + DEADLINE
        cls.runs[name] = run, user_id, token

    @classmethod
    def stop_runs(cls):
        for run, _, _ in cls.runs.values():
            if run.poll() is None:
                run.kill()
            run.wait(30)

    def schemathesis(self, name):
        """Waits for the run's end (within its deadline); fails with its report
        unless all passed. The run's user id and token."""
        run, user_id, token = self.runs[name]
        try:
            run.wait(max(0, run.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(30)
            output = run.output_path.read_text(errors="replace")
            self.fail(f"schemathesis did not finish within {DEADLINE}s:\n{output}")
        output = run.output_path.read_text(errors="replace")
        self.assertEqual(
            run.returncode,
            0,
            f"schemathesis failed:\n{output}\nserver log:\n{self.server_log_tail()}",
        )
        self.assertNotIn(
            "Traceback", self.service.server.output(), "the server logged an exception"
        )
        return user_id, token

    def server_log_tail(self, lines=60):
        return "\n".join(self.service.server.output().splitlines()[-lines:])

    def test_every_operation_without_a_token(self):
        self.schemathesis("without a token")

    def test_every_operation_but_delete_and_logout_with_a_token(self):
        user_id, token = self.schemathesis("with a token")
        me = self.service.request("GET", "/users/me", token=token)
        self.assertEqual(me.status, 200, "the token stopped working during the run")
        self.assertEqual(me.json["id"], user_id)

    def test_delete_with_a_throwaway_users_token(self):
        user_id, _ = self.schemathesis("delete")
        self.assertEqual(
            self.service.request("GET", f"/users/{user_id}").status,
            404,
            "the run never deleted its user",
        )

    def test_logout_with_a_throwaway_users_token(self):
        _, token = self.schemathesis("logout")
        self.assertEqual(
            self.service.request("GET", "/users/me", token=token).status,
            401,
            "the run never logged its token out",
        )


if __name__ == "__main__":
    unittest.main()
