"""What an operator's tools read: /metrics as Prometheus's own `promtool
check metrics` judges it, with the process_* figures by which restarts and
leaks show and no `*_created` series; and an OpenAPI document that tells a
generated client where the API is.

promtool is Debian's prometheus package (.ci/run installs it); where it is
missing that check is skipped, saying so, except under CI=true, where it
must run.
"""

import http.client
import re
import shutil
import subprocess
import unittest

from testing import (
    CI,
    ServiceTestCase,
    free_port,
    wait_until,
)

PROMTOOL = shutil.which("promtool")
PROCESS_METRICS = (
    "process_start_time_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
)
CREATED = re.compile(r"_created\b")


def require_promtool():
    if PROMTOOL:
        return
    missing = "no promtool on PATH (apt-get install prometheus)"
    if CI:
        raise AssertionError(f"CI=true and {missing}: promtool check metrics must run")
    raise unittest.SkipTest(f"promtool check skipped: {missing}")


def sample_names(text):
    """The names of the samples of a Prometheus text page (comments left out)."""
    return {
        re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group()
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


class OperatorMetrics:
    """Checks of a scraped page, for the server's and a worker's."""

    def assertProcessMetrics(self, text):
        names = sample_names(text)
        for name in PROCESS_METRICS:
            self.assertIn(name, names, f"{name} missing from /metrics")

    def assertNoCreatedSeries(self, text):
        created = [line for line in text.splitlines() if CREATED.search(line)]
        self.assertEqual(created, [], "a *_created series in /metrics")

    def assertPromtoolClean(self, text):
        require_promtool()
        run = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            timeout=60,
        )
        said = (run.stdout + run.stderr).decode(errors="replace")
        self.assertEqual(run.returncode, 0, f"promtool check metrics:\n{said}")
        self.assertEqual(said.strip(), "", "promtool check metrics found problems")


class ServerMetricsForOperatorsTest(OperatorMetrics, ServiceTestCase):
    def scraped_after_traffic(self):
        """The page once requests, a 404 and a sign-up have made labelled series."""
        answer = self.request("POST", "/users", {"username": "x y", "password": "p"})
        self.assertEqual(answer.status, 400, answer.body)
        user, _ = self.sign_up()
        self.assertEqual(self.request("GET", f"/users/{user['id']}").status, 200)
        self.assertEqual(self.request("GET", "/users/999999999").status, 404)
        answer = self.request("GET", "/metrics")
        self.assertEqual(answer.status, 200, answer.body)
        text = answer.body.decode()
        self.assertIn("http_requests_total{", text)  # the series _created would double
        self.assertIn("http_request_duration_seconds_bucket{", text)
        return text

    def test_metrics_have_the_process_figures(self):
        text = self.scraped_after_traffic()
        self.assertProcessMetrics(text)
        start = re.search(r"^process_start_time_seconds (\S+)$", text, re.MULTILINE)
        self.assertGreater(float(start.group(1)), 1_600_000_000)  # a time, not an uptime
        fds = re.search(r"^process_open_fds (\S+)$", text, re.MULTILINE)
        self.assertGreater(float(fds.group(1)), 0)

    def test_metrics_have_no_created_series(self):
        self.assertNoCreatedSeries(self.scraped_after_traffic())

    def test_promtool_check_metrics_is_clean(self):
        self.assertPromtoolClean(self.scraped_after_traffic())


class WorkerMetricsForOperatorsTest(OperatorMetrics, ServiceTestCase):
    """A worker's own page on WORKER_METRICS_PORT: the same registry, the same checks."""

    service_env = {"EMBEDDED_WORKER": "off"}

    def test_a_workers_metrics_have_the_process_figures_and_pass_promtool(self):
        port = free_port()
        self.service.start_worker(WORKER_METRICS_PORT=str(port))

        def scraped():
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/metrics")
                return connection.getresponse().read().decode()
            except OSError:
                return None

        text = wait_until(scraped, what="the worker's metrics")
        self.assertProcessMetrics(text)
        self.assertNoCreatedSeries(text)
        self.assertPromtoolClean(text)


class OpenApiServersTest(ServiceTestCase):
    def test_openapi_names_its_server_by_a_url_relative_to_the_document(self):
        answer = self.request("GET", "/openapi.json")
        self.assertEqual(answer.status, 200, answer.body)
        servers = answer.json.get("servers")
        self.assertTrue(servers, "no servers entry: a generated client guesses its base URL")
        url = servers[0]["url"]
        # Relative (no scheme, no host): right on whatever host and port serve it.
        self.assertNotRegex(url, r"^[A-Za-z][A-Za-z0-9+.-]*:|^//", url)
        # Read against http://host/openapi.json it is the root, where the paths are.
        self.assertIn(url, ("/", ""))


if __name__ == "__main__":
    unittest.main()
