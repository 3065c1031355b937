"""Cache benchmarks (group "cache"): H2, the persistent-cache hit, and W1, small result writes
(docs/design/benchmark-method.md, "Groups and their floors").

H2 reads a 100 MB result from a persistent cache directory: ``lookup`` (SQLite row + file size)
then ``read_buffer`` (read the whole file, SHA-256 over all of it, every time). The reference is
the least any verified read can do: ``np.fromfile`` of the same file plus one ``hashlib.sha256``
pass, timed first in the same process (warm-up, then the minimum of the rounds). Both read from
the page cache (the file was just written), so the benchmark measures the copy, the page faults
and the hash, not the disk. Bound 1.2, goal 1.1; statistic: minimum.

The in-memory hit (result map + buffer cache, no I/O, no hashing) is timed alongside and put in
``extra_info`` as ``memory_hit_s``; it is not gated.

W1 (reported, not gated) queues 5,000 small results (what tiny tasks produce) on the writer
thread and flushes, into a new directory each round. The reference is the least this on-disk
layout allows: the same 5,000 files, each written to a temp file in its ``buffers/<xx>/``
folder and renamed, then the same rows inserted by one ``executemany`` per table in one
transaction. Per-result microseconds go to ``extra_info``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sqlite3
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


N_W1 = 5_000
_w1_dirs = itertools.count()


def _w1_results(n: int) -> list:
    """(transformation checksum, result checksum, bytes) of ``n`` tiny results."""
    out = []
    for i in range(n):
        data = str(1_000_003 * i).encode()
        out.append((hashlib.sha256(b"w1 tf %d" % i).hexdigest(),
                    hashlib.sha256(data).hexdigest(), data))
    return out


def _w1_floor(directory, results) -> None:
    """The same files and rows as the cache writes, with nothing but the system calls and
    one transaction."""
    buffers = os.path.join(directory, "buffers")
    for sub in {cs[:2] for _tf, cs, _data in results}:
        os.makedirs(os.path.join(buffers, sub))
    for _tf, cs, data in results:
        folder = os.path.join(buffers, cs[:2])
        tmp = os.path.join(folder, ".tmp-" + cs)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, os.path.join(folder, cs))
    conn = sqlite3.connect(os.path.join(directory, "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE buffers (checksum TEXT PRIMARY KEY, size INTEGER, created REAL,"
                 " last_used REAL) WITHOUT ROWID")
    conn.execute("CREATE TABLE results (transformation TEXT PRIMARY KEY, result TEXT, kind "
                 "TEXT, created REAL, duration REAL, label TEXT) WITHOUT ROWID")
    conn.execute("CREATE INDEX results_by_result ON results(result)")
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT OR IGNORE INTO buffers VALUES (?, ?, ?, ?)",
                     [(cs, len(data), now, now) for _tf, cs, data in results])
    conn.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, 'json', ?, 0.0, 'w1')",
                     [(tf, cs, now) for tf, cs, _data in results])
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.benchmark(group="cache")
def test_w1_small_result_writes(benchmark, tmp_path, time_reference, time_subject,
                                record_ratio):
    """W1: 5,000 tiny results through the writer thread vs the bare files and rows."""
    results = _w1_results(N_W1)
    caches = []

    def reference():
        _w1_floor(tmp_path / f"floor-{next(_w1_dirs)}", results)

    def subject():
        cache = PersistentCache(tmp_path / f"cache-{next(_w1_dirs)}")
        caches.append(cache)
        for tf, cs, data in results:
            cache.write(tf, "json", cs, data, duration=0.0, label="w1")
        assert cache.flush(timeout=300) is True
        return cache

    reference_s = time_reference(reference, rounds=3)
    try:
        subject_s, cache = time_subject(subject, rounds=3, warmup_rounds=0)
        tf, cs, data = results[-1]
        assert cache.lookup(tf) == ("json", cs)
        assert bytes(cache.read_buffer(cs)) == data
    finally:
        for each in caches:
            each.close()
    benchmark.extra_info.update(per_result_us=subject_s / N_W1 * 1e6,
                                floor_per_result_us=reference_s / N_W1 * 1e6)
    record_ratio(benchmark, reference_s, subject_s, bound_now=math.inf, goal=1.5)
