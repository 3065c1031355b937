"""Array round trips of seamless and its peers across sizes, beside the copy and hash floors.

The work is T1's (bench_transport.py): a float64 array goes to a worker, ``a * 2`` comes back.
Each test owns one subject and runs it over the sizes, smallest first, on the same arrays
(built once per module, seeded by their size), with 2 workers:

- ``test_floors``: one ``np.copyto`` into touched memory and one SHA-256 pass per size;
- ``test_seamless``: ``spawn(2)``, build + ``.run()`` of ``double(a, nonce)`` (fresh nonce);
- ``test_peer[...]``: each adapter of ``peers.py``; a peer that is not installed is skipped
  with the reason.

Each row stores ``sizes_mb`` and the minimum ``seconds`` per size in ``extra_info``, and
at the largest size the peak of extra system memory (MemTotal - MemAvailable, sampled every
5 ms) during one round trip.  Its ratio is the time at the largest size over one hash plus one
copy of the same bytes (report only: the gates are T1-T6).  The gated run measures 8 MB only;
``--report-sizes`` (what ``python -m bench.report`` passes) adds 40, 80, 200 and 400 MB.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import threading

import numpy as np
import peers
import pytest
from timing import min_seconds

import seamless
from seamless.transformer import delayed, spawn

MB = 1_000_000
GATED_SIZES_MB = [8]
REPORT_SIZES_MB = [8, 40, 80, 200, 400]
_nonces = itertools.count(1)


@delayed
def double(a, nonce):
    return a * 2


@functools.lru_cache(maxsize=None)
def _array(size_mb: int) -> np.ndarray:
    return np.random.default_rng(size_mb).random(size_mb * MB // 8)


@pytest.fixture
def sizes_mb(request, benchmark):
    if benchmark.disabled:
        return GATED_SIZES_MB
    return REPORT_SIZES_MB if request.config.getoption("--report-sizes") else GATED_SIZES_MB


def _rounds(size_mb: int, smoke: bool) -> tuple[int, int]:
    """(timed rounds, warm-up rounds) for one size: fewer for the slow large arrays."""
    if smoke:
        return 1, 0
    return (5, 1) if size_mb <= 80 else (3, 1)


def _used_memory() -> int:
    with open("/proc/meminfo") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return fields["MemTotal"] - fields["MemAvailable"]


def _peak_extra_memory(fn) -> int:
    """Peak of used system memory above its level before ``fn()``, sampled every 5 ms."""
    baseline = peak = _used_memory()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, _used_memory())

    sampler = threading.Thread(target=sample, name="bench-meminfo", daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        stop.set()
        sampler.join()
    return max(peak, _used_memory()) - baseline


def _hash_and_copy_seconds(a: np.ndarray, smoke: bool) -> float:
    dst = np.empty_like(a)
    dst[:] = 0
    return min_seconds(lambda: (hashlib.sha256(memoryview(a)).digest(), np.copyto(dst, a)),
                        *_rounds(a.nbytes // MB, smoke))


def _sweep(benchmark, record_ratio, sizes, round_trip) -> None:
    """Time ``round_trip`` at every size, check its result, record the sweep and the ratio."""
    smoke = benchmark.disabled
    seconds = []
    for size in sizes:
        a = _array(size)
        out = round_trip(a)
        assert out.shape == a.shape and out[7] == a[7] * 2, "the round trip returned a wrong array"
        del out
        seconds.append(min_seconds(lambda: round_trip(a), *_rounds(size, smoke)))
    largest = _array(sizes[-1])
    peak = _peak_extra_memory(lambda: round_trip(largest))
    benchmark.extra_info.update(sizes_mb=list(sizes), seconds=seconds, peak_size_mb=sizes[-1],
                                peak_extra_bytes=peak)
    benchmark.pedantic(lambda: None, rounds=1)
    record_ratio(benchmark, _hash_and_copy_seconds(largest, smoke), seconds[-1],
                 bound_now=math.inf, goal=math.inf)


@pytest.mark.benchmark(group="peers-arrays")
def test_floors(benchmark, sizes_mb):
    smoke = benchmark.disabled
    copy_s, hash_s = [], []
    for size in sizes_mb:
        a = _array(size)
        dst = np.empty_like(a)
        dst[:] = 0  # the floor copy writes into memory that is already mapped
        copy_s.append(min_seconds(lambda: np.copyto(dst, a), *_rounds(size, smoke)))
        hash_s.append(min_seconds(lambda: hashlib.sha256(memoryview(a)).digest(),
                                   *_rounds(size, smoke)))
    benchmark.extra_info.update(sizes_mb=list(sizes_mb), copy_seconds=copy_s,
                                hash_seconds=hash_s)
    benchmark.pedantic(lambda: None, rounds=1)


@pytest.mark.benchmark(group="peers-arrays")
def test_seamless(benchmark, sizes_mb, record_ratio):
    spawn(peers.WORKERS)
    try:
        double(np.zeros(10), -1).run()
        _sweep(benchmark, record_ratio, sizes_mb, lambda a: double(a, next(_nonces)).run())
    finally:
        seamless.close()


@pytest.mark.benchmark(group="peers-arrays")
@pytest.mark.parametrize("peer_name", peers.ARRAY_PEERS)
def test_peer(benchmark, peer_name, sizes_mb, record_ratio):
    try:
        with peers.open_peer(peer_name) as peer:
            _sweep(benchmark, record_ratio, sizes_mb, peer.round_trip)
    except peers.PeerMissing as missing:
        pytest.skip(str(missing))
