"""Timing helpers shared by the benchmark scripts."""
import statistics
import time


def median_time(fn, *, repeats: int = 5, number: int = 3) -> float:
    """Median over `repeats` of the mean wall time of `number` calls of fn() (fn must block)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (e.g. "VmRSS", "VmHWM"; Linux only)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (writes 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
