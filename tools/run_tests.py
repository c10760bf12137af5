"""./run.sh test: every test module, in two unittest processes at once.

One unittest process kept about one core of this machine's two busy (a
test mostly starts servers and browsers, and waits on them): two lanes of
`python -m unittest discover` share the modules, and the suite on SQLite
takes 2 min 29 s to 2 min 42 s instead of 3 min 26 s. The modules that use
RabbitMQ run in one lane, the others in the other: some tests stop
RabbitMQ's app, and no test of the other lane may be using it then. The
lanes' reports are printed whole, one after the other, once each has ended;
the run fails if either lane fails.

Arguments that name tests (`./run.sh test test_users`) run just those, in
one process, as `python -m unittest` does; options alone (-v, -f) go to
both lanes.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def lanes():
    """The test modules' names: those that use RabbitMQ, and the others."""
    modules = sorted(PROJECT.glob("test_*.py"))
    broker = [m.stem for m in modules if "rabbitmq" in m.read_text(encoding="utf-8").lower()]
    return broker, [m.stem for m in modules if m.stem not in broker]


def main(arguments):
    if any(not argument.startswith("-") for argument in arguments):
        os.execv(sys.executable, [sys.executable, "-m", "unittest", *arguments])
    started = time.monotonic()
    running = []
    for names in lanes():
        # discover, not the names: test_container.py skips when discovery finds it.
        chosen = [option for name in names for option in ("-k", f"{name}.*")]
        log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "unittest", "discover", *arguments, *chosen]
        # A process group of its own: stopping the run stops each lane's servers and browsers too.
        lane = subprocess.Popen(command, cwd=PROJECT, stdout=log, stderr=log, process_group=0)
        running.append((names, lane, log))

    def pass_on(signum, _frame):
        for _, lane, _ in running:
            with contextlib.suppress(ProcessLookupError):  # that lane and its group ended
                os.killpg(lane.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, pass_on)
    failed = False
    for names, lane, log in running:
        lane.wait()
        log.seek(0)
        sys.stdout.write(f"\n=== {' '.join(names)}\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(log.read())
        failed = failed or lane.returncode != 0
    print(f"\n{'FAILED' if failed else 'OK'}: two lanes in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
