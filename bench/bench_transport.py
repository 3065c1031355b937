"""Array transport against its floor and its peers
(docs/design/benchmark-method.md: T1, T1f, T2-T6).

The floor of a round trip is one SHA-256 pass plus one copy of the input (a content-addressed
library must hash every new input once), plus the function itself run in-process.  Each row
times that reference first, in this process, on the same array, then the subject: ``spawn(2)``,
build + ``.run()`` of ``double(a, nonce)`` (a fresh nonce per round, so no cache hit).

- T1 (gate <= 1.5x, goal 1.1x): 400 MB, steady state (segments recycled); each stage's time
  beside its own floor is in bench_t1_breakdown.py.  Structural checks beside the
  timing: exactly one copy of the input (``bytes_copied()`` grows by the array size: the result
  is born in a worker segment), and the result is read-only for good.  The time split (input
  copy-and-hash, dispatch + compute, result hash) goes to ``extra_info``.
- T1f (report): the same right after ``seamless._ipc.trim()``: fresh segments, first touch.
- T2 (report): 8 and 80 MB.  T3 (gate <= 11x): 400 MB time / 40 MB time.
- T4 (gate): chaining a returned 200 MB array costs no copy, no hash, < 1 ms.
- T5 (gate): extra system memory during an 800 MB round trip <= 2.2x the array; back to the
  baseline after the result is dropped and ``trim()`` ran.
- T6 (report): ``multiprocessing.Pool(2).apply`` of the same function on the same array.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import multiprocessing
import threading
import time

import numpy as np
import pytest

import seamless
import seamless._ipc as ipc
from seamless.transformer import delayed, spawn

MB = 1_000_000
_nonces = itertools.count(1)


@delayed
def double(a, nonce):
    return a * 2


@delayed
def ident(a):
    return a


@delayed
def where_is(a):
    import seamless._ipc

    return list(seamless._ipc.shm_array.segment_id(a))


def _plain_double(a):
    return a * 2


@pytest.fixture
def pool2():
    spawn(2)
    double(np.zeros(10), -1).run()  # workers up and warm
    yield
    seamless.close()


def _array(nbytes: int) -> np.ndarray:
    return np.random.default_rng(nbytes).random(nbytes // 8)


def _floor(a: np.ndarray):
    """The reference: one hash and one copy of the input, then the function in-process."""
    dst = np.empty_like(a)
    dst[:] = 0  # touched: the copy in the floor writes into memory that is already mapped

    def reference():
        hashlib.sha256(memoryview(a)).digest()
        np.copyto(dst, a)
        return a * 2

    return reference


def _round_trip(a):
    return lambda: double(a, next(_nonces)).run()


def _check_one_copy_and_read_only(a):
    """Structural T1 checks: one copy of the input, nothing copied back, a read-only result."""
    double(a, next(_nonces)).run()  # steady state for the checked round too
    gc.collect()
    ipc.reset_counters()
    result = double(a, next(_nonces)).run()
    copied = ipc.bytes_copied()
    assert copied == a.nbytes, (
        f"a {a.nbytes}-byte round trip copied {copied} bytes into or out of segments; exactly "
        f"one copy of the input ({a.nbytes}) is the contract")
    assert not result.flags.writeable
    with pytest.raises(ValueError):
        result.setflags(write=True)
    assert result[7] == a[7] * 2


def _split(a) -> dict:
    """Where a steady-state round trip's time goes, in ms (one instrumented round)."""
    t0 = time.perf_counter()
    handle = double(a, next(_nonces))
    t1 = time.perf_counter()
    handle.run()
    t2 = time.perf_counter()
    handle.result_checksum  # noqa: B018 - waits for the worker's deferred hash
    t3 = time.perf_counter()
    compute = handle._outcome.duration
    return {"copy_and_hash_ms": (t1 - t0) * 1e3, "compute_ms": compute * 1e3,
            "dispatch_and_map_ms": (t2 - t1 - compute) * 1e3,
            "result_hash_after_run_ms": (t3 - t2) * 1e3}


@pytest.mark.benchmark(group="transport")
def test_t1_round_trip_400mb(benchmark, pool2, time_reference, time_subject, record_ratio,
                             assert_ratio):
    a = _array(400 * MB)
    ref_s = time_reference(_floor(a), rounds=5)
    subj_s, _ = time_subject(_round_trip(a), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(_split(a))
    # Recorded before the structural check, so a run that fails it still reports its timing.
    # Bound 1.4 (was 1.5): the breakdown (bench_t1_breakdown.py) puts every stage at its floor,
    # 0.93-0.98x in total; whole rounds then vary by up to 1.2x on 2 cores, and T1 measured
    # 1.06x in a CI run and 1.25x in the report run of 2026-12-07.  Goal 1.1x.
    record_ratio(benchmark, ref_s, subj_s, bound_now=1.4, goal=1.1, enforce=False)
    _check_one_copy_and_read_only(a)
    assert_ratio(benchmark)


@pytest.mark.benchmark(group="transport")
def test_t1f_first_use_after_trim(benchmark, pool2, time_reference, time_subject, record_ratio):
    a = _array(400 * MB)
    ref_s = time_reference(_floor(a), rounds=5)
    subj_s, _ = time_subject(_round_trip(a), setup=_trim_and_settle, rounds=3, warmup_rounds=0)
    benchmark.extra_info["dask_scatter_submit_ratio"] = _dask_ratio(a)
    # docs/design/benchmark-method.md: report only.  Fresh shmem pages cost about 0.3 s per
    # 400 MB to touch.
    record_ratio(benchmark, ref_s, subj_s, bound_now=math.inf, goal=math.inf)


def _trim_and_settle():
    gc.collect()
    ipc.trim()
    time.sleep(0.2)  # the workers' free lists are emptied by a recycle frame, asynchronously


def _dask_ratio(a):
    """Dask scatter + submit on a local cluster as a multiple of hash + copy, when installed;
    else the figure measured on the target machine (docs/design/benchmark-method.md,
    "Groups and their floors")."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return ("1.7 (dask not installed in this environment; figure from "
                "docs/design/benchmark-method.md)")
    floor = _floor(a)
    t = time.perf_counter()
    hashlib.sha256(memoryview(a)).digest()
    floor_s = time.perf_counter() - t
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(_plain_double, np.zeros(10)).result()
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            future = client.scatter(a)
            client.submit(_plain_double, future).result()
            best = min(best, time.perf_counter() - t)
    del floor
    return best / floor_s


@pytest.mark.benchmark(group="transport")
@pytest.mark.parametrize("size_mb", [8, 80])
def test_t2_sizes(benchmark, pool2, size_mb, time_reference, time_subject, record_ratio):
    a = _array(size_mb * MB)
    ref_s = time_reference(_floor(a), rounds=7)
    subj_s, _ = time_subject(_round_trip(a), rounds=7, warmup_rounds=2)
    record_ratio(benchmark, ref_s, subj_s, bound_now=math.inf, goal=1.5)


@pytest.mark.benchmark(group="transport")
def test_t3_growth_40_to_400mb(benchmark, pool2, time_reference, time_subject, record_ratio):
    small = _array(40 * MB)
    large = _array(400 * MB)
    small_s = time_reference(_round_trip(small), rounds=7, warmup=2)
    large_s, _ = time_subject(_round_trip(large), rounds=5, warmup_rounds=1)
    record_ratio(benchmark, small_s, large_s, bound_now=11.0, goal=10.0)


@pytest.mark.benchmark(group="transport")
def test_t4_chaining_is_free(benchmark, record_ratio):
    @delayed
    def make(n):
        import numpy as np

        return np.ones(n)

    spawn(1)
    try:
        maker = make(25_000_000)
        r = maker.run()  # 200 MB, born in a worker segment
        maker.result_checksum  # noqa: B018 - the worker's own hash of r is not chaining's cost
        r_id = ipc.shm_array.segment_id(r)
        assert r_id is not None, "a large result lives in a segment"
        copied, hashed, live = ipc.bytes_copied(), ipc.bytes_hashed(), ipc.live_segments()
        t0 = time.perf_counter()
        h = ident(r)
        build_s = time.perf_counter() - t0
        assert (ipc.bytes_copied(), ipc.bytes_hashed()) == (copied, hashed), \
            "building a handle on a returned array copied or hashed it"
        assert build_s < 1e-3, f"building the chained handle took {build_s * 1e3:.3f} ms"
        out = h.run()
        assert (ipc.bytes_copied(), ipc.bytes_hashed()) == (copied, hashed), \
            "sending a returned array to a worker copied or hashed it"
        assert np.shares_memory(out, r)
        assert tuple(where_is(r).run()) == r_id, "the worker maps the very same segment"
        assert ipc.live_segments() <= live + 1
        benchmark.extra_info["build_ms"] = build_s * 1e3
        dst = np.empty_like(r)
        t0 = time.perf_counter()
        np.copyto(dst, r)
        copy_s = time.perf_counter() - t0
        benchmark.pedantic(lambda: ident(r), rounds=20)
        record_ratio(benchmark, copy_s, build_s, bound_now=0.05, goal=0.01)
    finally:
        seamless.close()


def _meminfo() -> dict:
    """/proc/meminfo in bytes."""
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _used_memory() -> int:
    """MemTotal - MemAvailable in bytes: counts shared-memory segments too."""
    fields = _meminfo()
    return fields["MemTotal"] - fields["MemAvailable"]


def _our_rss() -> int:
    """Resident bytes of this process and its children (the workers)."""
    import os

    pids = [os.getpid()]
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


class _Sampler:
    """Reads /proc/meminfo every 5 ms in a thread; keeps the peak."""

    def __init__(self):
        self.peak = _used_memory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-meminfo", daemon=True)

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _used_memory())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _used_memory())


@pytest.mark.benchmark(group="transport")
def test_t5_peak_memory_800mb(benchmark, pool2, record_ratio):
    a = _array(800 * MB)
    # Warm: one round trip first, dropped and trimmed, so kernel-side caches of freed pages
    # (per-CPU lists, not ours, 80-200 MB here) are already in the baseline.
    warm = double(a, next(_nonces))
    warm.run()
    warm.result_checksum  # noqa: B018 - until the worker's hash arrives, the pool holds it
    del warm
    baseline = _steady_memory()
    shmem_base, rss_base = _meminfo()["Shmem"], _our_rss()
    with _Sampler() as sampler:
        handle = double(a, next(_nonces))
        result = handle.run()
        handle.result_checksum  # noqa: B018 - the worker's hash is part of the round trip
    peak = sampler.peak - baseline
    assert result[3] == a[3] * 2
    del result, handle
    # docs/design/benchmark-method.md (T5): back within 5 % of the baseline (the baseline's own
    # value).
    tolerance = 0.05 * baseline
    final = _settled_memory(baseline, tolerance=tolerance)
    benchmark.extra_info.update(peak_extra_bytes=peak, final_extra_bytes=final - baseline,
                                array_bytes=a.nbytes)
    # One-sided: memory other processes or the allocator hand back may end below the baseline.
    # Used memory also counts what the kernel keeps on its own after large frees (per-CPU
    # page lists: 80-270 MB seen here after a long run, held by no process and no segment),
    # so when it is above the tolerance, what we own must be back: no shared memory (the
    # Shmem line of /proc/meminfo) and no process of ours holding more than at the baseline.
    if final - baseline > tolerance:
        shmem_now, rss_now = _meminfo()["Shmem"], _our_rss()
        assert shmem_now - shmem_base <= tolerance and rss_now - rss_base <= tolerance, (
            f"after dropping the result and trim(), used memory is "
            f"{(final - baseline) / MB:.0f} MB above the baseline of {baseline / MB:.0f} MB "
            f"(limit: 5 % of it); shared memory {(shmem_now - shmem_base) / MB:.0f} MB and "
            f"our processes' RSS {(rss_now - rss_base) / MB:.0f} MB above theirs")
    benchmark.pedantic(lambda: None, rounds=1)
    record_ratio(benchmark, a.nbytes, peak, bound_now=2.2, goal=2.05)


def _steady_memory() -> int:
    """Used memory once it stops falling after gc and trim (at most 5 s): the workers drop
    their segments when a trimming recycle frame reaches them, asynchronously."""
    deadline = time.monotonic() + 5.0
    previous = math.inf
    while True:
        gc.collect()
        ipc.trim()
        time.sleep(0.2)
        used = _used_memory()
        if previous - used < 5 * MB or time.monotonic() > deadline:
            return used
        previous = used


def _settled_memory(baseline: int, tolerance: float) -> int:
    """Used memory once the trim has reached the workers (a recycle frame, asynchronous):
    waits up to 3 s for it to come down to ``tolerance`` above the baseline."""
    deadline = time.monotonic() + 3.0
    while True:
        gc.collect()
        ipc.trim()
        time.sleep(0.1)
        used = _used_memory()
        if used - baseline <= tolerance or time.monotonic() > deadline:
            return used


@pytest.mark.benchmark(group="transport")
def test_t6_against_multiprocessing_pool(benchmark, pool2, time_reference, time_subject,
                                         record_ratio):
    a = _array(400 * MB)
    with multiprocessing.Pool(2) as peer:
        peer.apply(_plain_double, (np.zeros(10),))
        ref_s = time_reference(lambda: peer.apply(_plain_double, (a,)), rounds=3)
    subj_s, _ = time_subject(_round_trip(a), rounds=5, warmup_rounds=1)
    record_ratio(benchmark, ref_s, subj_s, bound_now=math.inf, goal=0.25)
