"""The reports section: the render, and POST to PDF end to end.

`./run.sh bench --only reports`; `--only render` for the render alone.
drawing.render against a naive matplotlib page, in this process; then, with the
embedded worker and with one and two worker processes on RabbitMQ, the clients
of bench_report_clients.py in turn, each repetition.
"""

import io
import os
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from unittest import mock

from bench_record import Section, percentile, repetitions_text, spread
from bench_report_clients import (
    GIVE_UP,
    POLL_GRID,
    POLL_INTERVAL,
    POLLERS,
    READ_INTERVAL,
    WAIT,
    polled_burst,
    reports_in_burst,
    reports_one_by_one,
    waiting_burst,
    waiting_one_by_one,
)
from bench_setup import RABBITMQ_URL, Client, progress

from testing import pdf_text  # the tests' helper, found through bench_setup's sys.path

TITLE = "Reports: the render, and POST to PDF end to end"

SAMPLE_REPORT = {
    "username": "player1",
    "email": "player1@example.com",
    "gender": "female",
    "victory_count": 37,
    "loss_count": 21,
    "session_count": 58,
    "total_time": 98_765,
}
A4_INCHES = (8.27, 11.69)


def naive_render(data):
    """The page as matplotlib draws it with nothing tuned: the baseline."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=A4_INCHES)
    figure.text(
        0.1,
        0.95,
        "\n".join(
            [
                f"Game statistics of {data.username}",
                f"Email: {data.email}",
                f"Gender: {data.gender}",
                f"Sessions: {data.session_count}",
                f"Total time: {data.total_time} s",
            ]
        ),
        va="top",
        fontsize=14,
    )
    bars = figure.add_subplot(3, 1, 2)
    bars.bar(["Victories", "Losses"], [data.victory_count, data.loss_count])
    bars.set_title("Victories against losses")
    pie = figure.add_subplot(3, 1, 3)
    pie.pie(
        [data.victory_count, data.loss_count], labels=["Victories", "Losses"], autopct="%1.0f%%"
    )
    pie.set_title("Share of games won")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf")
    return buffer.getvalue()


def time_renders(samples):
    """Median milliseconds of drawing.render and of the naive render, and both PDFs."""
    import matplotlib

    import drawing  # sets its fonts in matplotlib's global settings, hence rc_context below

    data = drawing.ReportData(**SAMPLE_REPORT)

    def service():
        return drawing.render(data)

    def naive():
        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            return naive_render(data)

    service_ms, naive_ms = [], []
    for _ in range(3):  # warm-up: font loading and first-use imports
        service(), naive()
    for _ in range(samples):
        for render, times in ((service, service_ms), (naive, naive_ms)):
            start = time.perf_counter()
            render()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(service_ms), statistics.median(naive_ms), service(), naive()


@dataclass
class FlowResults:
    p50_ms: list = field(default_factory=list)
    p95_ms: list = field(default_factory=list)
    pdfs_per_second: list = field(default_factory=list)
    cpu_busy: list = field(default_factory=list)  # share of all cores, during the bursts
    wait_one_p50_ms: list = field(default_factory=list)  # POST, then one Prefer: wait GET
    wait_one_p95_ms: list = field(default_factory=list)
    wait_one_from_get: list = field(default_factory=list)  # PDFs from that one GET
    polled: list = field(default_factory=list)  # BurstResult of each repetition
    waiting: list = field(default_factory=list)


def measure(run, parts=None):
    """The render, and unless parts is {"render"} the flows end to end."""
    settings = run.settings
    section = Section(TITLE)
    # In this process, with the variables of --server-env as a server would have them.
    with mock.patch.dict(os.environ, run.server_env):
        service_ms, naive_ms, service_pdf, naive_pdf = time_renders(settings.render_samples)
    progress(f"render: service {service_ms:.1f} ms, naive {naive_ms:.1f} ms")
    ratio = naive_ms / service_ms
    username = SAMPLE_REPORT["username"]
    text_stays_text = username in pdf_text(service_pdf)
    section.note(f"Render, in this process, median of {settings.render_samples} after a warm-up:")
    section.table(
        ["render", "ms", "PDF KiB", "text extractable", "naive / service", "target"],
        [
            [
                "drawing.render (the service)",
                f"{service_ms:.1f}",
                f"{len(service_pdf) / 1024:.1f}",
                "yes" if text_stays_text else "no",
                f"{ratio:.1f}x",
                section.target(ratio >= 4 and text_stays_text, "≥ 4x, text stays text"),
            ],
            [
                "naive matplotlib page",
                f"{naive_ms:.1f}",
                f"{len(naive_pdf) / 1024:.1f}",
                "yes" if username in pdf_text(naive_pdf) else "no",
                "",
                "",
            ],
        ],
    )

    if parts is not None and "render" in parts:
        return section

    setups = [("embedded worker", 0)] + (
        [("RabbitMQ, 1 worker", 1), ("RabbitMQ, 2 workers", 2)] if run.rabbitmq else []
    )
    results, problems = measure_report_flow(run, setups)
    gentle_rows(section, settings, setups, results, service_ms)
    polled_rows(section, settings, setups, results)
    waiting_rows(section, settings, setups, results)
    wait_one_rows(section, settings, setups, results, service_ms)
    if not run.rabbitmq:
        section.note(f"RabbitMQ did not answer at {RABBITMQ_URL}: its rows were skipped.")
    section.problems(problems)
    return section


def gentle_rows(section, settings, setups, results, service_ms):
    rows = []
    for name, workers in setups:
        result = results[name]
        slack = 25 if workers == 0 else 40
        p50 = statistics.median(result.p50_ms)
        targets = [
            section.target(
                p50 <= service_ms + slack, f"p50 ≤ {service_ms + slack:.1f} ms (render + {slack})"
            )
        ]
        rate = statistics.median(result.pdfs_per_second)
        if workers == 1:
            targets.append(section.target(rate >= 25, "≥ 25 PDFs/s"))
        share = ""
        if workers == 2:  # no target: two cores shared with the server and RabbitMQ cannot show it
            one_worker = statistics.median(results["RabbitMQ, 1 worker"].pdfs_per_second)
            share = f"{rate / one_worker:.2f}x"
        rows.append(
            [
                name,
                spread(result.p50_ms, 1),
                spread(result.p95_ms, 1),
                spread(result.pdfs_per_second, 1),
                share,
                spread(result.cpu_busy) if result.cpu_busy else "n/a",
                ", ".join(targets),
            ]
        )
    section.note(
        f"End to end over HTTP, a gentle client: POST, then GET every "
        f"{POLL_INTERVAL * 1000:.0f} ms until 200. One by one: {settings.sequential_reports} "
        f"users in turn; burst: {settings.burst_reports} POSTs (distinct users), then one "
        f"client waits for each PDF in turn; {repetitions_text(settings)}."
    )
    section.table(
        [
            "worker",
            "one by one p50 ms",
            "one by one p95 ms",
            "burst PDFs/s",
            "burst / 1 worker",
            "CPU busy in the burst %",
            "targets",
        ],
        rows,
    )
    section.note(
        "CPU busy: the share of the time of all the machine's cores that was not "
        "idle during the burst (/proc/stat), whoever used it: the server, RabbitMQ, "
        "the workers and this client share the cores. Near 100%, more workers on "
        "this machine cannot make PDFs faster; hence no target on two workers against one."
    )


def burst_cells(runs):
    """PDFs/s, p50, p95 and max POST to PDF, GET /users/{id} p99, CPU per PDF."""
    cpu = [run.cpu_ms_per_pdf() for run in runs if run.cpu_ms_per_pdf() is not None]
    service_cpu = [r.service_cpu_ms_per_pdf() for r in runs if r.service_cpu_ms_per_pdf()]
    return [
        spread([run.pdfs_per_second for run in runs], 1),
        spread([run.ms(0.50) for run in runs]),
        spread([run.ms(0.95) for run in runs]),
        spread([run.ms(1) for run in runs]),
        spread([run.read_p99_ms() for run in runs], 1),
        spread(cpu, 1) if cpu else "n/a",
        spread(service_cpu, 1) if service_cpu else "n/a",
    ]


BURST_HEADER = [
    "worker",
    "PDFs/s",
    "p50 ms",
    "p95 ms",
    "max ms",
    "GET /users/{id} p99 ms",
    "CPU ms per PDF",
    "service CPU ms per PDF",
]


def note_odd_answers(section, name, burst, runs):
    odd = sum((run.odd_answers for run in runs), Counter())
    read_failures = sum(run.read_failures for run in runs)
    if odd:
        section.note(
            f"{name}, {burst}: answers other than a PDF or a 202: "
            + ", ".join(f"{kind}: {n:,}" for kind, n in odd.items())
        )
    if read_failures:
        section.note(f"{name}, {burst}: {read_failures} GET /users/{{id}} failed beside it.")


def polled_rows(section, settings, setups, results):
    rows = []
    for name, workers in setups:
        runs = results[name].polled
        targets = ""
        if workers == 0:
            targets = ", ".join(
                [
                    section.target(
                        statistics.median(r.pdfs_per_second for r in runs) >= 40, "≥ 40 PDFs/s"
                    ),
                    section.target(statistics.median(r.ms(0.5) for r in runs) <= 1000, "p50 ≤ 1 s"),
                    section.target(
                        statistics.median(r.read_p99_ms() for r in runs) <= 50,
                        "GET /users/{id} p99 ≤ 50 ms",
                    ),
                ]
            )
        gets_per_second = [
            run.report_gets * run.pdfs_per_second / len(run.seconds) for run in runs if run.seconds
        ]
        rows.append(
            [
                name,
                *burst_cells(runs),
                spread(gets_per_second),
                f"{sum(run.lost for run in runs)}",
                targets,
            ]
        )
    section.note(
        f"Polled burst, clients as a browser page or a script: {settings.burst_reports} POSTs "
        f"(distinct users, signed up before), then {POLLERS} client threads GET the pending "
        f"reports round-robin, each every {POLL_GRID * 1000:.0f} ms (staggered), deaf to "
        f"Retry-After, until every PDF came. PDFs/s: the PDFs over the time from the first "
        f"POST to the last PDF; p50, p95 and max: POST to PDF of each report; "
        f"GET /users/{{id}}: a thread of this benchmark reading one user every "
        f"{READ_INTERVAL * 1000:.0f} ms from before the first POST to the last PDF; CPU ms "
        f"per PDF: the busy CPU time of all the machine's cores meanwhile (/proc/stat: the "
        f"server and its render child, RabbitMQ, the workers, these clients, and anything "
        f"else running) over the PDFs; service CPU: of that, what the server, its children "
        f"and the workers used (/proc/<pid>/stat), which other work on the machine does not "
        f"add to. Lost: not delivered within {GIVE_UP} s, or an error, "
        f"summed over the repetitions; {repetitions_text(settings)}."
    )
    section.table([*BURST_HEADER, "PDF GETs/s", "lost", "targets"], rows)
    for name, _ in setups:
        note_odd_answers(section, name, "polled burst", results[name].polled)


def waiting_rows(section, settings, setups, results):
    rows = []
    for name, _ in setups:
        runs = results[name].waiting
        worst = max(run.ms(1) for run in runs)
        lost = sum(run.lost for run in runs)
        reports = sum(len(run.seconds) + run.lost for run in runs)
        retry_afters = sum((run.retry_afters for run in runs), Counter())
        rows.append(
            [
                name,
                *burst_cells(runs),
                f"{sum(run.first_get_pdfs for run in runs)} of {reports}",
                f"{sum(run.at_once_202 for run in runs)} / {sum(run.waited_202 for run in runs)}",
                " ".join(f"{s} s ×{n}" for s, n in sorted(retry_afters.items())) or "none",
                f"{lost}",
                ", ".join(
                    [
                        section.target(worst <= 3000, "max ≤ 3 s"),
                        section.target(lost == 0, "none lost"),
                    ]
                ),
            ]
        )
    section.note(
        f"Waiting burst: {settings.burst_reports} clients (a thread each) at once, each POSTs "
        f"a report (distinct users) and right after GETs it with `Prefer: wait={WAIT}`; after "
        f"a 202 (beyond MAX_WAITING at once, or after {WAIT} s of waiting) it sleeps the "
        f"202's Retry-After, then GETs with `Prefer: wait={WAIT}` again. The figures as in "
        f"the polled burst; first GET: the PDFs that the GET right after the POST brought, "
        f"summed over the repetitions, as are the 202s and the Retry-After values they "
        f"carried (seconds ×how often); {repetitions_text(settings)}."
    )
    section.table(
        [
            *BURST_HEADER,
            "PDFs from the first GET",
            "202s at once / after waiting",
            "their Retry-After",
            "lost",
            "targets",
        ],
        rows,
    )
    for name, _ in setups:
        note_odd_answers(section, name, "waiting burst", results[name].waiting)


def wait_one_rows(section, settings, setups, results, service_ms):
    rows = []
    bound = service_ms + 30
    for name, _ in setups:
        result = results[name]
        from_get = sum(result.wait_one_from_get)
        reports = settings.sequential_reports * len(result.wait_one_from_get)
        rows.append(
            [
                name,
                spread(result.wait_one_p50_ms, 1),
                spread(result.wait_one_p95_ms, 1),
                f"{from_get} of {reports}",
                ", ".join(
                    [
                        section.target(
                            statistics.median(result.wait_one_p50_ms) <= bound,
                            f"p50 ≤ {bound:.1f} ms (render + 30)",
                        ),
                        section.target(from_get == reports, "every PDF from the one GET"),
                    ]
                ),
            ]
        )
    section.note(
        f"Prefer: wait, one client at a time: {settings.sequential_reports} users in turn, "
        f"each a POST, then one GET with `Prefer: wait={WAIT}` (had it brought a 202, the "
        f"client would follow Retry-After and wait again); POST to PDF; "
        f"{repetitions_text(settings)}."
    )
    section.table(["worker", "p50 ms", "p95 ms", "PDFs from the one waiting GET", "targets"], rows)


def measure_report_flow(run, setups):
    settings = run.settings
    results = {name: FlowResults() for name, _ in setups}
    with ExitStack() as stack:
        services = {"embedded": stack.enter_context(run.service("reports-embedded"))}
        if any(workers for _, workers in setups):
            services["rabbitmq"] = stack.enter_context(
                run.service("reports-rabbitmq", on_rabbitmq=True)
            )
        for service in services.values():
            service.start()
        if "rabbitmq" in services:
            services["rabbitmq"].start_worker()

        for repetition in range(1, settings.repetitions + 1):
            for name, workers in setups:
                service = services["rabbitmq" if workers else "embedded"]
                second_worker = service.start_worker() if workers == 2 else None
                try:
                    time_report_flow(settings, service, results[name], max(workers, 1))
                finally:
                    if second_worker:
                        service.stop_worker(second_worker)
                service.check_running()
                result = results[name]
                polled, waited = result.polled[-1], result.waiting[-1]
                progress(
                    f"reports {repetition}/{settings.repetitions} {name}: "
                    f"p50 {result.p50_ms[-1]:.1f} ms, {result.pdfs_per_second[-1]:.1f} PDFs/s; "
                    f"waiting one by one p50 {result.wait_one_p50_ms[-1]:.1f} ms; polled burst "
                    f"{polled.pdfs_per_second:.1f} PDFs/s, p50 {polled.ms(0.5):.0f} ms, "
                    f"reads p99 {polled.read_p99_ms():.1f} ms; waiting burst "
                    f"{waited.pdfs_per_second:.1f} PDFs/s, max {waited.ms(1):.0f} ms, "
                    f"{waited.lost} lost; load average {os.getloadavg()[0]:.2f}"
                )
        problems = [line for service in services.values() for line in service.problems()]
    return results, problems


def time_report_flow(settings, service, results, workers):
    warm_up = service.sign_up(2 * workers)  # so that every worker has rendered before
    sequential, burst = settings.sequential_reports, settings.burst_reports
    users = service.sign_up(2 * sequential + 3 * burst)
    gentle_one, gentle_burst = users[:sequential], users[sequential : sequential + burst]
    waiting_one = users[sequential + burst : 2 * sequential + burst]
    polled, waiting = users[2 * sequential + burst :][:burst], users[2 * sequential + 2 * burst :]
    reader = warm_up[0].id  # GET /users/{id} beside the bursts
    client = Client(service.port)
    try:
        reports_in_burst(client, warm_up)
        durations = reports_one_by_one(client, gentle_one)
        results.p50_ms.append(percentile(durations, 0.50) * 1000)
        results.p95_ms.append(percentile(durations, 0.95) * 1000)
        rate, busy = reports_in_burst(client, gentle_burst)
        results.pdfs_per_second.append(rate)
        if busy is not None:
            results.cpu_busy.append(busy * 100)
        durations, from_one_get = waiting_one_by_one(client, waiting_one)
        results.wait_one_p50_ms.append(percentile(durations, 0.50) * 1000)
        results.wait_one_p95_ms.append(percentile(durations, 0.95) * 1000)
        results.wait_one_from_get.append(from_one_get)
    finally:
        client.close()
    results.polled.append(polled_burst(service, polled, reader))
    results.waiting.append(waiting_burst(service, waiting, reader))
