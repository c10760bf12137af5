"""CONTRACT.md, Configuration (environment variables): the service reads its
settings from its own environment only.
"""

import os
import unittest

import jwt

from testing import (
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
        self.addCleanup(self.service.stop)
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


if __name__ == "__main__":
    unittest.main()
