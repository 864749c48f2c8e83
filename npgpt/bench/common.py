"""Small measuring helpers shared by the benchmark workloads."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal


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


def find_mpiexec(workload: str) -> str:
    """The ``mpiexec`` to start ranks with: the one next to this Python (the mpich wheel's, which
    mpi4py was built against) where there is one, else the first on PATH; SystemExit without one."""
    here = pathlib.Path(sys.executable).with_name("mpiexec")
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit(f"npgpt.bench {workload} --ranks: mpiexec not found (pip install -e \".[mpi]\")")
    return found


def side_in_child(workload: str, side: str, flags: Sequence[str],
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m npgpt.bench WORKLOAD --json --side SIDE FLAGS...`` in a fresh interpreter.

    Each side of a comparison runs in its own process, so that its peak RSS and its threads are its
    own and the other side's imports cannot warm its caches. The caller reads the result with
    :func:`child_result` (or inspects a failure first, as ``bench lora`` does for a missing ``trl``).
    """
    command = [sys.executable, "-m", "npgpt.bench", workload, "--json", "--side", side, *flags]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})


def child_result(workload: str, side: str, out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line a side printed last, or ``SystemExit`` with the end of its error output."""
    if out.returncode != 0:
        raise SystemExit(f"npgpt.bench {workload}: the {side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
