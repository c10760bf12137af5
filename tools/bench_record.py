"""The record: figures as markdown tables with each target met or missed, and BENCHMARKS.md."""

import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench_ceiling import WEB_THREADS
from bench_setup import PRODUCTION_SCRYPT_N, PROJECT, RELAXED_LIMITS, SCRYPT_N

PACKAGES = ("bottle", "waitress", "SQLAlchemy", "PyJWT", "kombu", "matplotlib")


@dataclass
class Section:
    """A "## title" of BENCHMARKS.md: notes and tables, and the targets met and missed."""

    title: str
    lines: list = field(default_factory=list)
    passed: int = 0
    failed: int = 0

    def table(self, header, rows):
        widths = [
            max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)
        ]

        def line(cells):
            return (
                "| "
                + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
                + " |"
            )

        self.lines += [
            "",
            line(header),
            line(["-" * w for w in widths]),
            *(line(row) for row in rows),
            "",
        ]

    def note(self, text):
        self.lines.append(text)

    def target(self, passed, description):
        """A table cell: the target and whether the figure meets it."""
        if passed:
            self.passed += 1
        else:
            self.failed += 1
        return f"{description}: {'pass' if passed else '**FAIL**'}"

    def problems(self, problems):
        """The log lines of the services that say something went wrong, if any."""
        if problems:
            self.note(f"The service logged {len(problems)} problem line(s); the first ones:")
            self.lines += ["", *(f"    {line}" for line in problems[:10]), ""]

    def markdown(self):
        text = "\n".join([f"## {self.title}", "", *self.lines]).strip()
        return re.sub(r"\n{3,}", "\n\n", text) + "\n"


def percentile(values, fraction):
    """Linear interpolation between the closest ranks, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values, digits=0):
    """The median, with min and max when there are several values."""

    def show(value):
        return f"{value:,.{digits}f}"

    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


def repetitions_text(settings):
    if settings.repetitions == 1:
        return "one repetition"
    return f"{settings.repetitions} interleaved repetitions: median (min–max)"


LEDGER = "## What each trick buys"
CHAOS = "## Chaos run"  # `./run.sh soak --chaos 600`'s record (tools/chaos.py), pasted in


def ledger_of(text):
    """The hand-kept sections of a BENCHMARKS.md's text, the chaos run's record and
    the ledger of tricks (a benchmark run measures neither, so each run's record
    carries them over), or ""."""
    kept = []
    for title in (CHAOS, LEDGER):
        if title in text:
            section = title + text.split(title, 1)[1]
            kept.append(section.split("\n## ", 1)[0].rstrip() + "\n")
    return "\n".join(kept)


def document(command, date, minutes, quick, machine, sections, ledger=""):
    """BENCHMARKS.md: the command, the machine, the targets met and missed, the
    sections, and the ledger of tricks carried over."""
    passed = sum(s.passed for s in sections)
    failed = sum(s.failed for s in sections)
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"`{command}`, {date:%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes"
            + (" (quick smoke run: not the figures of record)" if quick else "")
            + ".",
            "",
            *machine,
            "",
            f"Targets: {passed} met, {failed} missed.",
            "",
            *(section.markdown() for section in sections),
            *([ledger] if ledger else []),
        ]
    )


def machine_lines(load_generator, rabbitmq, load_average, server_env):
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    extra = ", ".join(f"{name}={value}" for name, value in server_env.items())
    return [
        f"- Machine: {os.cpu_count()} cores, {cpu}",
        f"- Python {platform.python_version()}; {versions}",
        f"- Load generator: {load_generator}",
        f"- RabbitMQ: {rabbitmq or 'not answering (its parts skipped)'}",
        # Anything else running on the machine shows up here, and in the figures.
        f"- Load average when the run started: {load_average:.2f} (1 minute)",
        f"- Service revision: {git_revision()}",
        f"- Service settings: defaults ({WEB_THREADS} Waitress threads, SQLite in WAL), "
        f"except SCRYPT_N={SCRYPT_N} (production: {PRODUCTION_SCRYPT_N}) to make the "
        "benchmark's sign-ups fast, and "
        + ", ".join(f"{name}={value}" for name, value in RELAXED_LIMITS.items())
        + " because its set-up signs up and logs in from one address far faster than the "
        "defaults allow; no measured request hashes a password. The Under abuse section "
        f"alone runs with every default, SCRYPT_N={PRODUCTION_SCRYPT_N} and the abuse "
        "limits included."
        + (f" Every server and worker also ran with {extra} (--server-env)." if extra else ""),
    ]


def git_revision():
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
        ).stdout
        files = ", ".join(line[3:] for line in changed.splitlines())
        return revision + (f" with uncommitted changes to {files}" if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
