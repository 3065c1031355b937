"""Cache benchmarks (group "cache"): H2, the persistent-cache hit
(docs/design/benchmark-method.md, "Groups and their floors").

H2 reads a 100 MB result from a persistent cache directory: ``lookup`` (SQLite row + file size)
then ``read_buffer`` (read the whole file, SHA-256 over all of it, every time). The reference is
the least any verified read can do: ``np.fromfile`` of the same file plus one ``hashlib.sha256``
pass, timed first in the same process (warm-up, then the minimum of the rounds). Both read from
the page cache (the file was just written), so the benchmark measures the copy, the page faults
and the hash, not the disk. Bound 1.2, goal 1.1; statistic: minimum.

The in-memory hit (result map + buffer cache, no I/O, no hashing) is timed alongside and put in
``extra_info`` as ``memory_hit_s``; it is not gated.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from seamless.cache.memory import BufferCache, ResultMap
from seamless.cache.persistent import PersistentCache

NBYTES = 100_000_000
ROUNDS = 7


@pytest.fixture(scope="module")
def cached_result(tmp_path_factory):
    """A persistent cache holding one 100 MB ``bytes`` result; yields (cache, tf, cs, path)."""
    cache = PersistentCache(tmp_path_factory.mktemp("h2") / "cache")
    data = np.random.default_rng(0).bytes(NBYTES)
    cs = hashlib.sha256(data).hexdigest()
    tf = hashlib.sha256(b"bench_cache H2 transformation").hexdigest()
    assert cache.write_now(tf, "bytes", cs, data)
    yield cache, tf, cs, cache._store.path(cs)
    cache.close()


def _memory_hit_seconds(tf, cs, buffer, calls=1000, rounds=5) -> float:
    """Min over rounds of the mean time of one result-map + buffer-cache hit."""
    results, buffers = ResultMap(), BufferCache(2 * NBYTES)
    results.put(tf, "bytes", cs)
    buffers.put(cs, buffer)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            buffers.get(results.get(tf)[1])
        best = min(best, (time.perf_counter() - start) / calls)
    assert buffers.get(cs) is buffer
    return best


@pytest.mark.benchmark(group="cache")
def test_h2_persistent_cache_hit(benchmark, cached_result, time_reference, time_subject,
                                 record_ratio):
    """H2: lookup + read_buffer of 100 MB vs np.fromfile + one SHA-256 pass."""
    cache, tf, cs, path = cached_result

    def reference():
        return hashlib.sha256(np.fromfile(path, np.uint8)).hexdigest()

    def subject():
        kind, result_cs = cache.lookup(tf)
        return cache.read_buffer(result_cs)

    reference_s = time_reference(reference, rounds=ROUNDS)
    subject_s, view = time_subject(subject, rounds=ROUNDS)
    assert reference() == cs
    assert view is not None and view.readonly and view.nbytes == NBYTES
    assert hashlib.sha256(view).hexdigest() == cs
    benchmark.extra_info["memory_hit_s"] = _memory_hit_seconds(tf, cs, view)
    record_ratio(benchmark, reference_s, subject_s, bound_now=1.2, goal=1.1)
