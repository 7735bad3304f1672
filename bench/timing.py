"""Warm-ups, repeats and the two statistics every figure reports: median and p90.

One timed call is wall-clock (``time.perf_counter``). The first calls of a stage pay for allocator
growth, thread-pool start and ORT/llama.cpp graph planning, so ``warmup`` calls run untimed first.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Stats:
    """Summary of ``n`` timings in milliseconds (or any one unit: the arithmetic does not care)."""

    median: float
    p90: float
    min: float
    max: float
    n: int
    samples: tuple[float, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples"] = list(self.samples)
        return d


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method), ``q`` in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Stats:
    return Stats(
        median=percentile(values, 50),
        p90=percentile(values, 90),
        min=min(values),
        max=max(values),
        n=len(values),
        samples=tuple(values),
    )


def measure(fn: Callable[[], object], repeat: int, warmup: int = 1) -> Stats:
    """Milliseconds per call of ``fn``: ``warmup`` untimed calls, then ``repeat`` timed ones."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def reference_row(seconds: float, runs: list[dict], parts: tuple[str, ...]) -> dict:
    """One audio length's row for a whole-file (non-streaming) reference: each run's ``total_ms`` and ``parts``
    summarized, and the real-time factor; no time to first token, as its first token comes at the end."""
    total = [r["total_ms"] for r in runs]
    return {
        "seconds": seconds,
        "total_ms": summarize(total).to_dict(),
        "rtf": summarize([x / (1000 * seconds) for x in total]).to_dict(),
        "ttft_ms": None,
        "parts_ms": {k: summarize([r[k] for r in runs]).to_dict() for k in parts},
    }
