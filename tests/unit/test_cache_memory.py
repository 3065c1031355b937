"""The in-memory caches (docs/design/identity-and-cache.md, "The in-memory caches");
seamless.cache imports light."""

from __future__ import annotations

import array
import os
import subprocess
import sys
import threading

import pytest
from cachehelpers import FakeConfig

import seamless.cache as cache_pkg
from seamless.cache.memory import BufferCache, ResultMap

CS = [f"{i:064x}" for i in range(32)]


# -- ResultMap ----------------------------------------------------------------------------------


def test_result_map_get_put_discard():
    m = ResultMap(max_entries=10)
    assert m.get(CS[0]) is None
    m.put(CS[0], "json", CS[1])
    assert m.get(CS[0]) == ("json", CS[1])
    m.put(CS[0], "bytes", CS[2])  # a refresh replaces the entry
    assert m.get(CS[0]) == ("bytes", CS[2])
    assert len(m) == 1
    m.discard(CS[0])
    m.discard(CS[0])  # absent: no error
    assert m.get(CS[0]) is None
    assert len(m) == 0


def test_result_map_evicts_least_recently_used():
    m = ResultMap(max_entries=3)
    for i in range(3):
        m.put(CS[i], "json", CS[10 + i])
    assert m.get(CS[0]) == ("json", CS[10])  # CS[0] becomes the most recently used
    m.put(CS[3], "json", CS[13])
    assert CS[1] not in m  # the least recently used went
    assert [c in m for c in CS[:4]] == [True, False, True, True]
    m.put(CS[2], "json", CS[12])  # putting again counts as a use
    m.put(CS[4], "json", CS[14])
    assert CS[0] not in m and CS[2] in m and CS[3] in m and CS[4] in m
    assert len(m) == 3


def test_result_map_contains_does_not_count_as_use():
    m = ResultMap(max_entries=2)
    m.put(CS[0], "json", CS[10])
    m.put(CS[1], "json", CS[11])
    assert CS[0] in m
    m.put(CS[2], "json", CS[12])
    assert CS[0] not in m and CS[1] in m


def test_result_map_default_bound_and_bad_bounds():
    assert ResultMap().max_entries == 1_000_000
    with pytest.raises(ValueError, match="max_entries must be an integer >= 1, got 0"):
        ResultMap(0)
    with pytest.raises(TypeError, match="max_entries must be an integer, got '5'"):
        ResultMap("5")
    with pytest.raises(TypeError):
        ResultMap(True)


# -- BufferCache --------------------------------------------------------------------------------


def test_buffer_cache_evicts_by_bytes_lru():
    c = BufferCache(max_bytes=10)
    a, b, d = b"aaaa", b"bbbb", b"dddd"
    c.put(CS[0], a)
    c.put(CS[1], b)
    assert c.nbytes == 8
    assert c.get(CS[0]) is a  # the same object: no copy
    c.put(CS[2], d)  # 12 > 10: the least recently used (CS[1]) goes
    assert c.get(CS[1]) is None
    assert c.get(CS[0]) is a and c.get(CS[2]) is d
    assert c.nbytes == 8 and len(c) == 2


def test_buffer_cache_sizes_from_buffer_protocol():
    c = BufferCache(max_bytes=100)
    doubles = array.array("d", [1.0, 2.0, 3.0])  # 24 bytes, itemsize 8
    c.put(CS[0], doubles)
    c.put(CS[1], bytearray(16))
    c.put(CS[2], memoryview(b"x" * 10))
    assert c.nbytes == 24 + 16 + 10
    assert c.get(CS[0]) is doubles


def test_buffer_larger_than_bound_is_not_kept_and_evicts_nothing():
    c = BufferCache(max_bytes=10)
    c.put(CS[0], b"12345")
    c.put(CS[1], b"x" * 11)
    assert c.get(CS[1]) is None
    assert c.get(CS[0]) == b"12345"
    assert c.nbytes == 5
    c.put(CS[2], b"y" * 5)  # exactly at the bound: kept
    assert c.nbytes == 10 and CS[2] in c


def test_buffer_cache_put_existing_keeps_first_buffer_and_marks_used():
    c = BufferCache(max_bytes=8)
    first = b"aaaa"
    c.put(CS[0], first)
    c.put(CS[1], b"bbbb")
    c.put(CS[0], b"aaaa"[:])  # same checksum: the held buffer stays, it becomes most recent
    assert c.get(CS[0]) is first
    c.put(CS[2], b"cccc")
    assert CS[1] not in c and CS[0] in c
    assert c.nbytes == 8


def test_set_max_bytes_shrinks_and_grows():
    c = BufferCache(max_bytes=100)
    for i in range(5):
        c.put(CS[i], bytes([i]) * 10)
    c.get(CS[0])  # CS[0] is now the most recently used
    c.set_max_bytes(25)
    assert c.max_bytes == 25
    assert c.nbytes == 20
    assert CS[0] in c and CS[4] in c
    assert all(CS[i] not in c for i in (1, 2, 3))
    c.set_max_bytes(0)
    assert len(c) == 0 and c.nbytes == 0
    c.put(CS[5], b"")  # an empty buffer fits a zero bound
    assert c.get(CS[5]) == b""
    c.set_max_bytes(1000)
    c.put(CS[6], b"z" * 500)
    assert c.nbytes == 500


def test_buffer_cache_discard_clear_and_errors():
    c = BufferCache(max_bytes=100)
    c.put(CS[0], b"abc")
    c.discard(CS[0])
    c.discard(CS[0])
    assert c.nbytes == 0
    c.put(CS[1], b"abc")
    c.clear()
    assert len(c) == 0 and c.nbytes == 0
    strided = memoryview(bytearray(10))[::2]
    with pytest.raises(ValueError, match="must be C-contiguous"):
        c.put(CS[2], strided)
    with pytest.raises(TypeError):
        c.put(CS[2], "not a buffer")
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 0, got -1"):
        c.set_max_bytes(-1)
    with pytest.raises(TypeError, match="max_bytes must be an integer"):
        BufferCache(1.5)


def test_buffer_cache_is_consistent_under_threads():
    c = BufferCache(max_bytes=1000)
    errors = []

    def worker(seed):
        try:
            for i in range(2000):
                k = CS[(seed * 7 + i) % len(CS)]
                if i % 3:
                    c.put(k, bytes(40 + (i % 50)))
                else:
                    c.get(k)
                if i % 500 == 0:
                    c.set_max_bytes(500 + (i % 1000))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    held = [c.get(k) for k in CS]
    assert c.nbytes == sum(len(b) for b in held if b is not None)
    assert c.nbytes <= c.max_bytes


def test_result_map_is_consistent_under_threads():
    m = ResultMap(max_entries=7)

    def worker(seed):
        for i in range(3000):
            k = CS[(seed + i) % len(CS)]
            if i % 2:
                m.put(k, "json", CS[seed])
            else:
                m.get(k)
                m.discard(CS[(seed + 3 * i) % len(CS)])

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(m) <= 7
    assert sum(k in m for k in CS) == len(m)


# -- the package singletons and config coupling -----------------------------------------------


@pytest.fixture
def fresh_memory_buffers(monkeypatch):
    fake = FakeConfig(memory_cache=100, cache=None)
    monkeypatch.setattr(cache_pkg, "_config", lambda: fake)
    buffers = cache_pkg._ConfiguredBufferCache()
    monkeypatch.setattr(cache_pkg, "memory_buffers", buffers)
    return fake, buffers


def test_memory_buffers_follow_config_generation(fresh_memory_buffers):
    fake, buffers = fresh_memory_buffers
    buffers.put(CS[0], b"x" * 60)
    assert buffers.max_bytes == 100
    buffers.put(CS[1], b"y" * 30)
    assert fake.reads == ["memory_cache"]  # unchanged generation: no re-read
    assert buffers.get(CS[0]) is not None
    fake.set("memory_cache", 70)  # shrink: the least recently used (CS[1]) goes
    assert buffers.get(CS[1]) is None
    assert buffers.max_bytes == 70 and buffers.nbytes == 60
    fake.set("memory_cache", 10)
    assert buffers.get(CS[0]) is None
    assert buffers.nbytes == 0
    assert fake.reads == ["memory_cache"] * 3


def test_memory_buffers_follow_real_config(tmp_path, monkeypatch):
    from seamless import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEAMLESS_CACHE", raising=False)
    config.init(memory_cache=4096)
    cache_pkg.memory_buffers.put(CS[0], b"a" * 100)
    assert cache_pkg.memory_buffers.max_bytes == 4096
    config.init(memory_cache=50)
    assert cache_pkg.memory_buffers.get(CS[0]) is None
    assert cache_pkg.memory_buffers.max_bytes == 50


def test_module_singletons_types():
    assert isinstance(cache_pkg.memory_results, ResultMap)
    assert isinstance(cache_pkg.memory_buffers, BufferCache)
    assert cache_pkg.memory_results.max_entries == 1_000_000


def test_import_is_light_in_a_fresh_interpreter():
    code = (
        "import sys, seamless.cache, seamless.cache.persistent, seamless.cache.memory, "
        "seamless.cache.database, seamless.cache.buffers\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'yaml') "
        "or m.startswith('seamless._ipc'))\n"
        "print(','.join(bad))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(cache_pkg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
