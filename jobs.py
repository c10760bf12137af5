"""The job queue between servers and workers, on kombu.

One durable queue of small persistent messages, {"report_id", "user_id"}: the worker reads the
user's data itself when the job runs. Beside it, news of settled jobs for the requests that wait on
them (waiting.py). Every wait on the broker is bounded, because kombu retries forever by default in
places. Importing this module connects to nothing.
"""

import logging
import os
import socket
import time
import uuid
from contextlib import suppress

from kombu import Connection, Consumer, Exchange, Queue, pools

import config

log = logging.getLogger("jobs")

exchange = Exchange(config.REPORT_QUEUE, type="direct", durable=True)
queue = Queue(config.REPORT_QUEUE, exchange, routing_key="report", durable=True)

# Give up on an unreachable broker after about two seconds.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CONNECT_TIMEOUT = 2  # seconds, per attempt
HEARTBEAT = 30  # seconds, for a consumer; the broker drops one that misses two


class BrokerUnavailable(Exception):
    pass


def connect(heartbeat=0):
    """A new connection; the worker asks for heartbeats, publishers need none."""
    # memory:// is polled: keep its latency low.
    options = {**RETRY_POLICY, "confirm_publish": True, "polling_interval": 0.005}
    return Connection(
        config.BROKER_URL,
        connect_timeout=CONNECT_TIMEOUT,
        heartbeat=heartbeat,
        transport_options=options,
    )


# Shared by the server's threads (it connects on the first publish): kombu's
# producer pool gives each publish a producer (and channel) of its own.
_publisher = connect()


def _publish(body, timeout, **where):
    """Sends body where it says, confirmed; raises whatever the broker's absence raised."""
    with pools.producers[_publisher].acquire(block=True, timeout=timeout) as producer:
        producer.publish(body, serializer="json", retry=True, retry_policy=RETRY_POLICY, **where)


def publish(report_id, user_id):
    """Queue a report job, confirmed by the broker; BrokerUnavailable if it cannot take it."""
    job = {"report_id": report_id, "user_id": user_id}
    try:
        _publish(job, timeout=5, exchange=exchange, routing_key=queue.routing_key, declare=[queue])
    except Exception as error:
        log.warning("could not publish report job %s: %r", report_id, error)
        raise BrokerUnavailable(str(error)) from error


def waiting_count():
    """Jobs in RabbitMQ's queue, not yet taken by a worker; None when unknown."""
    try:
        with connect() as connection:
            return queue(connection.default_channel).queue_declare(passive=True).message_count
    except Exception:
        return None  # not declared yet, or the broker is away: no figure rather than a wrong one


def broker_is_up():
    """Whether the broker takes the queue's declaration (idempotent: as every publish does)."""
    try:
        with connect() as connection:
            if not config.IN_PROCESS_BROKER:
                connection.ensure_connection(max_retries=0, timeout=CONNECT_TIMEOUT)
            queue(connection.default_channel).declare()
        return True
    except Exception:
        return False


# News of settled jobs, for the requests waiting on them (waiting.py). On memory://
# the worker is in this very process: the news is a call. On RabbitMQ every worker
# broadcasts it on a fanout exchange, every server hears it on a queue of its own.
news_exchange = Exchange(
    f"{config.REPORT_QUEUE}.settled", type="fanout", durable=False, delivery_mode="transient"
)
_listeners = []


def on_settled(callback):
    """callback(user_id, seconds the job took) for every job settled, in any worker."""
    _listeners.append(callback)


def announce_settled(user_id, seconds):
    """Tells the servers that a job of the user settled (done, failed or dropped)."""
    if config.IN_PROCESS_BROKER:
        for callback in _listeners:
            callback(user_id, seconds)
        return
    news = {"user_id": user_id, "seconds": seconds}
    try:
        _publish(news, timeout=1, exchange=news_exchange, routing_key="", declare=[news_exchange])
    except Exception as error:  # a waiting request then waits out its N seconds
        log.warning("could not announce a settled job of user %s: %r", user_id, error)


def listen_for_news(on_connected):
    """Hears the workers' news for as long as the process lives (a server's thread, on
    RabbitMQ). on_connected() is called each time it listens again: news sent while
    it was away was lost with its queue, so whoever waits on news should look again."""
    name = f"{news_exchange.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    mine = Queue(name, news_exchange, exclusive=True, auto_delete=True, durable=False)

    def heard(body, message):
        if isinstance(body, dict) and type(body.get("user_id")) is int:
            seconds = body.get("seconds")
            for callback in _listeners:
                callback(body["user_id"], seconds if isinstance(seconds, float) else None)

    while True:
        try:
            with connect(heartbeat=HEARTBEAT) as connection:
                connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
                with Consumer(connection, [mine], callbacks=[heard], accept=["json"], no_ack=True):
                    on_connected()
                    while True:
                        with suppress(TimeoutError):  # nothing came within the second
                            connection.drain_events(timeout=1)
                        connection.heartbeat_check()
        except Exception as error:
            log.warning("not hearing job news (%r); listening again in 2 s", error)
            time.sleep(2)
