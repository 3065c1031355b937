"""Jobs that log when they ran, and the peak number that ran at once (for the bound of
``parallel()``'s ``nparallel``).

Importable from tests and benchmarks (pyproject.toml puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import json

from seamless.transformer import delayed

__all__ = ["interval", "max_overlap"]


@delayed
def interval(log, tag, seconds):
    """Sleep ``seconds``; record [tag, start, end] in ``log`` (one JSON line per job)."""
    import json
    import time

    start = time.time()
    time.sleep(seconds)
    end = time.time()
    with open(log, "a") as f:
        f.write(json.dumps([tag, start, end]) + "\n")
    return tag


def max_overlap(log) -> int:
    """The most jobs of ``log`` that ran at the same time."""
    events = []
    with open(log) as f:
        lines = f.readlines()
    for line in lines:
        _, start, end = json.loads(line)
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak
