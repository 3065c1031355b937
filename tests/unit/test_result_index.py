"""The result index beside the cache database (docs/caching.md, "Layout"): every stored row of a
command (kind ``INDEXED_KIND``) gets an entry, the command line's hit reads it without SQLite,
and every way rows go away takes the entries with them; a missing, damaged or old entry means
"ask the database"."""

from __future__ import annotations

import hashlib
import importlib
import os
import sqlite3
import subprocess
import sys
import time
import warnings

import pytest

import seamless.cache as cache_pkg
from seamless.cache.persistent import PersistentCache
from seamless.cache.result_index import INDEXED_KIND, TOUCH_INTERVAL, ResultIndex, read_result
from seamless.errors import CacheWarning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cache_pkg.__file__)))
OLD = time.time() - 2 * TOUCH_INTERVAL


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tf(label: str) -> str:
    return sha(b"transformation:" + label.encode())


@pytest.fixture
def cache(tmp_path):
    c = PersistentCache(tmp_path / "cache")
    yield c
    c.close()


def entry_path(cache, label):
    return os.path.join(cache.directory, "results", tf(label)[:2], tf(label))


def store(cache, label, data=None, kind=INDEXED_KIND, replace=False):
    data = (label * 10).encode() if data is None else data
    assert cache.write_now(tf(label), kind, sha(data), data, replace=replace)
    return data


def test_a_stored_result_has_a_one_line_entry(cache):
    data = store(cache, "a")
    with open(entry_path(cache, "a"), "rb") as f:
        assert f.read() == f"{sha(data)} {len(data)} {INDEXED_KIND}\n".encode()
    assert bytes(read_result(cache.directory, tf("a"))) == data
    assert read_result(cache.directory, tf("unknown")) is None


def test_queued_writes_share_the_store_path_and_index_commands(cache):
    cache.write(tf("q"), INDEXED_KIND, sha(b"[1]"), b"[1]")
    cache.flush()
    assert bytes(read_result(cache.directory, tf("q"))) == b"[1]"


def test_results_of_python_functions_get_no_entry(cache):
    """Only the command line reads the index, and it looks up commands only."""
    cache.write(tf("py"), "json", sha(b"[2]"), b"[2]")
    cache.flush()
    assert not os.path.exists(entry_path(cache, "py"))
    assert cache.lookup(tf("py")) == ("json", sha(b"[2]"))  # through the database
    assert not os.path.exists(entry_path(cache, "py"))  # and the hit writes none either
    cache.verify()
    assert not os.path.exists(entry_path(cache, "py"))


def test_the_indexed_kind_is_the_kind_of_command_results():
    from seamless.shell.result import RESULT_KIND

    assert INDEXED_KIND == RESULT_KIND


def test_the_entry_follows_the_row_that_stays(cache):
    first = store(cache, "r", b"first")
    store(cache, "r", b"second")  # INSERT OR IGNORE: the first row stays
    assert bytes(read_result(cache.directory, tf("r"))) == first
    store(cache, "r", b"third", replace=True)  # seamless-run --no-cache
    assert bytes(read_result(cache.directory, tf("r"))) == b"third"


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"ab 12 bytes\n", b"x" * 600,
                                     ("0" * 64 + " -1 bytes\n").encode()])
def test_a_damaged_entry_means_ask_the_database(cache, content):
    data = store(cache, "d")
    with open(entry_path(cache, "d"), "wb") as f:
        f.write(content)
    assert read_result(cache.directory, tf("d")) is None
    assert cache.lookup(tf("d")) == (INDEXED_KIND, sha(data))  # the database still knows
    assert bytes(read_result(cache.directory, tf("d"))) == data  # and rewrote the entry


def test_a_missing_entry_is_written_by_the_next_database_lookup(cache):
    data = store(cache, "m")
    os.unlink(entry_path(cache, "m"))
    assert read_result(cache.directory, tf("m")) is None
    assert cache.lookup(tf("m")) is not None
    assert bytes(read_result(cache.directory, tf("m"))) == data


def test_an_old_entry_sends_the_hit_to_the_database_which_touches_and_refreshes(cache):
    data = store(cache, "o")
    os.utime(entry_path(cache, "o"), (OLD, OLD))
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("UPDATE buffers SET last_used = ?", (OLD,))
    conn.commit()
    conn.close()
    assert read_result(cache.directory, tf("o")) is None
    assert cache.lookup(tf("o")) is not None
    cache.flush()  # the last_used update is queued on the writer thread
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    ((last_used,),) = conn.execute("SELECT last_used FROM buffers").fetchall()
    conn.close()
    assert last_used > OLD + TOUCH_INTERVAL
    assert bytes(read_result(cache.directory, tf("o"))) == data


def test_a_missing_or_corrupt_buffer_is_left_to_the_database(cache):
    data = store(cache, "c")
    path = os.path.join(cache.directory, "buffers", sha(data)[:2], sha(data))
    with open(path, "r+b") as f:
        f.write(b"X")
    assert read_result(cache.directory, tf("c")) is None  # silently: no warning, no removal
    assert os.path.exists(path) and os.path.exists(entry_path(cache, "c"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.lookup(tf("c")) is not None  # same size: found...
        assert cache.read_buffer(sha(data)) is None  # ...and discarded when read
    assert [w.category for w in caught] == [CacheWarning]
    assert not os.path.exists(entry_path(cache, "c"))  # the dropped row took its entry
    store(cache, "gone")
    os.unlink(os.path.join(cache.directory, "buffers", sha(b"gone" * 10)[:2], sha(b"gone" * 10)))
    assert read_result(cache.directory, tf("gone")) is None
    assert cache.lookup(tf("gone")) is None
    assert not os.path.exists(entry_path(cache, "gone"))


def test_clear_removes_every_entry(cache):
    for label in "abc":
        store(cache, label)
    cache.clear()
    assert list(ResultIndex(cache.directory).iter_files()) == []
    assert read_result(cache.directory, tf("a")) is None


def test_gc_removes_the_entries_of_dropped_results(cache):
    store(cache, "old", b"o" * 1000)
    store(cache, "twin", b"o" * 1000)  # same result, another transformation
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("UPDATE buffers SET last_used = 1")
    conn.commit()
    conn.close()
    store(cache, "new", b"n" * 1000)
    temp = os.path.join(cache.directory, "results", tf("new")[:2], ".tmp-left-1-aa")
    with open(temp, "w") as f:
        f.write("half")
    os.utime(temp, (OLD, OLD))
    report = cache.gc(1500)
    assert report["buffers"] == 1 and report["temp_files"] == 1
    assert sorted(t for t, _ in ResultIndex(cache.directory).iter_files()) == [tf("new")]
    assert not os.path.exists(temp)


def test_verify_makes_the_index_say_what_the_rows_say(cache):
    kept = store(cache, "kept")
    store(cache, "stray")
    store(cache, "unindexed")
    index = ResultIndex(cache.directory)
    conn = sqlite3.connect(os.path.join(cache.directory, "seamless.db"))
    conn.execute("DELETE FROM results WHERE transformation = ?", (tf("stray"),))
    conn.commit()
    conn.close()
    os.unlink(entry_path(cache, "unindexed"))
    python = store(cache, "python", kind="json")
    index.write(tf("kept"), sha(b"other"), 5, INDEXED_KIND)  # names another result
    index.write(tf("never"), sha(kept), len(kept), INDEXED_KIND)  # no row at all
    index.write(tf("python"), sha(python), len(python), "json")  # a row of another kind
    cache.verify()
    assert sorted(t for t, _ in index.iter_files()) == sorted([tf("kept"), tf("unindexed")])
    assert bytes(read_result(cache.directory, tf("kept"))) == kept
    assert index.read(tf("kept")).same(sha(kept), len(kept), INDEXED_KIND)


def test_a_kind_that_does_not_fit_one_line_is_found_through_the_database(cache):
    store(cache, "k", kind="odd\nkind")
    assert not os.path.exists(entry_path(cache, "k"))
    assert cache.lookup(tf("k")) == ("odd\nkind", sha(b"k" * 10))


def test_the_hit_path_modules_import_no_sqlite(tmp_path):
    c = PersistentCache(tmp_path / "c")
    data = store(c, "light")
    c.close()
    probe = (
        "import sys\n"
        "from seamless.cache.result_index import read_result\n"
        f"assert bytes(read_result({str(tmp_path / 'c')!r}, {tf('light')!r})) == {data!r}\n"
        "print(sorted(m for m in ('sqlite3', 're', 'json', 'seamless.cache.persistent')\n"
        "             if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_package_function_persistent_survives_importing_the_module(tmp_path):
    probe = (
        "import importlib, seamless.cache as c\n"
        "assert callable(c.persistent) and not hasattr(c.persistent, 'PersistentCache')\n"
        "m = importlib.import_module('seamless.cache.persistent')\n"
        "from seamless.cache.persistent import PersistentCache\n"
        "assert c.persistent is not m and c.PersistentCache is PersistentCache\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert importlib.import_module("seamless.cache.persistent").PersistentCache is PersistentCache
