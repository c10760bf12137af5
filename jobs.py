"""The job queue between servers and workers, on kombu.

One durable queue of small persistent messages, {"report_id", "user_id"}:
the worker reads the user's data itself when the job runs. Every wait on the
broker is bounded, because kombu retries forever by default in places.
Importing this module connects to nothing: the publisher's connection is
made on the first publish.
"""

import logging
from functools import cache

from kombu import Connection, Exchange, Queue, pools
from kombu.exceptions import OperationalError

import config

log = logging.getLogger("jobs")

exchange = Exchange(config.REPORT_QUEUE, type="direct", durable=True)
queue = Queue(config.REPORT_QUEUE, exchange, routing_key="report", durable=True)

# Give up on an unreachable broker after about two seconds.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CONNECT_TIMEOUT = 2  # seconds, per attempt


class BrokerUnavailable(Exception):
    pass


def connect(heartbeat=0):
    """A new connection; the worker asks for heartbeats, publishers need none."""
    return Connection(
        config.BROKER_URL,
        connect_timeout=CONNECT_TIMEOUT,
        heartbeat=heartbeat,
        transport_options={
            **RETRY_POLICY,
            "confirm_publish": True,
            # memory:// is polled: keep its latency low
            "polling_interval": 0.005,
        },
    )


@cache
def _publisher_connection():
    """Shared by the server's threads, made on the first publish: kombu's
    producer pool gives each publish a producer (and channel) of its own."""
    return connect()


@cache
def connection_errors():
    """What a broker going away raises; anything else deserves a traceback."""
    return (OSError, OperationalError, *_publisher_connection().connection_errors)


def publish(report_id, user_id):
    """Queue a report job, confirmed by the broker; BrokerUnavailable if it cannot take it."""
    try:
        with pools.producers[_publisher_connection()].acquire(block=True, timeout=5) as producer:
            producer.publish(
                {"report_id": report_id, "user_id": user_id},
                exchange=exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
                delivery_mode="persistent",
                retry=True,
                retry_policy=RETRY_POLICY,
            )
    except Exception as error:
        log.warning("could not publish report job %s: %r", report_id, error)
        raise BrokerUnavailable(str(error)) from error


def broker_is_up():
    if config.BROKER_URL.startswith("memory://"):
        return True  # in this very process
    try:
        with connect() as connection:
            connection.ensure_connection(max_retries=0, timeout=CONNECT_TIMEOUT)
        return True
    except Exception:
        return False
