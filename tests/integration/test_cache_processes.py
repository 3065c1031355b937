"""Several processes sharing one persistent cache directory
(docs/caching.md, "Sharing between processes").

Four writer processes start at the same moment on a directory that does not exist yet (so they
also race to create the database), each writing results that overlap: identical results under
the same transformation (racing renames of the same buffer), different results under the same
transformation (first writer wins), and results of their own. Two reader processes look up and
read all the while. Every child runs with ``-W error``, so any ``CacheWarning`` (a corrupt or
missing buffer seen by a reader) fails it. Afterwards the database and the files must agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import seamless.cache as cache_pkg
from seamless.cache.persistent import PersistentCache

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cache_pkg.__file__)))
WRITERS = 4
READERS = 2
ITEMS = 40

COMMON = """
import hashlib, json, os, sys, time
from seamless.cache.persistent import PersistentCache

ITEMS = %d

def sha(d):
    return hashlib.sha256(d).hexdigest()

def tf(*parts):
    return sha(repr(parts).encode())

def shared(i):
    # the same bytes in every writer; every 8th one is 1-2 MB so renames overlap writes
    size = 1_000_000 + 4096 * i if i %% 8 == 0 else 100 + 37 * i
    return (b"shared %%d " %% i) * (size // 10)

def conflicting(writer, i, round_):
    return (b"round %%d writer %%d item %%d;" %% (round_, writer, i)) * (50 + i)

def wait_for(path):
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit("start signal never came")
        time.sleep(0.001)
""" % ITEMS

WRITER = COMMON + """
directory, writer, go, round_ = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
wait_for(go)
cache = PersistentCache(directory)
for i in range(ITEMS):
    data = shared(i)
    if i % 5 == writer % 5:
        assert cache.write_now(tf("shared", i), "bytes", sha(data), data)
    else:
        cache.write(tf("shared", i), "bytes", sha(data), data)
    data = conflicting(writer, i, round_)
    cache.write(tf("conflict", i), "bytes", sha(data), data)
    data = b"own %d %d %d" % (writer, i, round_)
    cache.write(tf("own", writer, i, round_), "json", sha(data), data, duration=0.01 * i)
    if i % 10 == 9:
        cache.flush()
cache.close()
print(json.dumps({"writer": writer}))
"""

READER = COMMON + """
directory, go, stop = sys.argv[1], sys.argv[2], sys.argv[3]
wait_for(go)
cache = PersistentCache(directory)
hits = reads = passes = 0
while True:
    last = os.path.exists(stop)  # one full pass after the writers are done
    passes += 1
    for i in range(ITEMS):
        for key, check in ((tf("shared", i), lambda d, i=i: d == shared(i)),
                           (tf("conflict", i), lambda d, i=i: any(
                               d == conflicting(w, i, 1) for w in range(4)))):
            hit = cache.lookup(key)
            if hit is None:
                continue
            hits += 1
            data = cache.read_buffer(hit[1])
            assert data is not None, f"a hit for {key} had no readable buffer"
            assert sha(data) == hit[1] and check(data), f"wrong content for {key}"
            reads += 1
    if last:
        break
cache.close()
print(json.dumps({"hits": hits, "reads": reads, "passes": passes}))
"""


@contextlib.contextmanager
def children():
    """Collects Popen objects; on exit every child still running is killed, all are waited for."""
    procs = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def start(procs, script_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-W", "error", str(script_path), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    procs.append(p)
    return p


def finish(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"child exited with {p.returncode}:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def sha(d):
    return hashlib.sha256(d).hexdigest()


def tf(*parts):
    return sha(repr(parts).encode())


def shared(i):
    size = 1_000_000 + 4096 * i if i % 8 == 0 else 100 + 37 * i
    return (b"shared %d " % i) * (size // 10)


def conflicting(writer, i, round_):
    return (b"round %d writer %d item %d;" % (round_, writer, i)) * (50 + i)


def rows(directory, sql, args=()):
    conn = sqlite3.connect(os.path.join(directory, "seamless.db"))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def check_consistent(directory):
    """Every row's file exists and verifies, every file has a row, no temp file is left."""
    buffers = dict(rows(directory, "SELECT checksum, size FROM buffers"))
    for cs, size in buffers.items():
        path = os.path.join(directory, "buffers", cs[:2], cs)
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) == size and sha(data) == cs, path
    files, temps = set(), []
    for dirpath, _dirs, names in os.walk(os.path.join(directory, "buffers")):
        for name in names:
            if name.startswith(".tmp-"):
                temps.append(os.path.join(dirpath, name))
            else:
                files.add(name)
    assert temps == []
    assert files == set(buffers)
    dangling = rows(directory,
                    "SELECT count(*) FROM results WHERE result NOT IN (SELECT checksum FROM "
                    "buffers)")
    assert dangling == [(0,)]
    return buffers


def test_concurrent_writers_and_readers(tmp_path):
    directory = tmp_path / "shared-cache"  # created by whichever child comes first
    writer_py, reader_py = tmp_path / "writer.py", tmp_path / "reader.py"
    writer_py.write_text(textwrap.dedent(WRITER))
    reader_py.write_text(textwrap.dedent(READER))
    go, stop = tmp_path / "go", tmp_path / "stop"

    with children() as procs:
        writers = [start(procs, writer_py, directory, w, go, 1) for w in range(WRITERS)]
        readers = [start(procs, reader_py, directory, go, stop) for _ in range(READERS)]
        time.sleep(0.5)  # let the interpreters start, so they all begin together
        go.touch()
        assert sorted(finish(p)["writer"] for p in writers) == list(range(WRITERS))
        stop.touch()
        reads = [finish(p) for p in readers]
    for r in reads:
        assert r["reads"] == r["hits"]  # every hit was served, verified and correct
        assert r["hits"] >= 2 * ITEMS  # at least the last pass found everything

    check_consistent(directory)
    winners = {}
    for i in range(ITEMS):
        [(result,)] = rows(directory, "SELECT result FROM results WHERE transformation=?",
                           (tf("shared", i),))
        assert result == sha(shared(i))
        [(result, created)] = rows(directory, "SELECT result, created FROM results WHERE "
                                              "transformation=?", (tf("conflict", i),))
        assert result in {sha(conflicting(w, i, 1)) for w in range(WRITERS)}
        winners[i] = (result, created)
    assert rows(directory, "SELECT count(*) FROM results") == [(ITEMS * (WRITERS + 2),)]

    # A second round of writers with other results for the same transformations: the first
    # writers keep their rows (INSERT OR IGNORE); only their own new rows are added.
    go2 = tmp_path / "go2"
    with children() as procs:
        again = [start(procs, writer_py, directory, w, go2, 2) for w in range(WRITERS)]
        go2.touch()
        for p in again:
            finish(p)
    for i in range(ITEMS):
        assert rows(directory, "SELECT result, created FROM results WHERE transformation=?",
                    (tf("conflict", i),)) == [winners[i]]
    check_consistent(directory)
    assert rows(directory, "SELECT count(*) FROM results") == [(ITEMS * (2 * WRITERS + 2),)]

    cache = PersistentCache(directory)
    try:
        report = cache.verify()
        assert (report["dropped"], report["missing"], report["registered"]) == ([], [], [])
        i = 3
        data = conflicting(0, i, 3)
        assert cache.write_now(tf("conflict", i), "bytes", sha(data), data, replace=True)
        assert cache.lookup(tf("conflict", i)) == ("bytes", sha(data))
    finally:
        cache.close()
