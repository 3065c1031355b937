"""Buffer files are renamed into place without a disk flush: every read re-hashes, so a
file a crash left torn is a miss and is recomputed, never served (docs/caching.md)."""

from __future__ import annotations

import os

import pytest
from cachehelpers import opened, sha, tf_checksum

from seamless.cache.buffers import BufferStore
from seamless.errors import CacheWarning


def test_storing_results_flushes_nothing_to_disk(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    with opened(str(tmp_path)) as cache:
        for n in range(50):
            data = b"result %d" % n
            assert cache.write_now(tf_checksum(n), "bytes", sha(data), data)
    store = BufferStore(str(tmp_path / "buffers"))
    assert store.write_stream([b"streamed ", b"pieces"], 15)[1] == 15
    assert calls == []


def test_a_torn_file_of_the_right_size_is_a_miss_then_rewritten(tmp_path):
    data = b"x" * 4096
    with opened(str(tmp_path)) as cache:
        assert cache.write_now(tf_checksum(1), "bytes", sha(data), data)
    path = tmp_path / "buffers" / sha(data)[:2] / sha(data)
    path.write_bytes(b"\0" * len(data))  # what a crash before the data reached the disk leaves
    with opened(str(tmp_path)) as cache:
        with pytest.warns(CacheWarning, match="failed verification.*recomputed"):
            assert cache.read_buffer(sha(data)) is None  # verified on read: discarded
        assert not path.exists()
        assert cache.write_now(tf_checksum(1), "bytes", sha(data), data)
        assert cache.read_buffer(sha(data)) == data
    assert path.read_bytes() == data
