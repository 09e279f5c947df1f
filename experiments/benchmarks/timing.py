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
