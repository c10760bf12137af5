"""What /proc says: a process's memory and CPU time, its children, the machine's CPU time."""

import os
from pathlib import Path


def proc_status_mib(pid, field_name):
    """A field of /proc/<pid>/status in MiB: VmRSS is now, VmHWM the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024  # given in kB
    raise RuntimeError(f"no {field_name} for process {pid}")


def child_pids(pid):
    """The process's children (of any of its threads); None if /proc cannot tell."""
    try:
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return None


def maps_matplotlib(pid):
    """Whether any file of matplotlib (its C extensions, above all) is mapped in the process."""
    return any("matplotlib" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def children_peaks(pid):
    """(what each child is, its VmHWM in MiB), for each child of the process (a server
    may render in a child); None if /proc cannot tell."""
    children = child_pids(pid)
    if children is None:
        return None
    peaks = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            peak = proc_status_mib(child, "VmHWM")
            if "resource_tracker" in command:
                kind = "multiprocessing's resource tracker"
            elif maps_matplotlib(child):
                kind = "render child (matplotlib mapped)"
            else:
                kind = f"a child: {command[:60]}"
        except OSError:
            continue  # gone meanwhile
        peaks.append((kind, peak))
    return peaks


def children_peak_mib(pid):
    """The children's VmHWM summed; None if /proc cannot tell."""
    peaks = children_peaks(pid)
    return None if peaks is None else sum(peak for _, peak in peaks)


def cpu_seconds(pid):
    """CPU time used so far by the process and its living children."""
    total = 0
    for each in [pid, *(child_pids(pid) or [])]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def cpu_time_counters():
    """(busy, all) CPU time of the whole machine so far, in clock ticks, from /proc/stat;
    None off Linux."""
    try:
        with open("/proc/stat") as stat:
            times = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = times[3] + times[4]  # idle and iowait
    return sum(times) - idle, sum(times)


def cpu_since(counters):
    """(busy, all) CPU time of all the machine's cores since counters, in seconds; None
    if unknown. busy / all is the share of the machine that was busy."""
    now = cpu_time_counters()
    if counters is None or now is None or now[1] == counters[1]:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (now[0] - counters[0]) / tick, (now[1] - counters[1]) / tick
