"""The persistent cache (docs/design/identity-and-cache.md, "The persistent cache"): format,
hits, corruption, failures.

We run as root, so "cannot write" is produced without permission bits: a regular file in the way
of the directory, RLIMIT_FSIZE in a child process, and read-only bind mounts / a tiny tmpfs in a
private mount namespace (``unshare -m``). Cases that need a child process write a script into
the test's temp directory and wait for it.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import importlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
from cachehelpers import FakeConfig

import seamless.cache as cache_pkg
from seamless.errors import CacheError, CacheWarning

# ``seamless.cache.persistent`` is also the name of the package's function persistent(); the
# module itself is reached through the import system.
persistent_mod = importlib.import_module("seamless.cache.persistent")
from seamless.cache.persistent import PersistentCache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cache_pkg.__file__)))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tf(label: str) -> str:
    """A transformation checksum for a test label."""
    return sha(b"transformation:" + label.encode())


def query(directory, sql, args=()):
    conn = sqlite3.connect(os.path.join(directory, "seamless.db"))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def temp_files(directory):
    found = []
    for dirpath, _dirs, files in os.walk(directory):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".tmp-")]
    return found


@pytest.fixture
def cache(tmp_path):
    c = PersistentCache(tmp_path / "cache")
    yield c
    c.close()


def run_child(tmp_path, script: str, *args, prefix=()):
    """Run ``script`` in a fresh interpreter (optionally under ``prefix``), wait for it and
    return the JSON object it prints last."""
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([*prefix, sys.executable, str(path), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), str(path)


# -- format and round trip ----------------------------------------------------------------------


def test_layout_schema_and_modes(tmp_path):
    directory = tmp_path / "a" / "b" / "cache"
    c = PersistentCache(directory)
    try:
        for d in (tmp_path / "a", tmp_path / "a" / "b", directory, directory / "buffers"):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        assert query(directory, "SELECT key, value FROM meta ORDER BY key") == [
            ("encoding", "1"), ("schema", "1")]
        assert query(directory, "PRAGMA journal_mode") == [("wal",)]
        names = {n for (n,) in query(directory, "SELECT name FROM sqlite_master")}
        assert {"meta", "results", "buffers", "results_by_result"} <= names
        cols = [r[1] for r in query(directory, "PRAGMA table_info(results)")]
        assert cols == ["transformation", "result", "kind", "created", "duration", "label"]
        cols = [r[1] for r in query(directory, "PRAGMA table_info(buffers)")]
        assert cols == ["checksum", "size", "created", "last_used"]
        conn = c._db.conn()
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (30000,)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        c.close()
    # An existing directory is reopened as is.
    PersistentCache(directory).close()


def test_round_trip(cache):
    data = b"some canonical bytes" * 100
    cs = sha(data)
    assert cache.lookup(tf("a")) is None
    assert cache.read_buffer(cs) is None
    before = time.time()
    cache.write(tf("a"), "bytes", cs, data, duration=1.5)
    assert cache.flush() is True
    kind, result = cache.lookup(tf("a"))
    assert (kind, result) == ("bytes", cs)
    assert type(result).__name__ == "Checksum"
    got = cache.read_buffer(cs)
    assert got == data
    assert isinstance(got, memoryview) and got.readonly and got.format == "B"
    with pytest.raises(TypeError):
        got[0] = 0
    path = os.path.join(cache.directory, "buffers", cs[:2], cs)
    with open(path, "rb") as f:
        assert f.read() == data
    [(t, r, k, created, duration, label)] = query(cache.directory, "SELECT * FROM results")
    assert (t, r, k, duration, label) == (tf("a"), cs, "bytes", 1.5, None)
    assert before <= created <= time.time()
    [(c, size, _, _)] = query(cache.directory, "SELECT * FROM buffers")
    assert (c, size) == (cs, len(data))
    assert temp_files(cache.directory) == []


def test_large_buffer_round_trip_and_corruption(cache):
    from seamless.cache import buffers

    size = buffers.LARGE_READ + 3 * buffers._READ_CHUNK + 12345  # several chunks, ragged end
    data = os.urandom(size)
    cs = sha(data)
    cache.write(tf("large"), "bytes", cs, data)
    cache.flush()
    got = cache.read_buffer(cs)
    assert got.nbytes == size and got.readonly and got == data
    assert bytes(got[-100:]) == data[-100:]
    # It owns its memory: still valid after the file is gone.
    path = os.path.join(cache.directory, "buffers", cs[:2], cs)
    again = cache.read_buffer(cs)
    os.unlink(path)
    assert again == data
    cache.write_now(tf("large"), "bytes", cs, data)
    with open(path, "r+b") as f:  # flip a bit in the last chunk
        f.seek(size - 5)
        last = f.read(1)
        f.seek(size - 5)
        f.write(bytes([last[0] ^ 1]))
    with pytest.warns(CacheWarning, match=rf"failed verification \(its {size} bytes hash to"):
        assert cache.read_buffer(cs) is None
    assert not os.path.exists(path)
    assert cache.lookup(tf("large")) is None


def test_write_accepts_buffer_protocol_objects(cache):
    import array

    values = array.array("d", [1.5, 2.5, 3.5])
    raw = values.tobytes()
    cache.write(tf("arr"), "bytes", sha(raw), values)
    cache.write(tf("ba"), "bytes", sha(b"xyz"), bytearray(b"xyz"))
    cache.flush()
    assert cache.read_buffer(sha(raw)) == raw
    assert cache.read_buffer(sha(b"xyz")) == b"xyz"
    [(size,)] = query(cache.directory, "SELECT size FROM buffers WHERE checksum=?", (sha(raw),))
    assert size == 24


def test_empty_buffer_round_trip(cache):
    assert cache.write_now(tf("empty"), "bytes", sha(b""), b"") is True
    assert cache.lookup(tf("empty")) == ("bytes", sha(b""))
    assert cache.read_buffer(sha(b"")) == b""


def test_write_argument_errors(cache):
    with pytest.raises(ValueError, match="tf_cs must be a checksum"):
        cache.write("abc", "bytes", sha(b"x"), b"x")
    with pytest.raises(ValueError, match="result_cs must be a checksum"):
        cache.write(tf("x"), "bytes", "../../etc/passwd", b"x")
    with pytest.raises(TypeError, match="kind must be a non-empty str"):
        cache.write(tf("x"), "", sha(b"x"), b"x")
    with pytest.raises(ValueError, match="must be C-contiguous"):
        cache.write(tf("x"), "bytes", sha(b"x"), memoryview(b"xxxx")[::2])
    with pytest.raises(ValueError, match="cs must be a checksum"):
        cache.read_buffer("3fa2")
    with pytest.raises(ValueError, match="tf_cs must be a checksum"):
        cache.lookup(tf("x").upper())
    cache.flush()
    assert query(cache.directory, "SELECT count(*) FROM results") == [(0,)]


def test_first_writer_wins_unless_replace(cache):
    one, two, three = b"first", b"second", b"third"
    cache.write(tf("t"), "bytes", sha(one), one)
    cache.write(tf("t"), "str", sha(two), two)
    cache.flush()
    assert cache.lookup(tf("t")) == ("bytes", sha(one))
    [(created_first,)] = query(cache.directory, "SELECT created FROM results")
    # Both buffers are stored; only the results row decides.
    assert cache.read_buffer(sha(two)) == two
    cache.write(tf("t"), "str", sha(three), three, replace=True)
    cache.flush()
    assert cache.lookup(tf("t")) == ("str", sha(three))
    [(created_now,)] = query(cache.directory, "SELECT created FROM results")
    assert created_now >= created_first
    assert query(cache.directory, "SELECT count(*) FROM buffers") == [(3,)]


def test_existing_file_with_right_size_is_not_rewritten(cache):
    data = os.urandom(5000)
    cs = sha(data)
    cache.write_now(tf("a"), "bytes", cs, data)
    path = os.path.join(cache.directory, "buffers", cs[:2], cs)
    ino = os.stat(path).st_ino
    cache.write_now(tf("b"), "bytes", cs, data)
    assert os.stat(path).st_ino == ino
    assert cache.lookup(tf("b")) == ("bytes", cs)
    # A file of the wrong size is replaced by a complete copy.
    with open(path, "r+b") as f:
        f.truncate(100)
    cache.write_now(tf("c"), "bytes", cs, data)
    assert os.stat(path).st_ino != ino
    assert cache.read_buffer(cs) == data


def test_hit_requires_the_file_with_its_size(cache):
    data = b"x" * 1000
    cs = sha(data)
    cache.write_now(tf("a"), "bytes", cs, data)
    cache.write_now(tf("b"), "bytes", cs, data)
    path = os.path.join(cache.directory, "buffers", cs[:2], cs)
    os.unlink(path)
    # A missing file: a plain miss, and the stale rows go (no warning).
    assert cache.lookup(tf("a")) is None
    assert query(cache.directory, "SELECT count(*) FROM results") == [(0,)]
    assert query(cache.directory, "SELECT count(*) FROM buffers") == [(0,)]
    # A file of another size: a miss, reported and discarded.
    cache.write_now(tf("a"), "bytes", cs, data)
    with open(path, "r+b") as f:
        f.truncate(999)
    with pytest.warns(CacheWarning) as record:
        assert cache.lookup(tf("a")) is None
    assert str(record[0].message) == (
        f"cache buffer {cs[:12]}… at {path} failed verification (size 999, expected 1000); "
        "discarded, the result will be recomputed")
    assert record[0].filename == __file__  # attributed to the caller, not to seamless
    assert not os.path.exists(path)
    assert query(cache.directory, "SELECT count(*) FROM results") == [(0,)]


def test_results_row_without_buffers_row_is_a_miss(cache):
    data = b"payload"
    cache.write_now(tf("a"), "json", sha(data), data)
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("DELETE FROM buffers")
    conn.commit()
    conn.close()
    assert cache.lookup(tf("a")) is None
    assert query(cache.directory, "SELECT count(*) FROM results") == [(0,)]
    # Rewriting works again afterwards.
    cache.write_now(tf("a"), "json", sha(data), data)
    assert cache.lookup(tf("a")) == ("json", sha(data))


# -- corruption ---------------------------------------------------------------------------------


def _store_two_results(cache, data):
    cs = sha(data)
    cache.write(tf("one"), "bytes", cs, data)
    cache.write(tf("two"), "bytes", cs, data)
    cache.write(tf("other"), "bytes", sha(b"other"), b"other")
    cache.flush()
    return cs, os.path.join(cache.directory, "buffers", cs[:2], cs)


def _assert_discarded(cache, cs, path):
    assert not os.path.exists(path)
    assert query(cache.directory, "SELECT count(*) FROM buffers WHERE checksum=?", (cs,)) == [(0,)]
    assert query(cache.directory, "SELECT count(*) FROM results WHERE result=?", (cs,)) == [(0,)]
    assert cache.lookup(tf("one")) is None and cache.lookup(tf("two")) is None
    # Unrelated entries stay.
    assert cache.lookup(tf("other")) == ("bytes", sha(b"other"))


def test_truncated_buffer_is_discarded(cache):
    data = os.urandom(4000)
    cs, path = _store_two_results(cache, data)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.warns(CacheWarning) as record:
        assert cache.read_buffer(cs) is None
    assert len(record) == 1
    assert str(record[0].message) == (
        f"cache buffer {cs[:12]}… at {path} failed verification (size 1000, expected 4000); "
        "discarded, the result will be recomputed")
    _assert_discarded(cache, cs, path)
    # Recomputed and written again: served again.
    cache.write_now(tf("one"), "bytes", cs, data)
    assert cache.read_buffer(cs) == data


def test_bit_flipped_buffer_is_discarded(cache):
    data = os.urandom(4000)
    cs, path = _store_two_results(cache, data)
    flipped = bytearray(data)
    flipped[1234] ^= 0x10
    with open(path, "wb") as f:
        f.write(flipped)
    assert cache.lookup(tf("one")) == ("bytes", cs)  # the size is right: lookup says hit
    with pytest.warns(CacheWarning) as record:
        assert cache.read_buffer(cs) is None
    assert str(record[0].message) == (
        f"cache buffer {cs[:12]}… at {path} failed verification (its 4000 bytes hash to "
        f"{sha(bytes(flipped))[:12]}…); discarded, the result will be recomputed")
    _assert_discarded(cache, cs, path)


def test_empty_file_is_discarded(cache):
    data = b"q" * 64
    cs, path = _store_two_results(cache, data)
    open(path, "wb").close()
    with pytest.warns(CacheWarning, match=r"failed verification \(size 0, expected 64\)"):
        assert cache.read_buffer(cs) is None
    _assert_discarded(cache, cs, path)


def test_unreadable_buffer_is_discarded(cache):
    data = b"r" * 64
    cs, path = _store_two_results(cache, data)
    os.unlink(path)
    os.symlink(path, path)  # a link to itself: opening fails with ELOOP
    with pytest.warns(CacheWarning) as record:
        assert cache.read_buffer(cs) is None
    assert str(record[0].message) == (
        f"cache buffer {cs[:12]}… at {path} could not be read ([Errno {errno.ELOOP}] "
        f"{os.strerror(errno.ELOOP)}); discarded, the result will be recomputed")
    assert not os.path.lexists(path)
    assert query(cache.directory, "SELECT count(*) FROM results WHERE result=?", (cs,)) == [(0,)]
    assert query(cache.directory, "SELECT count(*) FROM buffers WHERE checksum=?", (cs,)) == [(0,)]


def test_orphan_file_is_served_after_verification(cache):
    data = b"orphan content"
    cs = sha(data)
    os.makedirs(os.path.join(cache.directory, "buffers", cs[:2]))
    with open(os.path.join(cache.directory, "buffers", cs[:2], cs), "wb") as f:
        f.write(data)
    assert cache.read_buffer(cs) == data


# -- last_used ----------------------------------------------------------------------------------


def test_last_used_is_updated_at_most_hourly(cache):
    data = b"used"
    cs = sha(data)
    cache.write_now(tf("u"), "bytes", cs, data)
    [(recent,)] = query(cache.directory, "SELECT last_used FROM buffers")
    cache.lookup(tf("u"))
    cache.read_buffer(cs)
    cache.flush()
    assert query(cache.directory, "SELECT last_used FROM buffers") == [(recent,)]
    old = time.time() - 2 * 3600
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("UPDATE buffers SET last_used=?", (old,))
    conn.commit()
    conn.close()
    cache.read_buffer(cs)
    cache.flush()
    [(now,)] = query(cache.directory, "SELECT last_used FROM buffers")
    assert now > old + 3600
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("UPDATE buffers SET last_used=?", (old,))
    conn.commit()
    conn.close()
    assert cache.lookup(tf("u")) == ("bytes", cs)
    cache.flush()
    [(now,)] = query(cache.directory, "SELECT last_used FROM buffers")
    assert now > old + 3600


# -- opening failures ---------------------------------------------------------------------------


def test_regular_file_in_place_of_the_directory(tmp_path):
    target = tmp_path / "cache"
    target.write_text("not a directory")
    with pytest.raises(CacheError) as info:
        PersistentCache(target)
    assert str(info.value) == (
        f"cache directory {target} is not a directory ([Errno {errno.ENOTDIR}] "
        f"{os.strerror(errno.ENOTDIR)}); set SEAMLESS_CACHE to a writable directory")
    assert info.value.errno == errno.ENOTDIR
    assert info.value.filename == str(target)
    assert isinstance(info.value, OSError)
    # A regular file as a parent of the directory.
    with pytest.raises(CacheError) as info:
        PersistentCache(target / "sub" / "dir")
    assert str(info.value) == (
        f"cache directory {target}/sub/dir is not a directory ([Errno {errno.ENOTDIR}] "
        f"{os.strerror(errno.ENOTDIR)}: {target}); set SEAMLESS_CACHE to a writable directory")
    assert target.read_text() == "not a directory"


def test_regular_file_in_place_of_buffers(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "buffers").write_text("in the way")
    with pytest.raises(CacheError, match="is not a directory"):
        PersistentCache(tmp_path / "c")


def _make_db(path, schema):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema', ?), ('encoding', '1')", (schema,))
    conn.commit()
    conn.close()


def test_unknown_schema_is_refused_and_not_touched(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    db = directory / "seamless.db"
    _make_db(db, "3")
    before = db.read_bytes()
    with pytest.raises(CacheError) as info:
        PersistentCache(directory)
    assert str(info.value) == (
        f"cache database {db} has schema 3, this version reads schema 1 (upgrade seamless, "
        "or point SEAMLESS_CACHE at another directory)")
    assert info.value.filename == str(db)
    assert db.read_bytes() == before
    assert not os.path.exists(str(db) + "-wal")
    assert query(directory, "PRAGMA journal_mode") == [("delete",)]


def test_malformed_database_is_refused(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "seamless.db").write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(CacheError, match=r"cache database .*seamless.db is malformed \(file is "
                                         r"not a database\); move it away"):
        PersistentCache(directory)


def test_closed_cache_refuses_calls(tmp_path):
    c = PersistentCache(tmp_path / "c")
    c.write(tf("a"), "bytes", sha(b"a"), b"a")
    c.close()  # flushes first
    assert query(tmp_path / "c", "SELECT count(*) FROM results") == [(1,)]
    with pytest.raises(RuntimeError, match="is closed"):
        c.write(tf("b"), "bytes", sha(b"b"), b"b")
    with pytest.raises(RuntimeError, match="was closed"):
        c.lookup(tf("a"))


# -- the writer thread --------------------------------------------------------------------------


def test_one_writer_thread_shared_and_idle_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(persistent_mod, "_IDLE_EXIT", 0.05)
    a = PersistentCache(tmp_path / "a")
    b = PersistentCache(tmp_path / "b")
    try:
        seen = set()
        original = persistent_mod.PersistentCache._do_write

        def spy(self, *args):
            seen.add(threading.current_thread().name)
            return original(self, *args)

        monkeypatch.setattr(persistent_mod.PersistentCache, "_do_write", spy)
        for i in range(20):
            (a if i % 2 else b).write(tf(str(i)), "json", sha(b"%d" % i), b"%d" % i)
        a.flush()
        b.flush()
        assert seen == {"seamless-cache-writer"}
        assert sum(t.name == "seamless-cache-writer" for t in threading.enumerate()) <= 1
        deadline = time.monotonic() + 30
        while persistent_mod._writer.thread() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert persistent_mod._writer.thread() is None  # idle: the thread ended
        a.write(tf("again"), "json", sha(b"1"), b"1")  # and a new one starts on demand
        a.flush()
        assert a.lookup(tf("again")) == ("json", sha(b"1"))
    finally:
        a.close()
        b.close()


def test_flush_waits_for_queued_writes(cache, monkeypatch):
    gate = threading.Event()
    original = persistent_mod.PersistentCache._do_write

    def slow(self, *args):
        gate.wait(30)
        return original(self, *args)

    monkeypatch.setattr(persistent_mod.PersistentCache, "_do_write", slow)
    cache.write(tf("slow"), "bytes", sha(b"s"), b"s")
    assert cache.flush(timeout=0.01) is False
    assert query(cache.directory, "SELECT count(*) FROM results") == [(0,)]
    gate.set()
    assert cache.flush() is True
    assert cache.lookup(tf("slow")) == ("bytes", sha(b"s"))


def test_writer_survives_an_unexpected_job_error(cache, monkeypatch, caplog):
    original = persistent_mod.PersistentCache._do_rows_many
    calls = []

    def buggy(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("bug")
        return original(self, *args)

    monkeypatch.setattr(persistent_mod.PersistentCache, "_do_rows_many", buggy)
    with caplog.at_level(logging.ERROR, logger="seamless"):
        cache.write(tf("a"), "bytes", sha(b"a"), b"a")
        assert cache.flush(timeout=30) is True
        cache.write(tf("b"), "bytes", sha(b"b"), b"b")
        assert cache.flush(timeout=30) is True
    assert "cache writer: job" in caplog.text
    assert cache.lookup(tf("a")) is None
    assert cache.lookup(tf("b")) == ("bytes", sha(b"b"))


def _queue_behind_a_held_writer(cache, labels):
    """Queue a write of each label while the writer thread is held by an earlier job, so they
    reach it together; returns the event that releases it."""
    release, holding = threading.Event(), threading.Event()

    def hold():
        holding.set()
        assert release.wait(30), "the test never released the writer"

    cache._submit(hold, ())
    assert holding.wait(30)
    for label in labels:
        data = label.encode()
        cache.write(tf(label), "bytes", sha(data), data, label=label)
    return release


def _count_transactions(cache, monkeypatch) -> list:
    """A list that gets one entry per transaction ``cache`` opens from now on."""
    opened = []
    original = cache._db.transaction

    def counted():
        opened.append(1)
        return original()

    monkeypatch.setattr(cache._db, "transaction", counted)
    return opened


def test_queued_writes_share_transactions(cache, monkeypatch):
    opened = _count_transactions(cache, monkeypatch)
    labels = [f"w{i}" for i in range(persistent_mod._WRITE_BATCH + 44)]
    _queue_behind_a_held_writer(cache, labels).set()
    assert cache.flush(timeout=30) is True
    assert len(opened) == 2  # one full batch and the rest
    for label in labels:
        assert cache.lookup(tf(label)) == ("bytes", sha(label.encode()))
        assert bytes(cache.read_buffer(sha(label.encode()))) == label.encode()
    assert query(cache.directory, "SELECT count(*) FROM results") == [(len(labels),)]


def test_results_arriving_one_by_one_share_a_transaction(cache, monkeypatch):
    """Tiny tasks finish one by one: the writer lingers for the next results instead of
    committing each alone."""
    monkeypatch.setattr(persistent_mod, "_LINGER_S", 5.0)
    opened = _count_transactions(cache, monkeypatch)
    labels = [f"one-by-one-{i}" for i in range(5)]
    for label in labels:
        data = label.encode()
        cache.write(tf(label), "bytes", sha(data), data)
        time.sleep(0.01)  # apart, as results of tiny tasks arrive
    assert cache.flush(timeout=30) is True
    assert len(opened) == 1
    assert [cache.lookup(tf(label)) for label in labels] == \
        [("bytes", sha(label.encode())) for label in labels]


def test_recorded_names_the_transformations_that_have_a_row(cache):
    stored = [f"probe-{i}" for i in range(300)]  # more than one probe query, not a power of 2
    for label in stored:
        cache.write(tf(label), "bytes", sha(label.encode()), label.encode())
    assert cache.flush(timeout=30) is True
    unknown = [tf(f"never-{i}") for i in range(45)]
    asked = unknown[:20] + [tf(label) for label in stored] + unknown[20:]
    assert cache.recorded(asked) == {tf(label) for label in stored}
    assert cache.recorded(unknown[:3]) == set()
    assert cache.recorded([]) == set()


def test_an_idle_writer_keeps_no_buffer_alive(cache):
    """A written buffer is released: a pool result in shared memory must not outlive its
    handle because the writer thread still names it."""

    class Buffer(bytearray):  # weakly referenceable, unlike bytes
        pass

    buffer = Buffer(b"released after the write")
    gone = weakref.ref(buffer)
    cache.write(tf("released"), "bytes", sha(bytes(buffer)), buffer)
    assert cache.flush(timeout=30) is True
    del buffer
    gc.collect()
    assert gone() is None
    assert cache.lookup(tf("released")) == ("bytes", sha(b"released after the write"))


def test_a_flush_does_not_wait_out_the_linger(cache, monkeypatch):
    monkeypatch.setattr(persistent_mod, "_LINGER_S", 3600.0)
    cache.write(tf("hurry"), "bytes", sha(b"hurry"), b"hurry")
    time.sleep(0.05)  # the writer is lingering by now
    assert cache.flush(timeout=30) is True  # would run out after 30 s if it lingered on
    assert cache.lookup(tf("hurry")) == ("bytes", sha(b"hurry"))


def test_a_removed_buffer_subfolder_is_made_again(cache):
    first = b"subfolder-1"
    cache.write(tf("s1"), "bytes", sha(first), first)
    assert cache.flush(timeout=30) is True
    subfolder = os.path.join(cache.directory, "buffers", sha(first)[:2])
    shutil.rmtree(subfolder)
    again = b"subfolder-1"
    assert cache._store.write_file(sha(again), again) is True
    assert stat.S_IMODE(os.stat(subfolder).st_mode) == 0o700
    with open(os.path.join(subfolder, sha(again)), "rb") as f:
        assert f.read() == again


def test_a_buffer_stored_again_refreshes_its_last_use(cache, monkeypatch):
    clock = iter(range(1000, 10 ** 6, 1000))
    monkeypatch.setattr(persistent_mod, "_clock", lambda: float(next(clock)))
    data = b"shared result"
    cache.write(tf("first"), "bytes", sha(data), data)
    assert cache.flush(timeout=30) is True
    [(used_before,)] = query(cache.directory, "SELECT last_used FROM buffers")
    cache.write(tf("second"), "bytes", sha(data), data)  # same result, another transformation
    assert cache.flush(timeout=30) is True
    [(used_after,)] = query(cache.directory, "SELECT last_used FROM buffers")
    assert used_after > used_before + persistent_mod.RECENCY_INTERVAL
    assert query(cache.directory, "SELECT count(*) FROM results") == [(2,)]


def test_a_file_that_cannot_be_written_drops_only_its_own_row(cache, monkeypatch):
    monkeypatch.setattr(persistent_mod, "_reported", set())
    original = cache._store.write_file

    def full_for_one(cs, buffer):
        if cs == sha(b"b2"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(cs, buffer)

    monkeypatch.setattr(cache._store, "write_file", full_for_one)
    _queue_behind_a_held_writer(cache, ["b1", "b2", "b3"]).set()
    with pytest.warns(CacheWarning, match=r"No space left on device"):
        assert cache.flush(timeout=30) is True
    assert cache.lookup(tf("b1")) == ("bytes", sha(b"b1"))
    assert cache.lookup(tf("b2")) is None
    assert cache.lookup(tf("b3")) == ("bytes", sha(b"b3"))


def test_a_database_failure_loses_the_batch_and_warns_once(cache, monkeypatch):
    monkeypatch.setattr(persistent_mod, "_reported", set())

    def locked():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(cache._db, "transaction", locked)
    _queue_behind_a_held_writer(cache, ["d1", "d2", "d3"]).set()
    with pytest.warns(CacheWarning) as record:
        assert cache.flush(timeout=30) is True
    assert len(record) == 1 and "database is locked" in str(record[0].message)
    monkeypatch.undo()
    assert [cache.lookup(tf(label)) for label in ("d1", "d2", "d3")] == [None, None, None]


def test_threads_share_a_cache(cache):
    errors = []

    def worker(n):
        try:
            for i in range(30):
                data = b"%d-%d" % (i % 10, i % 10)
                cache.write(tf(str(i % 10)), "bytes", sha(data), data)
                hit = cache.lookup(tf(str((i + n) % 10)))
                if hit is not None:
                    assert cache.read_buffer(hit[1]) is not None
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.flush()
    assert errors == []
    assert query(cache.directory, "SELECT count(*) FROM results") == [(10,)]


# -- failing writes -----------------------------------------------------------------------------

_FSIZE_CHILD = """
import hashlib, json, logging, os, resource, signal, sys, warnings
# Without this, exceeding RLIMIT_FSIZE kills the process with SIGXFSZ; seamless leaves signal
# handlers alone, so the program chooses.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from seamless.cache.persistent import PersistentCache

def sha(d):
    return hashlib.sha256(d).hexdigest()

directory = sys.argv[1]
debug = []
class Collect(logging.Handler):
    def emit(self, record):
        debug.append(record.getMessage())
logger = logging.getLogger("seamless")
logger.addHandler(Collect())
logger.setLevel(logging.DEBUG)

cache = PersistentCache(directory)  # the database is created before the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
big1, big2, small = os.urandom(1_000_000), os.urandom(1_000_000), b"small" * 10
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cache.write(sha(b"tf1"), "bytes", sha(big1), big1)
    cache.write(sha(b"tf2"), "bytes", sha(big2), big2)
    cache.write(sha(b"tf3"), "bytes", sha(small), small)
    cache.flush()
    ok = cache.write_now(sha(b"tf4"), "bytes", sha(big1), big1)
print(json.dumps({
    "warnings": [[str(w.message), w.category.__name__, w.filename] for w in caught],
    "debug": [m for m in debug if m.startswith("could not write")],
    "write_now": ok,
    "hits": [cache.lookup(sha(t)) is not None for t in (b"tf1", b"tf2", b"tf3", b"tf4")],
    "files": sorted(f for _, _, fs in os.walk(os.path.join(directory, "buffers")) for f in fs),
    "big": [sha(big1), sha(big2)],
}))
cache.close()
"""


def test_write_fails_on_file_size_limit(tmp_path):
    directory = tmp_path / "cache"
    out, script = run_child(tmp_path, _FSIZE_CHILD, directory)
    assert out["warnings"] == [[
        f"could not write to the persistent cache at {directory} ([Errno {errno.EFBIG}] "
        f"{os.strerror(errno.EFBIG)}); results stay in memory only (raise the file size limit "
        "(ulimit -f), or point SEAMLESS_CACHE elsewhere)",
        "CacheWarning", script]]  # once per (directory, errno), emitted in the caller's code
    assert len(out["debug"]) == 2  # the later failures are logged
    assert out["write_now"] is False
    assert out["hits"] == [False, False, True, False]
    assert [f for f in out["files"] if f.startswith(".tmp-")] == []
    assert not set(out["big"]) & set(out["files"])
    assert len(out["files"]) == 1
    assert query(directory, "SELECT count(*) FROM buffers") == [(1,)]


_MOUNT_CHILD = """
import hashlib, json, os, sys, warnings
from seamless.cache.persistent import PersistentCache  # noqa: E402
from seamless.errors import CacheError

def sha(d):
    return hashlib.sha256(d).hexdigest()

base = sys.argv[1]
out = {}
warnings.simplefilter("always")
# 1. a tiny tmpfs: the database fits, a large buffer does not
cache = PersistentCache(os.path.join(base, "tiny", "cache"))
big, small = os.urandom(1_000_000), b"fits"
with warnings.catch_warnings(record=True) as caught:
    cache.write(sha(b"big"), "bytes", sha(big), big)
    cache.write(sha(b"small"), "bytes", sha(small), small)
    cache.flush()
out["enospc"] = [str(w.message) for w in caught]
out["enospc_hits"] = [cache.lookup(sha(b"big")) is not None,
                      cache.lookup(sha(b"small")) is not None]
out["enospc_files"] = sorted(f for _, _, fs in os.walk(os.path.join(base, "tiny")) for f in fs
                             if f.startswith(".tmp-") or f == sha(big))
cache.close()
# 2. buffers/ on a read-only bind mount: opening works, writing fails with EROFS
cache = PersistentCache(os.path.join(base, "robuffers"))
with warnings.catch_warnings(record=True) as caught:
    cache.write(sha(b"ro"), "bytes", sha(small), small)
    cache.flush()
out["erofs"] = [str(w.message) for w in caught]
out["erofs_rows"] = cache.lookup(sha(b"ro")) is not None
cache.close()
# 3. a whole cache on a read-only bind mount, and a new one below it: CacheError
for sub in ("rocache", "rocache/new"):
    try:
        PersistentCache(os.path.join(base, sub))
        out[sub] = None
    except CacheError as e:
        out[sub] = [str(e), e.errno]
print(json.dumps(out))
"""


@pytest.fixture
def mount_namespace(tmp_path):
    """Skip unless this process may create a private mount namespace and mount there."""
    if shutil.which("unshare") is None:
        pytest.skip("the unshare command is not installed")
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"',
                           "sh", str(probe)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"unshare -m with mount is not permitted here: {proc.stderr.strip()}")


def test_write_fails_on_full_or_read_only_file_systems(tmp_path, mount_namespace):
    base = tmp_path / "m"
    for d in ("tiny", "robuffers", "rocache", "empty"):
        (base / d).mkdir(parents=True)
    seeded = PersistentCache(base / "robuffers")
    seeded.close()
    seeded = PersistentCache(base / "rocache")
    seeded.write_now(tf("seed"), "bytes", sha(b"seed"), b"seed")
    seeded.close()
    b = str(base)
    shell = (
        f'mount -t tmpfs -o size=512k tmpfs {b}/tiny && '
        f'mount --bind {b}/empty {b}/robuffers/buffers && '
        f'mount -o remount,bind,ro {b}/robuffers/buffers && '
        f'mount --bind {b}/rocache {b}/rocache && '
        f'mount -o remount,bind,ro {b}/rocache && exec "$@"'
    )
    out, _ = run_child(tmp_path, _MOUNT_CHILD, base, prefix=["unshare", "-m", "sh", "-c", shell,
                                                              "sh"])
    assert out["enospc"] == [
        f"could not write to the persistent cache at {base}/tiny/cache ([Errno {errno.ENOSPC}] "
        f"{os.strerror(errno.ENOSPC)}); results stay in memory only (free space, or point "
        "SEAMLESS_CACHE elsewhere)"]
    assert out["enospc_hits"] == [False, True]
    assert out["enospc_files"] == []  # no temp file and no partial buffer stayed
    assert out["erofs"] == [
        f"could not write to the persistent cache at {base}/robuffers ([Errno {errno.EROFS}] "
        f"{os.strerror(errno.EROFS)}); results stay in memory only (the file system is "
        "read-only: point SEAMLESS_CACHE at a writable directory)"]
    assert out["erofs_rows"] is False
    ro = f"{base}/rocache"
    rofs = f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}"
    assert out["rocache"] == [f"cache directory {ro} is not writable ({rofs}); set "
                              "SEAMLESS_CACHE to a writable directory", errno.EROFS]
    assert out["rocache/new"] == [f"cache directory {ro}/new is not writable ({rofs}); set "
                                  "SEAMLESS_CACHE to a writable directory", errno.EROFS]
    # The mounts lived in the child's namespace only.
    assert query(base / "rocache", "SELECT count(*) FROM results") == [(1,)]


_FORK_CHILD = """
import hashlib, json, os, sys
from seamless.cache.persistent import PersistentCache

def sha(d):
    return hashlib.sha256(d).hexdigest()

cache = PersistentCache(sys.argv[1])
cache.write(sha(b"parent"), "bytes", sha(b"p"), b"p")
cache.flush()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        cache.write(sha(b"child"), "bytes", sha(b"c"), b"c")
        cache.flush()
        code = 0 if cache.lookup(sha(b"parent")) is not None else 2
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status),
                  "seen": cache.lookup(sha(b"child")) is not None}))
cache.close()
"""


def test_cache_works_in_a_forked_child(tmp_path):
    out, _ = run_child(tmp_path, _FORK_CHILD, tmp_path / "c")
    assert out == {"child": 0, "seen": True}


# -- the package: persistent(), flush() -------------------------------------------------------


@pytest.fixture
def fake_config(monkeypatch):
    fake = FakeConfig()
    monkeypatch.setattr(cache_pkg, "_config", lambda: fake)
    return fake


def test_persistent_follows_config(fake_config, tmp_path):
    assert cache_pkg.persistent() is None
    fake_config.set("cache", str(tmp_path / "one"))
    first = cache_pkg.persistent()
    assert isinstance(first, PersistentCache) and first.directory == str(tmp_path / "one")
    assert cache_pkg.persistent() is first
    fake_config.set("cache", str(tmp_path / "two"))
    second = cache_pkg.persistent()
    assert second.directory == str(tmp_path / "two")
    fake_config.set("cache", str(tmp_path / "one"))
    assert cache_pkg.persistent() is first  # one instance per directory
    first.write(tf("x"), "bytes", sha(b"x"), b"x")
    second.write(tf("y"), "bytes", sha(b"y"), b"y")
    cache_pkg.flush()
    assert query(tmp_path / "one", "SELECT transformation FROM results") == [(tf("x"),)]
    assert query(tmp_path / "two", "SELECT transformation FROM results") == [(tf("y"),)]
    fake_config.set("cache", None)
    assert cache_pkg.persistent() is None


def test_persistent_unusable_directory_warns_once(fake_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fake_config.set("cache", str(blocker))
    with pytest.warns(CacheWarning) as record:
        assert cache_pkg.persistent() is None
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"could not open the persistent cache at {blocker} (cache "
                              f"directory {blocker} is not a directory")
    assert "results stay in memory only for the rest of this process" in message
    assert record[0].filename == __file__
    fake_config.set("cache", str(blocker))  # new generation, same directory: no new warning
    assert cache_pkg.persistent() is None
    fake_config.set("cache", str(tmp_path / "good"))
    assert cache_pkg.persistent() is not None


def test_persistent_with_real_config(tmp_path, monkeypatch):
    from seamless import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEAMLESS_CACHE", "envcache")
    c = cache_pkg.persistent()
    assert c is not None and c.directory == str(tmp_path / "envcache")
    config.init(cache=False)
    assert cache_pkg.persistent() is None


def test_deferred_write_warning_is_emitted_on_the_caller_thread(tmp_path, monkeypatch):
    c = PersistentCache(tmp_path / "c")
    try:
        monkeypatch.setattr(persistent_mod, "_reported", set())

        def fail(cs, buffer):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        monkeypatch.setattr(c._store, "write_file", fail)
        c.write(tf("q"), "bytes", sha(b"q"), b"q")
        with pytest.warns(CacheWarning) as record:
            c.flush()
        assert str(record[0].message) == (
            f"could not write to the persistent cache at {c.directory} ([Errno {errno.EDQUOT}] "
            f"{os.strerror(errno.EDQUOT)}); results stay in memory only (free space within your "
            "quota, or point SEAMLESS_CACHE elsewhere)")
        assert record[0].filename == __file__
        assert len(record) == 1
        c.write(tf("q2"), "bytes", sha(b"q2"), b"q2")
        c.flush()  # a repeat of the same errno: logged, no warning
    finally:
        c.close()


# -- primitives for seamless-cache ----------------------------------------------------------


def test_stats_verify_clear_gc(cache):
    datas = [os.urandom(1000 * (i + 1)) for i in range(4)]
    for i, d in enumerate(datas):
        cache.write(tf(str(i)), "bytes", sha(d), d)
    cache.flush()
    stats = cache.stats()
    assert (stats["results"], stats["buffers"], stats["bytes"]) == (4, 4, 10000)
    assert stats["directory"] == cache.directory
    assert stats["oldest_use"] <= stats["newest_use"]

    root = os.path.join(cache.directory, "buffers")
    # corrupt one, remove one, add an orphan
    with open(os.path.join(root, sha(datas[0])[:2], sha(datas[0])), "r+b") as f:
        f.write(b"\0" * 10)
    os.unlink(os.path.join(root, sha(datas[1])[:2], sha(datas[1])))
    orphan = b"orphan"
    os.makedirs(os.path.join(root, sha(orphan)[:2]), exist_ok=True)
    with open(os.path.join(root, sha(orphan)[:2], sha(orphan)), "wb") as f:
        f.write(orphan)
    report = cache.verify()
    assert report["dropped"] == [sha(datas[0])]
    assert report["missing"] == [sha(datas[1])]
    assert report["registered"] == [sha(orphan)]
    assert report["checked"] == 4
    assert cache.stats()["results"] == 2
    assert cache.stats()["buffers"] == 3
    assert cache.verify() == {"checked": 3, "dropped": [], "missing": [], "registered": []}

    # gc: least recently used first; old temp files go, young ones stay
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("UPDATE buffers SET last_used = 100 WHERE checksum = ?", (sha(datas[3]),))
    conn.commit()
    conn.close()
    old_tmp = os.path.join(root, sha(orphan)[:2], f".tmp-{sha(orphan)}-1-aaaa")
    young_tmp = os.path.join(root, sha(orphan)[:2], f".tmp-{sha(orphan)}-2-bbbb")
    for p in (old_tmp, young_tmp):
        open(p, "wb").close()
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    assert cache.gc(3100) == {"buffers": 1, "bytes": 4000, "temp_files": 1}
    assert not os.path.exists(old_tmp) and os.path.exists(young_tmp)
    assert cache.lookup(tf("3")) is None
    assert cache.lookup(tf("2")) == ("bytes", sha(datas[2]))
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 0"):
        cache.gc(-1)

    assert cache.clear() == 2
    assert cache.stats()["results"] == 0 and cache.stats()["buffers"] == 0
    assert os.path.exists(young_tmp)  # a write in progress elsewhere is left alone
    assert cache.lookup(tf("2")) is None


def test_write_stream_now_stores_pieces_under_their_checksum(tmp_path):
    cache = PersistentCache(tmp_path / "c")
    try:
        tf = hashlib.sha256(b"stream tf").hexdigest()
        pieces = [b"abc", memoryview(b"def"), bytearray(b"g" * 2_000_000)]
        data = b"".join(bytes(p) for p in pieces)
        for hint in (10, 1 << 30):  # the built-in and the OpenSSL SHA-256 agree
            assert cache.write_stream_now(tf, "bytes", pieces, hint, replace=True) == \
                hashlib.sha256(data).hexdigest()
        kind, cs = cache.lookup(tf)
        assert (kind, bytes(cache.read_buffer(cs))) == ("bytes", data)
    finally:
        cache.close()


def test_write_stream_now_failing_source_leaves_no_temp_file(tmp_path):
    cache = PersistentCache(tmp_path / "c")

    def pieces():
        yield b"partial"
        raise OSError(errno.EIO, "the source broke")

    try:
        tf = hashlib.sha256(b"broken stream").hexdigest()
        with pytest.warns(CacheWarning, match="the source broke"):
            assert cache.write_stream_now(tf, "bytes", pieces(), 100) is None
        assert cache.lookup(tf) is None
        leftovers = [n for _, _, names in os.walk(tmp_path / "c" / "buffers") for n in names]
        assert leftovers == []
    finally:
        cache.close()
