"""The worker pool against its floor and its peer (docs/design/benchmark-method.md: S1, P1, T4).

- S1: the seed example, 20 x sleep(1) on spawn(4) in a fresh interpreter, lazy start included,
  vs the ideal 5 s.  Gate: <= 1.25x.
- P1: 10,000 tiny tasks (x + 1), all ``.start()`` then ``.run()``, on spawn(2), vs
  ``multiprocessing.Pool(2).apply_async`` + ``.get()`` in the same run.  Gate <= 1.0x, not
  met yet: marked xfail with the measured figure; per-task microseconds go to extra_info.
- P2 (report): the same tasks on ``ProcessPoolExecutor(2)`` and, when installed, joblib/loky
  and mpire (``pip install .[bench]``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

import seamless
from seamless.transformer import delayed, spawn

SEED = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    from seamless.transformer import delayed, spawn
    spawn(4)

    @delayed
    def compute(x):
        import time
        time.sleep(1)
        return x * 2

    handles = [compute(i) for i in range(20)]
    for h in handles:
        h.start()
    results = [h.run() for h in handles]
    assert results == [2 * i for i in range(20)]
    print(time.perf_counter() - t0)
""")


@pytest.mark.benchmark(group="pool")
def test_s1_seed_example(benchmark, time_subject, record_ratio, tmp_path):
    script = tmp_path / "seed.py"
    script.write_text(SEED)

    # A private, empty persistent cache: a result cached by an earlier run would turn the
    # 20 one-second jobs into hits.
    env = {**os.environ, "SEAMLESS_CACHE": str(tmp_path / "cache")}

    def subject():
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return float(out.stdout)

    subject_s, inner = time_subject(subject, rounds=1, warmup_rounds=0)
    benchmark.extra_info["wall_s"] = subject_s
    benchmark.extra_info["inside_script_s"] = inner
    record_ratio(benchmark, 5.0, subject_s, bound_now=1.25, goal=1.1)


def _increment(x):
    return x + 1


@delayed
def increment(x):
    return x + 1


N_TINY = 10_000


@pytest.mark.benchmark(group="pool")
@pytest.mark.xfail(
    reason="P1 measured 2.2-2.9x of multiprocessing.Pool.apply_async with the persistent "
           "cache off (51 us vs 17-23 us per task) and 3.3-3.9x with it on, as users have it by "
           "default (65-71 us vs 18-21 us; 73-75 us before this change, same run), on a quiet "
           "2-core target, 2026-12-08; bound 1.0x; 0.8x ProcessPoolExecutor, 0.4x loky. The "
           "parent spends about 45 us of CPU per task (the pool's I/O thread about 28, your "
           "thread about 16) and the workers about 35, where Pool's parent needs 16-29 us and "
           "its workers 3-4; the cache adds a file of its own per result (the on-disk layout), "
           "14-200 us of kernel time on this machine's file systems; see docs/worker-pool.md, "
           "'How fast'",
    strict=False)
def test_p1_tiny_tasks(benchmark, time_reference, time_subject, record_ratio):
    with multiprocessing.Pool(2) as peer:
        peer.apply(_increment, (1,))  # warm

        def reference():
            results = [peer.apply_async(_increment, (i,)) for i in range(N_TINY)]
            assert [r.get() for r in results][-1] == N_TINY

        ref_s = time_reference(reference, rounds=3)
    spawn(2)
    increment(-1).run()  # workers up and warm
    offset = iter(range(10 ** 9, 10 ** 10, N_TINY))

    def subject():
        start = next(offset)  # new arguments each round: no cache hits
        handles = [increment(start + i).start() for i in range(N_TINY)]
        assert handles[-1].run() == start + N_TINY
        for h in handles:
            h.run()

    try:
        subj_s, _ = time_subject(subject, rounds=3, warmup_rounds=1)
    finally:
        seamless.close()
    benchmark.extra_info["per_task_us"] = subj_s / N_TINY * 1e6
    benchmark.extra_info["peer_per_task_us"] = ref_s / N_TINY * 1e6
    record_ratio(benchmark, ref_s, subj_s, bound_now=1.0, goal=0.5)


# Arguments of P2's subjects, never repeated within the process: each P2 row starts a new pool,
# but the memory cache outlives it, and a repeated argument would be timed as a cache hit.
_P2_OFFSETS = iter(range(2 * 10 ** 10, 10 ** 11, N_TINY))


def _p1_subject():
    """The P1 subject: 10,000 tiny tasks started, then run, on a warm spawn(2)."""
    spawn(2)
    increment(-1).run()
    offset = _P2_OFFSETS

    def subject():
        start = next(offset)
        handles = [increment(start + i).start() for i in range(N_TINY)]
        for h in handles:
            h.run()
    return subject


def _loky_executor():
    try:
        from loky import get_reusable_executor
    except ImportError:
        try:
            from joblib.externals.loky import get_reusable_executor
        except ImportError:
            return None
    return get_reusable_executor(max_workers=2)


class _MpirePeer:
    """mpire's WorkerPool behind the executor interface P2 uses (submit, result, shutdown)."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, fn, arg):
        return _MpireResult(self.pool.apply_async(fn, (arg,)))

    def shutdown(self, wait=True):
        self.pool.stop_and_join()


class _MpireResult:
    __slots__ = ("result",)

    def __init__(self, async_result):
        self.result = async_result.get


def _mpire_executor():
    try:
        from mpire import WorkerPool
    except ImportError:
        return None
    pool = WorkerPool(n_jobs=2, start_method="fork")
    pool.__enter__()
    return _MpirePeer(pool)


@pytest.mark.benchmark(group="pool")
@pytest.mark.parametrize("peer_name", ["ProcessPoolExecutor", "loky", "mpire"])
def test_p2_tiny_tasks_other_peers(benchmark, peer_name, time_reference, time_subject,
                                   record_ratio):
    """Report only (docs/design/benchmark-method.md: P2): seamless per task vs each peer's
    submit + result."""
    import concurrent.futures

    if peer_name == "loky":
        peer = _loky_executor()
        if peer is None:
            pytest.skip("loky (or joblib) is not installed in this environment")
    elif peer_name == "mpire":
        peer = _mpire_executor()
        if peer is None:
            pytest.skip("mpire is not installed in this environment (pip install .[bench])")
    else:
        peer = concurrent.futures.ProcessPoolExecutor(2)
    try:
        peer.submit(_increment, 1).result()

        def reference():
            futures = [peer.submit(_increment, i) for i in range(N_TINY)]
            assert [f.result() for f in futures][-1] == N_TINY

        ref_s = time_reference(reference, rounds=3)
    finally:
        peer.shutdown(wait=True)
    try:
        subj_s, _ = time_subject(_p1_subject(), rounds=3, warmup_rounds=1)
    finally:
        seamless.close()
    benchmark.extra_info["per_task_us"] = subj_s / N_TINY * 1e6
    benchmark.extra_info["peer_per_task_us"] = ref_s / N_TINY * 1e6
    record_ratio(benchmark, ref_s, subj_s, bound_now=math.inf, goal=0.5)
