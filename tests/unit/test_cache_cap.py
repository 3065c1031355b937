"""The persistent cache's size cap (least recently used first), its labels and the schema
upgrade that added them, and the settings that turn it on, off and cap it (docs/caching.md)."""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seamless.cache as cache_pkg
from seamless import config
from seamless.cache.persistent import PersistentCache

persistent_module = sys.modules["seamless.cache.persistent"]  # the package attribute is a function


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tf(n) -> str:
    return sha(b"transformation %r" % (n,))


def payload(n: int, size: int) -> bytes:
    return (b"%08d" % n) * (size // 8)


@pytest.fixture
def counter_clock(monkeypatch):
    """Timestamps 1, 2, 3, ... and a hit refreshes recency every time: the order of events is
    the order of last_used, exactly."""
    ticks = itertools.count(1)
    monkeypatch.setattr(persistent_module, "_clock", lambda: float(next(ticks)))
    monkeypatch.setattr(persistent_module, "RECENCY_INTERVAL", 0.0)


def on_disk(directory, cs) -> bool:
    return os.path.exists(os.path.join(directory, "buffers", cs[:2], cs))


# -- trimming ----------------------------------------------------------------------------------

EVENTS = st.lists(st.tuples(st.sampled_from(["write", "hit"]), st.integers(0, 7)),
                  min_size=1, max_size=30)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS)
def test_trim_keeps_the_most_recently_used_within_the_cap(tmp_path_factory, counter_clock,
                                                          events):
    """A model: the queued writes of a capped cache, and hits, in any order. After every
    flush the total is within the cap, and what was dropped is exactly the least recently
    used (hits refresh recency)."""
    size, cap = 1000, 4500  # room for four buffers; a trim goes down to 4050: four stay
    directory = tmp_path_factory.mktemp("capped")
    cache = PersistentCache(directory)
    cache.max_bytes = cap
    recency: dict = {}  # n -> the step it was last written or hit (the model)
    try:
        for step, (what, n) in enumerate(events):
            data = payload(n, size)
            if what == "write":
                cache.write(tf(n), "bytes", sha(data), data, label=f"f{n}")
                assert cache.flush()
                recency[n] = step
                if len(recency) > 4:
                    # One trim: least recent first, down to 90 % of the cap.
                    for victim in sorted(recency, key=recency.get)[:len(recency) - 4]:
                        del recency[victim]
            else:
                found = cache.lookup(tf(n))
                assert (found is not None) == (n in recency)
                if found is not None:
                    assert cache.read_buffer(found[1]) == data
                    assert cache.flush()  # the hit's recency is written by the writer
                    recency[n] = step
            kept = {n for n in range(8) if on_disk(directory, sha(payload(n, size)))}
            assert kept == set(recency)
            assert cache.total_bytes() == size * len(recency) <= cap
    finally:
        cache.close()


def test_trim_skips_a_buffer_used_again_since_it_was_chosen(tmp_path, counter_clock,
                                                            monkeypatch):
    """Another process's hit between the choice and the delete keeps that buffer."""
    cache = PersistentCache(tmp_path)
    try:
        for n in range(3):
            data = payload(n, 100)
            assert cache.write_now(tf(n), "bytes", sha(data), data)
        oldest = sha(payload(0, 100))
        real_transaction = cache._db.transaction
        touched = []

        def transaction_after_a_hit():
            if not touched:  # what another process does right then
                with real_transaction() as c:
                    c.execute("UPDATE buffers SET last_used = 99 WHERE checksum = ?", (oldest,))
                touched.append(True)
            return real_transaction()

        monkeypatch.setattr(cache._db, "transaction", transaction_after_a_hit)
        done = cache.trim(150, keep=1.0)
        assert on_disk(tmp_path, oldest) and cache.lookup(tf(0)) is not None
        assert done["buffers"] == 1 and not on_disk(tmp_path, sha(payload(1, 100)))
    finally:
        cache.close()


def test_a_buffer_trimmed_by_another_process_is_a_miss_not_an_error(tmp_path):
    """The race a cap brings: this process found the row, the file went before the read."""
    reader, trimmer = PersistentCache(tmp_path), PersistentCache(tmp_path)
    try:
        data = payload(1, 1000)
        assert reader.write_now(tf(1), "bytes", sha(data), data)
        kind, result = reader.lookup(tf(1))
        assert trimmer.trim(10, keep=0.0)["buffers"] == 1
        assert reader.read_buffer(result) is None  # no warning: a missing file is a miss
        assert reader.lookup(tf(1)) is None
    finally:
        reader.close()
        trimmer.close()


def test_trim_rejects_a_bad_cap(tmp_path):
    cache = PersistentCache(tmp_path)
    try:
        with pytest.raises(ValueError, match="max_bytes must be an integer >= 0"):
            cache.trim(-1)
    finally:
        cache.close()


# -- labels and the schema upgrade -------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (transformation TEXT PRIMARY KEY, result TEXT NOT NULL, kind TEXT NOT NULL,
                      created REAL NOT NULL, duration REAL) WITHOUT ROWID;
CREATE INDEX results_by_result ON results(result);
CREATE TABLE buffers (checksum TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL,
                      last_used REAL NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema', '1'), ('encoding', '1');
"""


def old_database(directory, data: bytes) -> None:
    """A cache as the version before labels wrote it, holding one result."""
    os.makedirs(os.path.join(directory, "buffers", sha(data)[:2]))
    with open(os.path.join(directory, "buffers", sha(data)[:2], sha(data)), "wb") as f:
        f.write(data)
    db = sqlite3.connect(os.path.join(directory, "seamless.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO results VALUES (?, ?, 'bytes', 1.0, NULL)", (tf("old"), sha(data)))
    db.execute("INSERT INTO buffers VALUES (?, ?, 1.0, 1.0)", (sha(data), len(data)))
    db.commit()
    db.close()


def test_an_old_database_gets_labels_and_keeps_its_results(tmp_path):
    data = b"an old result"
    old_database(tmp_path, data)
    cache = PersistentCache(tmp_path)
    try:
        assert cache.lookup(tf("old")) == ("bytes", sha(data))
        new = b"a new result"
        assert cache.write_now(tf("new"), "bytes", sha(new), new, label="double")
        labels = {e["transformation"]: e["label"] for e in cache.entries()}
        assert labels == {tf("old"): None, tf("new"): "double"}
    finally:
        cache.close()


OPEN_AND_LABEL = """
import hashlib, sys
from seamless.cache.persistent import PersistentCache
directory, n = sys.argv[1], int(sys.argv[2])
cache = PersistentCache(directory)
data = b"result %d" % n
tf = hashlib.sha256(b"transformation %r" % (n,)).hexdigest()
assert cache.write_now(tf, "bytes", hashlib.sha256(data).hexdigest(), data, label=f"f{n}")
cache.close()
"""


def test_upgrades_racing_in_several_processes(tmp_path):
    """Opened at once by several processes: one adds the column, none fails."""
    old_database(tmp_path, b"an old result")
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_LABEL, str(tmp_path), str(n)],
                              stderr=subprocess.PIPE, text=True) for n in range(6)]
    try:
        for p in procs:
            _, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    cache = PersistentCache(tmp_path)
    try:
        labels = sorted(e["label"] or "-" for e in cache.entries())
        assert labels == ["-"] + [f"f{n}" for n in range(6)]
    finally:
        cache.close()


def test_a_long_label_is_shortened_and_a_bad_one_refused(tmp_path):
    cache = PersistentCache(tmp_path)
    try:
        data = b"x"
        assert cache.write_now(tf(1), "bytes", sha(data), data, label="echo " + "a" * 500)
        [entry] = cache.entries()
        assert len(entry["label"]) == 200 and entry["label"].endswith("…")
        with pytest.raises(TypeError, match="label must be a str"):
            cache.write(tf(2), "bytes", sha(data), data, label=42)
    finally:
        cache.close()


# -- settings ----------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEAMLESS_CACHE", raising=False)
    monkeypatch.delenv("SEAMLESS_CACHE_MAX", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path  # tests/conftest.py resets the settings and caches before and after


def test_on_by_default_in_the_default_directory_with_the_default_cap(clean_env):
    store = cache_pkg.persistent()
    assert store.directory == str(clean_env / "xdg" / "seamless")
    assert store.max_bytes == config.DEFAULT_CACHE_MAX == 5 * 2**30
    assert config.cache_is_implicit()


@pytest.mark.parametrize("word", ["off", "OFF", "false", "0", "no", "none"])
def test_seamless_cache_off_words(clean_env, monkeypatch, word):
    monkeypatch.setenv("SEAMLESS_CACHE", word)
    assert cache_pkg.persistent() is None
    assert config.command_cache_dir() == str(clean_env / "xdg" / "seamless")  # commands: on


@pytest.mark.parametrize("text", ["- cache: off\n", "- cache: false\n", "- cache: none\n"])
def test_yaml_cache_off(clean_env, text):
    (clean_env / "seamless.yaml").write_text(text)
    assert cache_pkg.persistent() is None


def test_init_cache_false(clean_env):
    config.init(cache=False)
    assert cache_pkg.persistent() is None


def test_an_explicit_directory_is_not_capped_unless_asked(clean_env, monkeypatch):
    config.init(cache=str(clean_env / "mine"))
    assert cache_pkg.persistent().max_bytes is None
    assert not config.cache_is_implicit()
    config.init(cache_max="1GiB")
    assert cache_pkg.persistent().max_bytes == 2**30
    monkeypatch.setenv("SEAMLESS_CACHE", "on")
    config._reset_for_tests()
    assert config.get_settings()["cache"] == (str(clean_env / "xdg" / "seamless"),
                                              "SEAMLESS_CACHE")
    assert not config.cache_is_implicit() and config.get("cache_max") is None


def test_cache_max_sources_and_errors(clean_env, monkeypatch):
    monkeypatch.setenv("SEAMLESS_CACHE_MAX", "0")
    assert config.get("cache_max") is None  # 0: no cap
    monkeypatch.setenv("SEAMLESS_CACHE_MAX", "10MB")
    config._reset_for_tests()
    assert config.get_settings()["cache_max"] == (10**7, "SEAMLESS_CACHE_MAX")
    assert config.command_cache_max(str(clean_env / "elsewhere")) == 10**7
    monkeypatch.delenv("SEAMLESS_CACHE_MAX")
    (clean_env / "seamless.yaml").write_text("- cache_max: 2GiB\n")
    config._reset_for_tests()
    assert config.get("cache_max") == 2 * 2**30
    (clean_env / "seamless.yaml").write_text("- cache_max: 10%\n")
    config._reset_for_tests()
    with pytest.raises(ValueError, match="line 1: cache_max must be .* percentage is not"):
        config.get("cache_max")
    with pytest.raises(ValueError, match=r"init\(cache_max='5GiB'\)"):
        config.init(cache_max="lots")
    with pytest.raises(TypeError, match="cache_max must be"):
        config.init(cache_max=1.5)
    os.remove(clean_env / "seamless.yaml")
    assert config.command_cache_max(config.default_cache_dir()) == 5 * 2**30
    assert config.command_cache_max(str(clean_env / "elsewhere")) is None


def test_big_results_stay_in_memory_only_under_the_implicit_default(clean_env):
    big = bytes(cache_pkg.IMPLICIT_RESULT_MAX + 1)
    small = b"small"
    cache_pkg.store_result(tf("big"), "bytes", sha(big), big, 0.1, "f")
    cache_pkg.store_result(tf("small"), "bytes", sha(small), small, 0.1, "f")
    store = cache_pkg.persistent()
    cache_pkg.flush()
    assert store.lookup(tf("big")) is None and store.lookup(tf("small")) is not None
    config.init(cache=True)  # the same directory, chosen: everything is stored
    assert cache_pkg.persistent() is store
    cache_pkg.store_result(tf("big"), "bytes", sha(big), big, 0.1, "f")
    cache_pkg.flush()
    assert store.lookup(tf("big")) == ("bytes", sha(big))


# -- seamless-cache list and trim ----------------------------------------------------------------

def test_seamless_cache_list_shows_labels_and_trim_applies_the_cap(tmp_path, monkeypatch,
                                                                   capsys):
    from seamless.cli import cache_cmd

    cache = PersistentCache(tmp_path)
    try:
        for n in range(3):
            data = payload(n, 1000)
            assert cache.write_now(tf(n), "bytes", sha(data), data, label=f"func{n}\nx")
    finally:
        cache.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEAMLESS_CACHE_MAX", raising=False)
    assert cache_cmd.main(["--cache", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TRANSFORMATION", "SIZE", "AGE", "KIND", "NAME"]
    assert sorted(line.split(None, 5)[5] for line in lines[1:]) == [
        "func0 x", "func1 x", "func2 x"]  # one line each
    from seamless.cli.common import CommandError

    with pytest.raises(CommandError, match="has no size cap; set one with SEAMLESS_CACHE_MAX"):
        cache_cmd.main(["--cache", str(tmp_path), "trim"])  # a chosen directory: no cap
    monkeypatch.setenv("SEAMLESS_CACHE_MAX", "2500")
    assert cache_cmd.main(["--cache", str(tmp_path), "trim"]) == 0
    assert capsys.readouterr().out.startswith("freed 1000 (1000 B) in 1 buffer; 2000 ")
