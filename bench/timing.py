"""The one way bench/ times a piece of work: warm-up runs, then the minimum of timed rounds
(the minimum is the run least disturbed by the rest of a shared, noisy machine)."""

from __future__ import annotations

import math
import time


def min_seconds(fn, rounds: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
