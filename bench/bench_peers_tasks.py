"""Tiny-task throughput of seamless against the peers P1/P2 (bench_pool.py) leave out.

The work is P1's: ``x + 1`` as one task each, all submitted before any result is collected,
2 workers.  ``multiprocessing.Pool``, ``ProcessPoolExecutor``, loky and mpire are P1/P2; here
are joblib (``Parallel`` with its automatic batching, as a user would call it), a Dask
``LocalCluster`` (``client.submit`` per task, then ``gather``) and Ray when importable.  Each
test times the peer first, then seamless on the same number of tasks (fresh arguments each
round, so no cache hit).  Dask costs about 2 ms a task, so its row runs 1,000 tasks instead
of 10,000.  Report only: ``extra_info`` holds both per-task times; the ratio is seamless over
the peer (goal 0.5, as P2).
"""

from __future__ import annotations

import itertools
import math

import peers
import pytest

import seamless
from seamless.transformer import delayed, spawn

TASKS = {"Dask submit": 1_000}
DEFAULT_TASKS = 10_000
_offsets = itertools.count(7 * 10 ** 10, 10 ** 6)


@delayed
def increment(x):
    return x + 1


def _seamless_batch(n: int):
    def run():
        start = next(_offsets)  # new arguments each round: no cache hits
        handles = [increment(start + i).start() for i in range(n)]
        assert [h.run() for h in handles][-1] == start + n
    return run


@pytest.mark.benchmark(group="peers-tasks")
@pytest.mark.parametrize("peer_name", peers.TINY_TASK_PEERS)
def test_tiny_tasks(benchmark, peer_name, time_reference, time_subject, record_ratio):
    n = 10 if benchmark.disabled else TASKS.get(peer_name, DEFAULT_TASKS)
    try:
        with peers.open_peer(peer_name) as peer:
            def reference():
                assert peer.tiny(range(n))[-1] == n

            ref_s = time_reference(reference, rounds=3)
    except peers.PeerMissing as missing:
        pytest.skip(str(missing))
    spawn(peers.WORKERS)
    try:
        increment(-1).run()
        subj_s, _ = time_subject(_seamless_batch(n), rounds=3, warmup_rounds=1)
    finally:
        seamless.close()
    benchmark.extra_info.update(tasks=n, per_task_us=subj_s / n * 1e6,
                                peer_per_task_us=ref_s / n * 1e6)
    record_ratio(benchmark, ref_s, subj_s, bound_now=math.inf, goal=0.5)
