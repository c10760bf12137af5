"""CONTRACT.md, Service: GET /healthz, GET /openapi.json and GET /metrics.

The OpenAPI document is read as a client generator would; the metrics are
scraped and parsed as Prometheus parses them. Hostile input generated from
the document is test_schema.py's (schemathesis); what operators get beyond
the contract (process figures, promtool) is test_operations.py's.
"""

import os
import re
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from testing import (
    RABBITMQ_URL,
    STAT_NAMES,
    TEST_DATABASE_URL,
    ApiTestCase,
    QueueOfItsOwn,
    ReportClient,
    ServiceTestCase,
    require_rabbitmq,
    unique_name,
    wait_until,
)

ROUTES = {
    "/users": {"get", "post"},
    "/users/me": {"get"},
    "/users/{id}": {"get", "put", "patch", "delete"},
    "/users/{id}/stats": {"get", "put", "patch"},
    "/users/{id}/pdf": {"get", "post"},
    "/login": {"post"},
    "/logout": {"post"},
    "/leaderboard": {"get"},
    "/healthz": {"get"},
    "/openapi.json": {"get"},
}
CONTRACT_STATUSES = {
    ("/users", "get"): {"200", "400"},
    ("/users", "post"): {"201", "400", "409"},
    ("/users/me", "get"): {"200", "401"},
    ("/users/{id}", "get"): {"200", "404"},
    ("/users/{id}", "put"): {"200", "400", "401", "403", "404", "409"},
    ("/users/{id}", "patch"): {"200", "400", "401", "403", "404", "409"},
    ("/users/{id}", "delete"): {"204", "401", "403", "404"},
    ("/users/{id}/stats", "get"): {"200", "401", "404"},
    ("/users/{id}/stats", "put"): {"200", "400", "401", "403", "404"},
    ("/users/{id}/stats", "patch"): {"200", "400", "401", "403", "404"},
    ("/users/{id}/pdf", "post"): {"202", "401", "403", "404", "503"},
    ("/users/{id}/pdf", "get"): {"200", "202", "401", "404"},
    ("/login", "post"): {"200", "400", "401", "429"},
    ("/logout", "post"): {"204", "400", "401"},
    ("/leaderboard", "get"): {"200", "400", "401"},
    ("/healthz", "get"): {"200", "503"},
    ("/openapi.json", "get"): {"200"},
}
PROTECTED = {
    ("/users/me", "get"),
    ("/users/{id}", "put"),
    ("/users/{id}", "patch"),
    ("/users/{id}", "delete"),
    ("/users/{id}/stats", "get"),
    ("/users/{id}/stats", "put"),
    ("/users/{id}/stats", "patch"),
    ("/users/{id}/pdf", "post"),
    ("/users/{id}/pdf", "get"),
    ("/logout", "post"),
    ("/leaderboard", "get"),
}
WITH_BODY = {
    ("/users", "post"),
    ("/users/{id}", "put"),
    ("/users/{id}", "patch"),
    ("/users/{id}/stats", "put"),
    ("/users/{id}/stats", "patch"),
    ("/login", "post"),
    ("/logout", "post"),
}
VERBS = {"get", "put", "post", "patch", "delete", "options", "head"}


def allows_null(schema):
    kinds = schema.get("type")
    options = schema.get("anyOf", []) + schema.get("oneOf", [])
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(allows_null(option) for option in options)
    )


class ServiceTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.document = self.assertJson(self.request("GET", "/openapi.json"), 200)

    def resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def operations(self):
        """{(path with its parameter spelt {id}, verb): operation}"""
        return {
            (re.sub(r"\{[^}]*\}", "{id}", path), verb): self.resolve(operation)
            for path, item in self.document["paths"].items()
            for verb, operation in self.resolve(item).items()
            if verb in VERBS
        }

    def json_schema(self, holder):
        return self.resolve(self.resolve(holder)["content"]["application/json"]["schema"])

    def test_healthz_reports_the_database_ok(self):
        body = self.assertJson(self.request("GET", "/healthz"), 200)
        self.assertEqual(body, {"status": "ok", "database": "ok", "broker": "ok"})

    def test_every_operation_has_a_unique_operation_id_a_summary_and_a_known_tag(self):
        tags = {tag["name"] for tag in self.document["tags"]}
        ids = []
        for (path, verb), operation in self.operations().items():
            with self.subTest(path=path, verb=verb):
                self.assertRegex(operation.get("operationId", ""), r"^[a-z][A-Za-z]+$")
                self.assertTrue(operation.get("summary"))
                self.assertTrue(operation.get("tags"))
                self.assertLessEqual(set(operation["tags"]), tags)
                ids.append(operation["operationId"])
        self.assertEqual(len(ids), len(set(ids)), sorted(ids))
        self.assertGreaterEqual(len(ids), sum(len(verbs) for verbs in ROUTES.values()))

    def test_openapi_is_3_1_and_describes_every_route(self):
        self.assertRegex(self.document["openapi"], r"^3\.1\.")
        self.assertIn("title", self.document["info"])
        operations = self.operations()
        for path, verbs in ROUTES.items():
            for verb in verbs:
                self.assertIn((path, verb), operations)

    def test_openapi_names_every_status_of_the_contract(self):
        operations = self.operations()
        for route, statuses in CONTRACT_STATUSES.items():
            with self.subTest(route=route):
                self.assertLessEqual(statuses, set(operations[route]["responses"]))

    def test_openapi_has_request_and_response_schemas(self):
        for route, operation in self.operations().items():
            with self.subTest(route=route):
                if route in WITH_BODY:
                    self.assertEqual(self.json_schema(operation["requestBody"])["type"], "object")
                for status, answer in operation["responses"].items():
                    # Not JSON: a PDF, and the Prometheus text of /metrics.
                    not_json = route == ("/users/{id}/pdf", "get") or (
                        route == ("/metrics", "get") and status == "200"
                    )
                    if status not in ("204", "304") and not not_json:
                        self.assertIsInstance(self.json_schema(answer), dict, status)

    def test_openapi_has_the_bearer_scheme_on_exactly_the_protected_routes(self):
        schemes = self.document["components"]["securitySchemes"]
        bearer = {
            name
            for name, scheme in schemes.items()
            if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer"
        }
        self.assertTrue(bearer)
        for route, operation in self.operations().items():
            with self.subTest(route=route):
                security = operation.get("security", self.document.get("security", []))
                if route in PROTECTED:
                    self.assertTrue(security)
                    for requirement in security:
                        self.assertTrue(set(requirement) & bearer, requirement)
                else:
                    self.assertTrue(not security or {} in security, security)

    def test_openapi_schemas_state_the_validation_rules(self):
        operations = self.operations()
        for route in [("/users", "post"), ("/users/{id}", "put"), ("/users/{id}", "patch")]:
            with self.subTest(route=route):
                schema = self.json_schema(operations[route]["requestBody"])
                fields = {name: self.resolve(rule) for name, rule in schema["properties"].items()}
                username = fields["username"]
                self.assertEqual((username["minLength"], username["maxLength"]), (1, 32))
                self.assertRegex("a.b-c_1", username["pattern"])
                self.assertNotRegex("a b", username["pattern"])
                self.assertEqual(
                    (fields["password"]["minLength"], fields["password"]["maxLength"]), (1, 256)
                )
                for name, length in [("email", 254), ("gender", 32), ("profile_pic", 2048)]:
                    self.assertEqual(fields[name]["maxLength"], length, name)
                    self.assertTrue(allows_null(fields[name]), name)
        self.assertLessEqual(
            {"username", "password"},
            set(self.json_schema(operations[("/users", "post")]["requestBody"])["required"]),
        )
        for verb in ("put", "patch"):
            schema = self.json_schema(operations[("/users/{id}/stats", verb)]["requestBody"])
            for name in STAT_NAMES:
                with self.subTest(verb=verb, field=name):
                    rule = self.resolve(schema["properties"][name])
                    self.assertEqual((rule["type"], rule["minimum"]), ("integer", 0))
                    self.assertTrue(
                        rule.get("maximum") == 2**63 - 1 or rule.get("exclusiveMaximum") == 2**63,
                        rule,
                    )
        listing = operations[("/users", "get")]["parameters"]
        parameters = {
            parameter["name"]: parameter["schema"] for parameter in map(self.resolve, listing)
        }
        limit = parameters["limit"]
        self.assertEqual((limit["minimum"], limit["maximum"]), (1, 1000))
        self.assertEqual(parameters["offset"]["minimum"], 0)


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


@unittest.skipIf(TEST_DATABASE_URL, "it breaks an SQLite file; there is none on PostgreSQL")
class BrokenDatabaseTest(ApiTestCase):
    log_must_stay_clean = False  # a broken database may well be logged
    share_server = False  # it breaks the database

    def test_healthz_is_503_naming_the_database_when_it_is_unusable(self):
        self.sign_up()
        for path in self.service.dir.glob("app.db*"):
            with open(path, "r+b") as file:
                file.write(os.urandom(max(path.stat().st_size, 4096)))
        body = self.assertJson(self.request("GET", "/healthz"), 503)
        self.assertEqual(body, {"status": "down", "database": "down", "broker": "ok"})


def samples(text):
    """{(metric sample name, frozenset of labels): value} of a Prometheus text page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Scraping:
    def scrape(self, port=None):
        answer = self.request("GET", "/metrics", port=port)
        self.assertEqual(answer.status, 200, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("text/plain"))
        return samples(answer.body.decode())


class MetricsTest(Scraping, ReportClient, ServiceTestCase):
    def test_requests_are_counted_by_route_template_never_by_raw_path(self):
        user, token = self.sign_up()
        for _ in range(3):
            self.fetch_user(user["id"])
        self.request("GET", "/users/999999999")
        scraped = self.scrape()
        by_route = {
            labels: value
            for (name, labels), value in scraped.items()
            if name == "http_requests_total"
        }
        ok = frozenset({"route": "/users/{id}", "method": "GET", "status": "200"}.items())
        missing = frozenset({"route": "/users/{id}", "method": "GET", "status": "404"}.items())
        self.assertGreaterEqual(by_route[ok], 3)
        self.assertGreaterEqual(by_route[missing], 1)
        routes = {dict(labels)["route"] for labels in by_route}
        self.assertFalse([route for route in routes if any(c.isdigit() for c in route)], routes)
        # Durations too, under the same template.
        durations = {
            dict(labels)["route"]
            for (name, labels) in scraped
            if name == "http_request_duration_seconds_count"
        }
        self.assertIn("/users/{id}", durations)

    def test_reports_by_state_and_job_durations_follow_the_reports(self):
        user, token = self.new_user_with_stats(victory_count=1)
        self.post_report(user, token)
        self.wait_for_report(user, token)
        scraped = wait_until(
            lambda: (
                (s := self.scrape()).get(("report_job_duration_seconds_count", frozenset())) and s
            ),
            what="the job's duration in the metrics",
        )
        self.assertGreaterEqual(scraped[("reports", frozenset({"state": "done"}.items()))], 1)
        self.assertIn(("report_jobs_waiting", frozenset()), scraped)
        self.assertGreaterEqual(
            scraped[("report_jobs_total", frozenset({"outcome": "finished"}.items()))], 1
        )

    def test_metrics_hold_no_user_data(self):
        user, token = self.sign_up()
        self.fetch_user(user["id"])
        text = self.request("GET", "/metrics").body.decode()
        self.assertNotIn(user["username"], text)
        self.assertNotIn(token, text)

    def test_scrapes_during_load_parse_and_counts_only_grow(self):
        user, _ = self.sign_up()
        stop = threading.Event()

        def load():
            while not stop.is_set():
                self.fetch_user(user["id"])

        with ThreadPoolExecutor(4) as pool:
            loaders = [pool.submit(load) for _ in range(3)]
            key = (
                "http_requests_total",
                frozenset({"route": "/users/{id}", "method": "GET", "status": "200"}.items()),
            )
            counts = [self.scrape().get(key, 0) for _ in range(5)]
            stop.set()
            for loader in loaders:
                loader.result(timeout=30)
        self.assertEqual(counts, sorted(counts))
        self.assertGreater(counts[-1], counts[0])


JOBS_WAITING = ("report_jobs_waiting", frozenset())


def pending_reports(client, number):
    """Posts a report for each of `number` new users, with no worker to take them."""
    for _ in range(number):
        client.post_report(*client.new_user_with_stats(victory_count=1))


class JobsWaitingInProcessTest(Scraping, ReportClient, ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off"}

    def test_jobs_waiting_are_the_pending_reports_on_the_in_process_broker(self):
        pending_reports(self, 3)
        scraped = self.scrape()
        self.assertEqual(scraped[("reports", frozenset({"state": "pending"}.items()))], 3)
        self.assertEqual(scraped[JOBS_WAITING], 3)


@require_rabbitmq
class JobsWaitingOnRabbitMQTest(QueueOfItsOwn, Scraping, ReportClient, ServiceTestCase):
    """One server on a queue of this class's own, emptied before each test."""

    queue_name = unique_name("test-metrics-")
    service_env = {"BROKER_URL": RABBITMQ_URL, "REPORT_QUEUE": queue_name}

    def test_jobs_waiting_are_the_depth_of_the_queue(self):
        pending_reports(self, 2)
        self.assertEqual(self.scrape()[JOBS_WAITING], 2)

    def test_the_servers_metrics_have_the_render_durations_of_separate_workers(self):
        user, token = self.new_user_with_stats(victory_count=1)
        worker = self.service.start_worker()
        self.addCleanup(worker.stop)
        self.post_report(user, token)
        self.wait_for_report(user, token)
        count = ("report_job_duration_seconds_count", frozenset())
        wait_until(
            lambda: self.scrape().get(count), what="a render duration in the server's metrics"
        )


class JobsWaitingUnknownTest(Scraping, ServiceTestCase):
    service_env = {"BROKER_URL": "amqp://guest:guest@127.0.0.1:9//"}

    def test_no_figure_of_jobs_waiting_when_the_broker_does_not_answer(self):
        scraped = self.scrape()
        self.assertNotIn(JOBS_WAITING, scraped)
        self.assertIn(("reports", frozenset({"state": "pending"}.items())), scraped)


class MetricsOffTest(ServiceTestCase):
    service_env = {"EMBEDDED_WORKER": "off", "METRICS": "off"}

    def test_metrics_off_is_a_json_404(self):
        answer = self.request("GET", "/metrics")
        self.assertEqual(answer.status, 404, answer.body)
        self.assertTrue(answer.header("Content-Type").startswith("application/json"))


if __name__ == "__main__":
    unittest.main()
