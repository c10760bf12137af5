"""A RabbitMQ node of the chaos run's own, which it may stop and start at will.

Other test runs use the machine's RabbitMQ (127.0.0.1:5672): the chaos run
never touches it. Its node, chaos-<pid>@localhost, runs in the foreground as a
child of this process (a session of its own), from the Debian package's
rabbitmq-server script, with everything of its own in a temporary folder:
the AMQP and distribution ports (free ones below the ephemeral range, on
127.0.0.1; others if the first start finds one taken), the Erlang cookie
(its HOME), the data (mnesia, kept across a restart: the durable queue and its
persistent jobs survive, as on a real broker), the logs, a config and an
environment file instead of /etc/rabbitmq's, and no plugins. SIGTERM to that
script stops the node gracefully; whatever is left of its process group is
killed at the end, however the run ends.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from bench_setup import testing

# Debian's script itself: /usr/sbin/rabbitmq-server is a wrapper that, for
# root, runs it as the rabbitmq user, who could not read the run's folder.
SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
START_TIMEOUT = 90  # seconds; it takes about 4 on an idle machine
STOP_TIMEOUT = 60


def server_script():
    for script in SCRIPTS:
        if os.access(script, os.X_OK):
            return script
    return shutil.which("rabbitmq-server")


def free_ports(number):
    """Ports free now, below the range the kernel hands out to outgoing
    connections (and to the tests' free_port()), where no client of the busy
    machine takes them before the node binds them, nor while it restarts."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    ports = set()
    while len(ports) < number:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.add(port)
    return sorted(ports)


class PrivateRabbitMQ:
    def __init__(self):
        self.script = server_script()
        if self.script is None:
            raise RuntimeError(
                "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
            )
        self.folder = tempfile.TemporaryDirectory(prefix="chaos-rabbitmq-")
        self.home = Path(self.folder.name)
        self.node = f"chaos-{os.getpid()}@localhost"
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")
        self.log_path = self.home / "node.log"
        self.log = open(self.log_path, "ab")
        self.process = None
        self.use_ports()

    def use_ports(self):
        home = self.home
        self.port, dist_port = free_ports(2)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        (home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        self.env = {
            **os.environ,
            "HOME": str(home),  # its Erlang cookie: made there at the first start
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),  # .conf is added
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def first_start(self, attempts=3):
        """start(), on other ports should another program take one first."""
        for attempt in range(1, attempts + 1):
            try:
                return self.start()
            except RuntimeError:  # it exited: the log says why
                self.stop()
                if attempt == attempts:
                    raise
                self.use_ports()

    def start(self):
        self.process = subprocess.Popen(
            [self.script],
            env=self.env,
            cwd=self.folder.name,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its process group, killed whole by stop()
        )
        testing.wait_until(self.answers, START_TIMEOUT, f"RabbitMQ node {self.node}")

    def answers(self):
        from kombu import Connection

        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"RabbitMQ node {self.node} exited ({self.process.returncode}):\n{tail}"
            )
        try:
            with Connection(self.url, connect_timeout=1) as connection:
                connection.ensure_connection(max_retries=0)
            return True
        except Exception:
            return False

    def stop(self):
        """Gracefully (the script stops the node on SIGTERM); killed if that takes too long."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:  # the node itself and its helpers, should the script have gone first
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        try:
            self.stop()
        finally:
            self.log.close()
            self.folder.cleanup()
