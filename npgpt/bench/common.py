"""Small measuring helpers shared by the benchmark workloads."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable
from typing import Literal


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def quartiles(values: Iterable[float]) -> tuple[float, float]:
    """The first and third quartiles (the ends of the interquartile range), interpolated linearly as
    ``numpy.percentile`` does by default: the spread of a set of pair ratios, reported with their median."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quartiles of no values")

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (pos - low) * (ordered[high] - ordered[low])

    return at(0.25), at(0.75)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.seconds = time.perf_counter() - self.start
        return False


def fit_exponent(sizes: Iterable[float], costs: Iterable[float]) -> float:
    """The exponent ``k`` of the power law ``cost ~ c * size**k`` that fits best (least squares in log-log).

    A linear algorithm gives ``k`` near 1, a quadratic one near 2: the tables of
    docs/benchmarks.md ("How cost grows") report this number next to the figures.
    """
    import math

    xs = [math.log(s) for s in sizes]
    ys = [math.log(c) for c in costs]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"fit_exponent needs at least two (size, cost) pairs, got {len(xs)} sizes and {len(ys)} costs")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_exponent needs at least two different sizes")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
