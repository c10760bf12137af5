"""CONTRACT.md, Configuration (environment variables).

In-process, config.py read with a given environment (a module of its own):
the defaults of CONTRACT.md's table, what each variable changes, and a bad
value stopping the start with a message naming the variable. Over HTTP, a
server started by the tests sees only the environment they give it, never
the caller's shell.
"""

import importlib.util
import os
import unittest
from unittest import mock

import jwt

from testing import (
    PROJECT,
    BoundedTestCase,
    LiveService,
    ServiceClient,
    cors_headers,
    wait_until,
)


class EnvironmentIsolationTest(ServiceClient, BoundedTestCase):
    """What the caller's shell holds does not reach the service under test."""

    def test_service_settings_in_the_callers_environment_do_not_reach_the_service(self):
        meddling = {
            "BROKER_URL": "amqp://guest:guest@127.0.0.1:9//",
            "EMBEDDED_WORKER": "off",
            "CORS_ORIGINS": "https://app.example",
            "JWT_TTL": "7",
            "METRICS": "off",
            "REPORT_QUEUE": "somebody-elses",
        }
        saved = {name: os.environ.get(name) for name in meddling}
        os.environ.update(meddling)
        try:
            self.service = LiveService()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.addCleanup(self.service.stop_in_background)
        for name in meddling:
            self.assertNotIn(name, self.service.env)
        server = self.service.start_server()
        user, token = self.sign_up()
        claims = jwt.decode(token, self.service.env["JWT_SECRET"], algorithms=["HS256"])
        self.assertEqual(claims["exp"] - claims["iat"], 86400)
        answer = self.request("GET", "/users", headers={"Origin": "https://app.example"})
        self.assertEqual(cors_headers(answer), {})
        self.assertEqual(self.request("GET", "/metrics").status, 200)
        # memory:// and its embedded worker, as by default: the report gets made.
        self.assertEqual(
            self.request("GET", "/healthz").json, {"status": "ok", "database": "ok", "broker": "ok"}
        )
        self.assertEqual(self.request("POST", user["pdf"], token=token).status, 202)
        wait_until(
            lambda: self.request("GET", user["pdf"], token=token).status == 200,
            what="the report, made by the embedded worker",
        )
        self.assertIn("consuming report jobs from memory://", server.output())


def settings(**environment):
    """config.py as a process with exactly this environment reads it: a module
    of its own, not the `config` other modules share."""
    spec = importlib.util.spec_from_file_location("config_under_test", PROJECT / "config.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ, environment, clear=True):
        spec.loader.exec_module(module)
    return module


class DefaultsTest(unittest.TestCase):
    """config.py in-process: CONTRACT.md's table of defaults, and what each
    variable changes."""

    def test_an_empty_environment_gets_the_contracts_defaults(self):
        config = settings()
        self.assertEqual((config.HOST, config.PORT), ("127.0.0.1", 5000))
        self.assertEqual(config.DATABASE_URL, "sqlite:///data/app.db")
        self.assertEqual(config.DATA_DIR, PROJECT / "data")
        self.assertEqual(config.BROKER_URL, "memory://")
        self.assertIs(config.EMBEDDED_WORKER, True)
        self.assertEqual(config.JWT_SECRET, "")  # generated when needed: see test_tokens.py
        self.assertEqual(config.JWT_TTL, 86400)
        self.assertEqual(config.WEB_THREADS, 8)
        self.assertEqual(config.CORS_ORIGINS, frozenset())
        self.assertEqual(config.HASH_CONCURRENCY, max(1, (os.cpu_count() or 2) // 2))
        self.assertEqual((config.SIGNUP_RATE, config.LOGIN_RATE), (60, 120))
        self.assertEqual(config.TRUSTED_PROXIES, ())
        self.assertEqual(config.HEADER_TIMEOUT, 10)
        self.assertEqual(config.MAX_WAITING, 4)  # half of WEB_THREADS
        self.assertIs(config.METRICS, True)

    def test_the_embedded_worker_is_on_for_memory_and_off_for_rabbitmq_unless_set(self):
        rabbitmq = "amqp://guest:guest@localhost:5672//"
        self.assertIs(settings(BROKER_URL=rabbitmq).EMBEDDED_WORKER, False)
        self.assertIs(settings(BROKER_URL=rabbitmq, EMBEDDED_WORKER="on").EMBEDDED_WORKER, True)
        self.assertIs(settings(EMBEDDED_WORKER="off").EMBEDDED_WORKER, False)

    def test_max_waiting_is_half_of_web_threads_unless_set(self):
        self.assertEqual(settings(WEB_THREADS="6").MAX_WAITING, 3)
        self.assertEqual(settings(WEB_THREADS="6", MAX_WAITING="5").MAX_WAITING, 5)

    def test_lists_are_comma_separated_and_trimmed(self):
        config = settings(
            CORS_ORIGINS=" https://app.example/, https://admin.example ,",
            TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.1 , 2001:db8::/32",
        )
        self.assertEqual(config.CORS_ORIGINS, {"https://app.example", "https://admin.example"})
        self.assertEqual(
            [str(network) for network in config.TRUSTED_PROXIES],
            ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"],
        )

    def test_a_bad_value_stops_the_start_with_a_message_naming_the_variable(self):
        for name, value in [
            ("PORT", "eighty"),
            ("WEB_THREADS", "0"),
            ("JWT_TTL", "1.5"),
            ("HASH_CONCURRENCY", "-1"),
            ("EMBEDDED_WORKER", "maybe"),
            ("METRICS", "sometimes"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.example"),
            ("JWT_SECRET", "x" * 31),
        ]:
            with self.subTest(name=name, value=value):
                with self.assertRaises(SystemExit) as stopped:
                    settings(**{name: value})
                self.assertIn(name, str(stopped.exception.code))


if __name__ == "__main__":
    unittest.main()
