"""The memory section: the servers' peak RSS, and a worker's growth over its jobs.

`./run.sh bench --only memory`. Each server after the API section's loads and
some reports, with the embedded worker and on RabbitMQ.
"""

from bench_api import api_loads
from bench_load import apply_load
from bench_proc import children_peaks, maps_matplotlib, proc_status_mib
from bench_record import Section
from bench_report_clients import reports_in_burst
from bench_setup import RABBITMQ_URL, Client

TITLE = "Memory"


def apply_api_load(service, seconds, folder):
    """The API section's three loads, for their effect on memory."""
    user = service.sign_up(100)[0]
    for _, load, _ in api_loads(user):
        apply_load(service.port, load, seconds, folder)


def run_report_jobs(service, number):
    users = service.sign_up(number)
    client = Client(service.port)
    try:
        reports_in_burst(client, users, interval=0.05)
    finally:
        client.close()


def measure(run, parts=None):
    settings = run.settings
    section = Section(TITLE)
    first_jobs, all_jobs = settings.memory_jobs
    rows, problems = [], []
    with run.service("memory-embedded") as service:
        service.start()
        apply_api_load(service, settings.memory_load_seconds, run.folder)
        run_report_jobs(service, first_jobs)
        server = service.server.popen.pid
        peak = proc_status_mib(server, "VmHWM")
        children = children_peaks(server) or []
        matplotlib_loaded = maps_matplotlib(server)
        rows += [
            [
                "server, embedded worker",
                "peak (VmHWM)",
                f"{peak:.1f}",
                section.target(peak <= 120, "≤ 120 MiB"),
            ],
            [
                "server, embedded worker",
                "matplotlib mapped (/proc/pid/maps)",
                "yes" if matplotlib_loaded else "no",
                "",
            ],
            *(
                [f"server's child: {kind}", "peak (VmHWM)", f"{peak:.1f}", ""]
                for kind, peak in sorted(children)
            ),
        ]
        problems += service.problems()

    if run.rabbitmq:
        with run.service("memory-rabbitmq", on_rabbitmq=True) as service:
            service.start()
            worker = service.start_worker().popen.pid
            apply_api_load(service, settings.memory_load_seconds, run.folder)
            run_report_jobs(service, first_jobs)
            after_first = proc_status_mib(worker, "VmRSS")
            run_report_jobs(service, all_jobs - first_jobs)
            after_all = proc_status_mib(worker, "VmRSS")
            peak = proc_status_mib(service.server.popen.pid, "VmHWM")
            matplotlib_loaded = maps_matplotlib(service.server.popen.pid)
            problems += service.problems()
        growth = after_all - after_first
        rows += [
            [
                "server on RabbitMQ",
                "peak (VmHWM)",
                f"{peak:.1f}",
                # 60 MiB with glibc's arenas capped (mallopt): a trick that bought
                # 9 MiB (17%), on no promised figure, and went (BENCHMARKS.md).
                section.target(peak <= 80, "≤ 80 MiB"),
            ],
            [
                "server on RabbitMQ",
                "matplotlib mapped (/proc/pid/maps)",
                "yes" if matplotlib_loaded else "no",
                section.target(not matplotlib_loaded, "not imported"),
            ],
            ["worker process", f"VmRSS after {first_jobs} jobs", f"{after_first:.1f}", ""],
            [
                "worker process",
                f"VmRSS after {all_jobs} jobs",
                f"{after_all:.1f}",
                section.target(
                    growth <= 5, f"grows ≤ 5 MiB from job {first_jobs} (grew {growth:+.1f})"
                ),
            ],
        ]
    else:
        section.note(f"RabbitMQ did not answer at {RABBITMQ_URL}: its rows were skipped.")
    section.note(
        f"Each server after the API section's three loads "
        f"({settings.memory_load_seconds} s each) and {first_jobs} reports (on RabbitMQ, "
        f"{all_jobs}); the worker's jobs count from its start. With the embedded worker the "
        "jobs run in a child process of the server, which holds matplotlib: the server "
        "process (the target's) and its children are counted apart."
    )
    section.table(["process", "measure", "MiB", "target"], rows)
    section.problems(problems)
    return section
