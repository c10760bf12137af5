"""Numbers for operators: `GET /metrics` in Prometheus text (CONTRACT.md).

Counts and durations only, never user data (`/users/{id}`, never `/users/17`); a worker
serves its own on WORKER_METRICS_PORT. No `*_created` series: they would double the series
of every counter and histogram for a figure nobody reads.
"""

import re
from functools import cache

import prometheus_client
from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import config

prometheus_client.disable_created_metrics()  # process-wide, read at each scrape
registry = prometheus_client.CollectorRegistry()
# process_* (start time, memory, open files, CPU), read at each scrape: restarts and leaks show.
prometheus_client.ProcessCollector(registry=registry)

REQUESTS = Counter(
    "http_requests_total", "Requests answered", ["route", "method", "status"], registry=registry
)
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer a request, by route template and method",
    ["route", "method"],
    registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS = Counter(
    "report_jobs_total", "Report jobs this process's worker settled", ["outcome"], registry=registry
)
JOB_DURATION = Histogram(
    "report_job_duration_seconds",
    "Time a report job took in the worker: read the data, draw the PDF, store it",
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# A wildcard of a Bottle rule is named by its filter: "/users/<user_id:id>" -> "/users/{id}".
_WILDCARD = re.compile(r"<(\w+)(?::(\w+))?[^>]*>")


@cache
def route_template(rule):
    return _WILDCARD.sub(lambda found: "{" + (found.group(2) or found.group(1)) + "}", rule)


def observe_request(environ, status, seconds):
    """Counts a request once answered (serving.py calls it for each)."""
    route = environ.get("bottle.route")
    template = route_template(route.rule) if route is not None else "unmatched"
    method = environ.get("REQUEST_METHOD", "")
    if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        method = "other"  # a client may send any method: a label each would be unbounded
    REQUESTS.labels(template, method, status).inc()
    DURATION.labels(template, method).observe(seconds)


def observe_heard_job(_user_id, seconds):
    """A job that another process's worker settled (jobs.on_settled): its render's seconds."""
    if seconds is not None:  # None: it drew nothing
        JOB_DURATION.observe(seconds)


def observe_job(settled, seconds):
    """A job this process's worker settled (its on_settled): counted, then timed as a heard one."""
    JOBS.labels(settled.outcome).inc()
    observe_heard_job(settled.user_id, seconds)


class ServiceCollector:
    """Read at each scrape: reports by state, jobs waiting, the hashing budget, refusals."""

    def __init__(self, reports_by_state, jobs_waiting):
        self.reports_by_state, self.jobs_waiting = reports_by_state, jobs_waiting

    def collect(self):
        import limits

        counted = dict(self.reports_by_state())
        states = GaugeMetricFamily("reports", "Reports by state", labels=["state"])
        for state in ("pending", "rendering", "done", "failed"):
            states.add_metric([state], counted.get(state, 0))
        yield states
        # memory://: each pending report's job is in the queue. RabbitMQ: the queue's
        # depth, None when it does not answer (no figure rather than a wrong one).
        waiting = counted.get("pending", 0) if config.IN_PROCESS_BROKER else self.jobs_waiting()
        if waiting is not None:
            yield GaugeMetricFamily("report_jobs_waiting", "Jobs queued for workers", value=waiting)
        budget = limits.hash_budget
        about = "Password hashes running now"
        yield GaugeMetricFamily("password_hashes_in_flight", about, value=budget.in_flight)
        about = "Requests refused under pressure (CONTRACT.md), by reason"
        refused = CounterMetricFamily("requests_refused", about, labels=["reason"])
        refused.add_metric(["hashing_budget"], budget.refused)
        refused.add_metric(["signup_rate"], limits.sign_ups.refused)
        refused.add_metric(["login_rate"], limits.logins.refused)
        yield refused


def watch_service(reports_by_state, jobs_waiting):
    registry.register(ServiceCollector(reports_by_state, jobs_waiting))


def exposition():
    """(the body, its Content-Type) of a scrape."""
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


def serve_for_worker():
    if config.WORKER_METRICS_PORT:
        start_http_server(config.WORKER_METRICS_PORT, addr=config.HOST, registry=registry)
