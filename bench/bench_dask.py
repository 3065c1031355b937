"""``execution: remote`` against plain Dask on the same LocalCluster, in the same run.

- D1: 1,000 tiny tasks (x + 1) through seamless (all ``.start()``, then ``.run()``) vs
  ``client.submit(the same function, pure=False)`` + ``client.gather``.  Gate <= 1.2x.
- D2: a 100 MB array in, ``a * 2``, out: seamless ``.run()`` vs ``client.scatter`` +
  ``client.submit`` + ``.result()``.  Gate <= 1.5x, not met yet: marked xfail with the
  measured figures.

Both sides use the one cluster (2 worker processes, 1 thread each).  Every seamless round uses
new inputs, so no round is a cache hit, and the persistent cache is off on both sides.
Absolute per-task milliseconds go to ``extra_info`` beside the ratio.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason='the Dask benchmarks need the dask '
                                                        'extra: pip install ".[dask]"')

import seamless  # noqa: E402
import seamless.config  # noqa: E402
from seamless.transformer import delayed  # noqa: E402

N_TINY = 1000
ARRAY_BYTES = 100 * 2**20


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    dask_client = distributed.Client(cluster, set_as_default=False)
    try:
        yield dask_client
    finally:
        dask_client.close()
        cluster.close()


@pytest.fixture
def remote(client):
    seamless.config.init(dask_client=client, cache=False)
    try:
        yield client
    finally:
        seamless.close()
        seamless.config._reset_for_tests()


def _plus_one(x):
    return x + 1


@delayed
def plus_one(x):
    return x + 1


def _times_two(a):
    return a * 2


@delayed
def times_two(a):
    return a * 2


@pytest.mark.benchmark(group="dask")
def test_d1_tiny_tasks(benchmark, remote, time_reference, time_subject, record_ratio):
    bases = itertools.count(0, N_TINY)  # new arguments every round: never a cache hit

    def plain():
        base = next(bases)
        futures = [remote.submit(_plus_one, base + i, pure=False) for i in range(N_TINY)]
        assert remote.gather(futures)[-1] == base + N_TINY

    def through_seamless():
        base = next(bases)
        handles = [plus_one(base + i).start() for i in range(N_TINY)]
        assert [h.run() for h in handles][-1] == base + N_TINY

    reference_s = time_reference(plain, rounds=3)
    subject_s, _ = time_subject(through_seamless, rounds=3)
    benchmark.extra_info.update(seamless_ms_per_task=subject_s / N_TINY * 1e3,
                                dask_ms_per_task=reference_s / N_TINY * 1e3)
    record_ratio(benchmark, reference_s, subject_s, bound_now=1.2, goal=1.1)


@pytest.mark.benchmark(group="dask")
@pytest.mark.xfail(
    reason="D2 measured 3.4x (CI-like run) and 3.7x (report run: 0.92 s vs 0.25 s) on a quiet "
           "2-core machine on 2026-12-07, 2.67x (1.13 s vs 0.42 s) under load after the worker "
           "stopped copying large array results (hashed in place: worker task 0.40 -> 0.26 s "
           "per round); earlier 1.60-2.47x; bound 1.5x.  Per seamless round (scratch perf_counter "
           "breakdown): client encode (copy + SHA-256, needed for identity and the snapshot) "
           "0.09-0.13 s, scatter 0.33-0.43 s (vs 0.12 s for the peer's: the Shipper keeps every "
           "scattered input, up to memory_cache = 2 GiB, on the workers, which makes each new "
           "100 MB receive slower; with memory_cache=150MiB the same run measured 1.63x), "
           "task 0.26 s (body + in-place hash), metadata task about 0.01 s, fetch 0.14-0.28 s. "
           "What remains: the scatter retention policy for inputs used once, and the two hashes "
           "(client input, worker result), which are the floor for cache identity",
    strict=False)
def test_d2_100mb_round_trip(benchmark, remote, time_reference, time_subject, record_ratio):
    rounds = itertools.count()

    def new_array():
        a = np.ones(ARRAY_BYTES // 8)
        a[0] = next(rounds)  # new content every round: never a cache hit, never deduplicated
        return a

    def plain():
        a = new_array()
        [future] = remote.scatter([a], hash=False)
        out = remote.submit(_times_two, future, pure=False).result()
        assert out[0] == 2 * a[0]

    def through_seamless():
        a = new_array()
        out = times_two(a).run()
        assert out[0] == 2 * a[0]

    reference_s = time_reference(plain, rounds=3)
    subject_s, _ = time_subject(through_seamless, rounds=3)
    benchmark.extra_info.update(seamless_ms=subject_s * 1e3, dask_ms=reference_s * 1e3)
    record_ratio(benchmark, reference_s, subject_s, bound_now=1.5, goal=1.2)
