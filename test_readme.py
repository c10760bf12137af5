"""The README's walk through every route, run as a reader would run it.

Every `$ ` line of the walk runs in bash, in order, against a fresh server
(its port instead of 5000), and what it prints must be what the README
shows: only tokens, dates and the few numbers that change from run to run
(a PDF's length, seconds to wait) are put aside. It fails when the README or
the server drifts from the other.
"""

import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from testing import (
    CI,
    PROJECT,
    LiveService,
    wait_until,
)

WALK_HEADING = "## A walk through every route"


def walk_steps(readme):
    """[(command, the output the README shows)] of the walk's console block."""
    section = readme.split(WALK_HEADING, 1)[1]
    block = section.split("```console\n", 1)[1].split("\n```", 1)[0]
    steps = []
    for line in block.split("\n"):
        if line.startswith("$ "):
            steps.append([line[2:], []])
        else:
            steps[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in steps]


# What differs from one run to the next, and why it may.
VARYING = [
    (re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+"), "<token>"),  # iat and exp are now
    (re.compile(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"), "<date>"),
    (re.compile(r"Retry-After: \d+"), "Retry-After: <seconds>"),  # counts down
    (re.compile(r"try again in \d+ seconds"), "try again in <seconds> seconds"),
]
# The PDF holds its time of generation, so its compressed length may vary.
PDF_LENGTH = re.compile(r"Content-Length: \d+(?=\nContent-Type: application/pdf)")


def comparable(output):
    output = output.replace("\r\n", "\n")
    for pattern, placeholder in VARYING:
        output = pattern.sub(placeholder, output)
    output = PDF_LENGTH.sub("Content-Length: <bytes>", output)
    return "\n".join(line.rstrip() for line in output.strip("\n").split("\n"))


@unittest.skipUnless(
    shutil.which("curl") or CI, "the README's walk needs curl on the PATH (CI requires it)"
)
class ReadmeWalkTest(unittest.TestCase):
    def setUp(self):
        # The README's set-up: ./run.sh's defaults (the embedded worker on
        # memory://) on a fresh data folder, whose database the server makes;
        # only the cheap test hashes differ.
        self.service = LiveService(fresh_database=True)
        self.addCleanup(self.service.stop_in_background)
        self.service.start_server()
        self.terminal = Path(tempfile.mkdtemp(prefix="readme-walk-"))
        self.addCleanup(shutil.rmtree, self.terminal, ignore_errors=True)

    def run_in_terminal(self, command):
        """Runs command in bash in the terminal's folder; variables set by one
        command (TOKEN=...) are kept for the next. What it printed."""
        state = self.terminal / ".variables"
        script = (
            f"[ -f {state} ] && source {state}\n{command}\n"
            f"declare -p TOKEN > {state} 2>/dev/null || true\n"
        )
        done = subprocess.run(
            ["bash", "-c", script], cwd=self.terminal, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.stderr, "", f"$ {command}")
        return done.stdout

    def reports_are_finished(self):
        with self.service.database() as db:
            return not db.exec_driver_sql(
                "SELECT 1 FROM reports WHERE state IN ('pending', 'rendering')"
            ).first()

    def test_every_command_of_the_walk_prints_what_the_readme_shows(self):
        steps = walk_steps((PROJECT / "README.md").read_text())
        self.assertGreater(len(steps), 20, "the walk was not found in the README")
        for command, shown in steps:
            if command.startswith("#"):
                # "a moment later": a reader waits for the report, as this does.
                wait_until(self.reports_are_finished, what="the requested report")
                continue
            printed = self.run_in_terminal(
                command.replace("localhost:5000", f"localhost:{self.service.port}")
            )
            self.assertEqual(comparable(printed), comparable(shown), f"$ {command}")


if __name__ == "__main__":
    unittest.main()
