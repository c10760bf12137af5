"""The worker's handling of a job's outcome, tested in-process on kombu's
in-process broker (memory://) and, where a connection must really be lost,
on RabbitMQ: a job that raises goes back to the queue, whatever it raised;
a lost ack loses nothing and still tells who waits."""

import errno
import logging
import os
import select
import socket
import struct
import threading
import unittest

from kombu import Connection, Exchange, Queue

import jobs
import worker
from testing import (
    RABBITMQ_URL,
    BoundedTestCase,
    require_rabbitmq,
    wait_until,
)

# memory:// polls its queues: every 20 ms here, not every second (kombu's default).
POLLING = {"polling_interval": 0.02}


class JobsOnABroker(BoundedTestCase):
    """A worker thread consuming a queue of this test's own."""

    broker_url = "memory://"
    test_timeout = 60

    def setUp(self):
        name = f"test-jobs-{os.getpid()}-{self.id().rsplit('.', 1)[-1]}"
        self.queue = Queue(name, Exchange(name, type="direct"), routing_key="report")
        original = jobs.queue
        jobs.queue = self.queue  # the worker consumes jobs.queue
        self.addCleanup(setattr, jobs, "queue", original)
        self.runs, self.settled = [], []

    def start_worker(self, run, worker_class=worker.Worker, **options):
        consumer = worker_class(
            Connection(self.broker_url, heartbeat=jobs.HEARTBEAT, transport_options=POLLING),
            run=run,
            on_settled=[lambda settled, seconds: self.settled.append(settled)],
            failure_pause=0,
            **options,
        )
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(consumer.stop)
        wait_until(lambda: consumer.consuming, what="the worker consuming")
        return consumer

    def publish(self, body):
        with Connection(self.broker_url) as connection:
            connection.Producer().publish(
                body, exchange=self.queue.exchange, routing_key="report", declare=[self.queue]
            )

    def jobs_left(self):
        with Connection(self.broker_url) as connection:
            return self.queue(connection.default_channel).queue_declare(passive=True).message_count


class JobFailureTest(JobsOnABroker):
    def test_a_job_that_raises_timeout_error_goes_back_to_the_queue_and_runs_again(self):
        def run(body):
            self.runs.append(body)
            if len(self.runs) == 1:  # an OSError with ETIMEDOUT is a TimeoutError
                raise OSError(errno.ETIMEDOUT, "Connection timed out")
            return worker.Settled("finished", body["user_id"], "finished job")

        with self.assertLogs("worker", logging.ERROR) as logs:
            self.start_worker(run)
            self.publish({"report_id": 1, "user_id": 7})
            wait_until(lambda: self.settled, what="the job settled after its second run")
        self.assertEqual(len(self.runs), 2)
        self.assertEqual([s.outcome for s in self.settled], ["finished"])
        self.assertEqual(self.jobs_left(), 0)
        self.assertIn("goes back to the queue", logs.records[0].getMessage())

    def test_a_job_that_raises_any_error_goes_back_to_the_queue(self):
        for error in (TimeoutError("socket timed out"), RuntimeError("the database")):
            with self.subTest(error=error):
                self.runs.clear(), self.settled.clear()

                def run(body, error=error):
                    self.runs.append(body)
                    if len(self.runs) == 1:
                        raise error
                    return worker.Settled("finished", body["user_id"], "finished job")

                with self.assertLogs("worker", logging.ERROR):
                    consumer = self.start_worker(run)
                    self.publish({"report_id": 1, "user_id": 7})
                    wait_until(lambda: self.settled, what="the job settled after its second run")
                self.assertEqual(len(self.runs), 2)
                consumer.stop(wait=10)


class CuttableRelay:
    """A TCP relay to RabbitMQ whose connections cut() resets, as a broker that
    goes away does; new connections through it are relayed again."""

    def __init__(self, host="127.0.0.1", port=5672):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self):
        cut, self.sockets = self.sockets, []
        for sock in cut:
            # Linger 0: close() sends a reset, as when the broker's host goes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)  # wakes its relay thread
            sock.close()

    def close(self):
        self.listener.close()
        self.cut()


@require_rabbitmq
class LostAckTest(JobsOnABroker):
    broker_url = RABBITMQ_URL

    def setUp(self):
        super().setUp()
        self.addCleanup(self.delete_queue)  # last: after the worker stopped

    def delete_queue(self):
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            self.queue(connection.default_channel).delete()

    def test_an_ack_lost_with_the_connection_is_logged_without_traceback_and_still_told(self):
        relay = CuttableRelay()
        self.addCleanup(relay.close)
        consuming = []

        class Watched(worker.Worker):
            def on_consume_ready(self, connection, *args, **kwargs):
                consuming.append(connection.connection.sock)
                super().on_consume_ready(connection, *args, **kwargs)

        def run(body):
            self.runs.append(body)
            if len(self.runs) == 1:
                relay.cut()  # the broker goes away right after the report was committed
                # Until the worker's end has the reset: the ack is then sure to fail.
                self.assertTrue(select.select([consuming[-1]], [], [], 5)[0], "no reset came")
                return worker.Settled("finished", body["user_id"], "finished job 1")
            return worker.Settled("dropped", body["user_id"], "dropped job 1: already finished")

        self.broker_url = f"amqp://guest:guest@127.0.0.1:{relay.port}//"
        with self.assertLogs("worker", logging.INFO) as logs:
            consumer = self.start_worker(run, worker_class=Watched)
            self.publish({"report_id": 1, "user_id": 7})
            wait_until(lambda: len(self.settled) == 2, what="the redelivered job dropped")
            consumer.stop(wait=10)
        self.assertEqual([s.outcome for s in self.settled], ["finished", "dropped"])
        lost = [r for r in logs.records if "ack was lost" in r.getMessage()]
        self.assertEqual(len(lost), 1, [r.getMessage() for r in logs.records])
        self.assertIn("finished job 1", lost[0].getMessage())
        self.assertIsNone(lost[0].exc_info)
        self.assertEqual([r for r in logs.records if r.levelno >= logging.ERROR], [])
        self.assertEqual(self.jobs_left(), 0)


if __name__ == "__main__":
    unittest.main()
