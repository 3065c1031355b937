"""``seamless-cache`` (docs/cli.md, "seamless-cache"): the installed command run as a
subprocess on a private
cache that the test fills with ``PersistentCache.write_now`` and inspects afterwards with a new
``PersistentCache`` or with sqlite3 directly."""

from __future__ import annotations

import contextlib
import datetime
import os
import pty
import sqlite3
import subprocess
import sys
import time

import pytest
from cachehelpers import opened, sha, tf_checksum

from seamless.cache.persistent import PersistentCache
from seamless.cli.cache_cmd import human_size, parse_size

pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


def populate(directory, contents) -> list:
    """Store one result per item of ``contents``; returns ``[(tf_cs, result_cs)]``."""
    entries = []
    with opened(directory) as cache:
        for n, data in enumerate(contents):
            tf, result = tf_checksum(n), sha(data)
            assert cache.write_now(tf, "bytes", result, data)
            entries.append((tf, result))
    return entries


def buffer_path(directory, cs) -> str:
    return os.path.join(directory, "buffers", cs[:2], cs)


def query(directory, sql, params=()):
    db = os.path.join(directory, "seamless.db")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # closed; committed
        return conn.execute(sql, params).fetchall()


def set_last_used(directory, cs, when) -> None:
    query(directory, "UPDATE buffers SET last_used = ? WHERE checksum = ?", (when, cs))


def misses(directory, tf) -> bool:
    with opened(directory) as cache:
        return cache.lookup(tf) is None


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode()


def stats_of(proc) -> dict:
    """The ``name: value`` lines of ``stats``."""
    lines = (line.split(":", 1) for line in out(proc).splitlines())
    return {name: value.strip() for name, value in lines}


# -- stats ---------------------------------------------------------------------------------------


def test_stats_empty_cache(cli):
    populate(cli.cache, [])
    stats = stats_of(cli.run("seamless-cache", "stats", check=0))
    assert stats == {"directory": str(cli.cache), "results": "0", "buffers": "0",
                     "bytes": "0 (0 B)", "oldest use": "-", "newest use": "-"}


def test_stats_counts_bytes_and_uses(cli):
    big = b"x" * (1 << 20)
    entries = populate(cli.cache, [b"alpha", b"beta!", big])
    with opened(cli.cache) as cache:  # a fourth transformation sharing a result
        assert cache.write_now(tf_checksum(99), "bytes", sha(b"alpha"), b"alpha")
    oldest, newest = 1767225600.0, 1767312000.0
    set_last_used(cli.cache, entries[0][1], oldest)
    set_last_used(cli.cache, entries[1][1], newest - 60)
    set_last_used(cli.cache, entries[2][1], newest)

    stats = stats_of(cli.run("seamless-cache", "stats", check=0))
    total = 5 + 5 + (1 << 20)
    assert stats["directory"] == str(cli.cache)
    assert (stats["results"], stats["buffers"]) == ("4", "3")
    assert stats["bytes"] == f"{total} (1.0 MiB)"
    assert datetime.datetime.fromisoformat(stats["oldest use"]).timestamp() == oldest
    assert datetime.datetime.fromisoformat(stats["newest use"]).timestamp() == newest
    assert err(cli.run("seamless-cache", "stats")) == ""


def test_cache_option_overrides_environment(cli, tmp_path):
    populate(cli.cache, [b"in the environment's cache"])
    other = tmp_path / "other"
    populate(other, [])
    for args in (("--cache", other, "stats"), ("stats", "--cache", other)):
        stats = stats_of(cli.run("seamless-cache", *args, check=0))
        assert (stats["directory"], stats["results"]) == (str(other), "0")
    assert stats_of(cli.run("seamless-cache", "stats", check=0))["results"] == "1"


# -- verify --------------------------------------------------------------------------------------


def test_verify_clean_cache(cli):
    populate(cli.cache, [b"one", b"two", b"three"])
    proc = cli.run("seamless-cache", "verify", check=0)
    assert out(proc) == "checked 3 buffers\n"
    assert err(proc) == ""


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_verify_drops_corrupt_buffer(cli, damage):
    good, bad = populate(cli.cache, [b"good content", b"content that will be damaged"])
    path = buffer_path(cli.cache, bad[1])
    if damage == "overwritten":  # same size, other bytes
        with open(path, "r+b") as f:
            f.write(b"X" * 7)
    else:
        os.truncate(path, 5)

    proc = cli.run("seamless-cache", "verify", check=1)
    assert out(proc) == f"checked 2 buffers\ndropped {bad[1]} (corrupt)\n"
    assert err(proc) == ""
    assert not os.path.exists(path)
    assert query(cli.cache, "SELECT * FROM buffers WHERE checksum = ?", (bad[1],)) == []
    assert query(cli.cache, "SELECT * FROM results WHERE result = ?", (bad[1],)) == []
    assert misses(cli.cache, bad[0])
    assert os.path.exists(buffer_path(cli.cache, good[1]))
    assert len(query(cli.cache, "SELECT * FROM results WHERE result = ?", (good[1],))) == 1

    assert out(cli.run("seamless-cache", "verify", check=0)) == "checked 1 buffer\n"


def test_verify_drops_rows_of_missing_file(cli):
    (tf, cs), _ = populate(cli.cache, [b"deleted by hand", b"kept"])
    os.unlink(buffer_path(cli.cache, cs))
    proc = cli.run("seamless-cache", "verify", check=1)
    assert out(proc) == f"checked 1 buffer\ndropped row {cs} (file missing)\n"
    assert query(cli.cache, "SELECT * FROM buffers WHERE checksum = ?", (cs,)) == []
    assert misses(cli.cache, tf)


def test_verify_registers_orphan_file(cli):
    populate(cli.cache, [b"registered normally"])
    orphan = b"left by a writer that died between rename and insert"
    cs = sha(orphan)
    os.makedirs(os.path.dirname(buffer_path(cli.cache, cs)), exist_ok=True)
    with open(buffer_path(cli.cache, cs), "wb") as f:
        f.write(orphan)

    proc = cli.run("seamless-cache", "verify", check=0)
    assert out(proc) == f"checked 2 buffers\nregistered {cs}\n"
    assert query(cli.cache, "SELECT size FROM buffers WHERE checksum = ?", (cs,)) == [
        (len(orphan),)]


# -- clear ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["clear", "-y"], ["clear", "--yes"]])
def test_clear(cli, args):
    """With --yes (or -y): no question (stdin is /dev/null; without --yes it is refused, see
    test_seamless_cache_inspect.py)."""
    entries = populate(cli.cache, [b"a", b"b", b"c"])
    proc = cli.run("seamless-cache", *args, check=0)
    assert out(proc) == "removed 3 buffers\n"
    assert err(proc) == ""
    assert query(cli.cache, "SELECT count(*) FROM results") == [(0,)]
    assert query(cli.cache, "SELECT count(*) FROM buffers") == [(0,)]
    for tf, cs in entries:
        assert not os.path.exists(buffer_path(cli.cache, cs))
        assert misses(cli.cache, tf)


def run_on_terminal(cli, answer: bytes, *args):
    """Run ``seamless-cache`` with a pseudo-terminal as stdin, answering ``answer``."""
    controller, terminal = pty.openpty()
    try:
        proc = cli.start("seamless-cache", *args, stdin=terminal,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(terminal)
        terminal = None
        try:
            os.write(controller, answer)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)
    return proc.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("answer", [b"n\n", b"\n", b"whatever\n", b"\x04"])
def test_clear_on_terminal_declined(cli, answer):
    (_, cs), = populate(cli.cache, [b"kept"])
    code, stdout, stderr = run_on_terminal(cli, answer, "clear")
    assert code == 1
    assert stdout == ""
    assert stderr.startswith(f"seamless-cache: remove every entry of {cli.cache}? [y/N] ")
    assert stderr.endswith("seamless-cache: nothing removed\n")
    assert os.path.exists(buffer_path(cli.cache, cs))
    assert query(cli.cache, "SELECT count(*) FROM results") == [(1,)]


@pytest.mark.parametrize("answer", [b"y\n", b"YES\n"])
def test_clear_on_terminal_confirmed(cli, answer):
    populate(cli.cache, [b"gone"])
    code, stdout, stderr = run_on_terminal(cli, answer, "clear")
    assert (code, stdout) == (0, "removed 1 buffer\n")
    assert "remove every entry" in stderr
    assert query(cli.cache, "SELECT count(*) FROM buffers") == [(0,)]


def test_clear_on_terminal_with_yes_does_not_ask(cli):
    populate(cli.cache, [b"gone"])
    code, stdout, stderr = run_on_terminal(cli, b"n\n", "clear", "-y")
    assert (code, stdout, stderr) == (0, "removed 1 buffer\n", "")


# -- gc ------------------------------------------------------------------------------------------

KIB = 1024


def lru_cache(cli) -> list:
    """Buffers of 1, 2, 3 and 4 KiB, used (oldest first) in the order 2, 4, 1, 3 KiB."""
    entries = populate(cli.cache, [bytes([n]) * (n * KIB) for n in (1, 2, 3, 4)])
    now = time.time()
    for age, index in enumerate([1, 3, 0, 2]):
        set_last_used(cli.cache, entries[index][1], now - 86400 * (10 - age))
    return entries


def kept(cli, entries) -> list:
    """The sizes in KiB of the entries whose rows and files are still there."""
    sizes = []
    for n, (tf, cs) in enumerate(entries, start=1):
        rows = query(cli.cache, "SELECT count(*) FROM results WHERE transformation = ?", (tf,))
        on_disk = os.path.exists(buffer_path(cli.cache, cs))
        assert rows == [(int(on_disk),)]
        if on_disk:
            sizes.append(n)
    return sizes


@pytest.mark.parametrize("size, freed, left", [
    ("6K", [2, 4], [1, 3]),
    ("6kib", [2, 4], [1, 3]),
    ("6KB", [2, 4], [1, 3]),
    ("7168", [2, 4], [1, 3]),   # 7 KiB: 10 - 2 = 8 is still too much
    ("8K", [2], [1, 3, 4]),
    ("0.0078125M", [2], [1, 3, 4]),  # exactly 8 KiB
    ("10K", [], [1, 2, 3, 4]),
    ("1G", [], [1, 2, 3, 4]),
    ("0", [2, 4, 1, 3], []),
])
def test_gc_drops_least_recently_used_first(cli, size, freed, left):
    entries = lru_cache(cli)
    proc = cli.run("seamless-cache", "gc", "--max-size", size, check=0)
    freed_bytes = sum(freed) * KIB
    left_bytes = sum(left) * KIB
    buffers = "buffer" if len(freed) == 1 else "buffers"
    assert out(proc) == (
        f"freed {freed_bytes} ({human_size(freed_bytes)}) in {len(freed)} {buffers}; "
        f"removed 0 stale temp files; {left_bytes} ({human_size(left_bytes)}) left\n")
    assert kept(cli, entries) == left
    for n in freed:
        assert misses(cli.cache, entries[n - 1][0])


def test_gc_removes_old_temp_files_only(cli):
    (_, cs), = populate(cli.cache, [b"stays"])
    directory = os.path.dirname(buffer_path(cli.cache, cs))
    old = os.path.join(directory, f".tmp-{cs}-4711-0badc0de")
    fresh = os.path.join(directory, f".tmp-{cs}-4712-00c0ffee")
    for path in (old, fresh):
        with open(path, "wb") as f:
            f.write(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    proc = cli.run("seamless-cache", "gc", "--max-size", "1M", check=0)
    assert out(proc) == ("freed 0 (0 B) in 0 buffers; removed 1 stale temp file; "
                         "5 (5 B) left\n")
    assert not os.path.exists(old)
    assert os.path.exists(fresh)
    assert os.path.exists(buffer_path(cli.cache, cs))


@pytest.mark.parametrize("size", ["", "abc", "-5", "1.5", "10X", "5 GiBs", "1e6", "iB", "G",
                                  "12iB", "0x10", "\u0665K"])
def test_gc_bad_size(cli, size):
    entries = lru_cache(cli)
    proc = cli.run("seamless-cache", "gc", "--max-size", size, check=2)
    assert out(proc) == ""
    message = err(proc)
    assert message.startswith(f"seamless-cache: error: --max-size {size!r} is not a size")
    assert "500M" in message and "10G" in message
    assert kept(cli, entries) == [1, 2, 3, 4]


def test_gc_needs_max_size(cli):
    proc = cli.run("seamless-cache", "gc", check=2)
    assert "seamless-cache: error: the following arguments are required: --max-size" in err(proc)


@pytest.mark.parametrize("text, expected", [
    ("12345", 12345), ("12345B", 12345), ("0", 0), ("100K", 100 * 1024),
    ("500M", 500 * 1024 ** 2), ("500m", 500 * 1024 ** 2), ("10G", 10 * 1024 ** 3),
    ("10GB", 10 * 1024 ** 3), ("10GiB", 10 * 1024 ** 3), ("10gib", 10 * 1024 ** 3),
    ("1.5G", 3 * 1024 ** 3 // 2), ("2T", 2 * 1024 ** 4), (" 7 M ", 7 * 1024 ** 2),
    ("0.5K", 512),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (1048576, "1.0 MiB"), (1024 ** 2 - 1, "1.0 MiB"), (5 * 1024 ** 4, "5.0 TiB"),
])
def test_human_size(n, text):
    assert human_size(n) == text


# -- failures, usage, start-up -------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", [["stats"], ["verify"], ["clear", "-y"],
                                        ["gc", "--max-size", "1G"]])
def test_unusable_cache_directory(cli, subcommand):
    cli.cache.write_bytes(b"a regular file where the cache directory should be")
    proc = cli.run("seamless-cache", *subcommand, check=1)
    message = err(proc)
    assert message.startswith("seamless-cache: error: ")
    assert str(cli.cache) in message and "SEAMLESS_CACHE" in message
    assert "Traceback" not in message
    assert out(proc) == ""


def test_version(cli):
    import seamless

    proc = cli.run("seamless-cache", "--version", check=0)
    assert out(proc) == f"seamless-cache {seamless.__version__}\n"
    assert not cli.cache.exists()


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["clear", "--force"]])
def test_usage_errors(cli, args):
    proc = cli.run("seamless-cache", *args, check=2)
    assert "seamless-cache: error: " in err(proc)
    assert "usage: seamless-cache" in err(proc)
    assert not cli.cache.exists()


@pytest.mark.parametrize("args", [[], ["stats"], ["verify"], ["clear"], ["gc"]])
def test_help(cli, args):
    proc = cli.run("seamless-cache", *args, "-h", check=0)
    assert out(proc).startswith("usage: seamless-cache")
    assert not cli.cache.exists()


def test_import_is_light():
    code = ("import sys, seamless.cli.cache_cmd\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'yaml')\n"
            "         or m.startswith(('seamless._ipc', 'seamless.transformer'))]\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          check=True)
    assert proc.stdout == b"[]\n", proc.stderr


def test_cache_warnings_become_messages(cli, monkeypatch, capsys):
    """A CacheWarning raised by a primitive is printed as a message, never raised (this test
    process runs with warnings as errors) nor shown by Python's warning machinery."""
    from seamless.cli import cache_cmd
    from seamless.errors import CacheWarning

    real_verify = PersistentCache.verify

    def verify_with_warning(self):
        import warnings

        warnings.warn(f"cache buffer 3fa2c1d09b7e… at {self.directory} is odd", CacheWarning)
        return real_verify(self)

    monkeypatch.setattr(PersistentCache, "verify", verify_with_warning)
    populate(cli.cache, [])
    assert cache_cmd.main(["--cache", str(cli.cache), "verify"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "checked 0 buffers\n"
    assert captured.err == (f"seamless-cache: warning: cache buffer 3fa2c1d09b7e… at "
                            f"{cli.cache} is odd\n")


def test_database_failure_is_a_message(cli, monkeypatch, capsys):
    from seamless.cli import cache_cmd
    from seamless.cli.common import run_main

    def locked(self, max_bytes):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(PersistentCache, "gc", locked)
    code = run_main("seamless-cache", cache_cmd.main,
                    ["--cache", str(cli.cache), "gc", "--max-size", "1G"])
    assert code == 1
    message = capsys.readouterr().err
    assert message.startswith("seamless-cache: error: gc failed on the cache database "
                              f"{cli.cache / 'seamless.db'} (database is locked); retry")


# -- the result index follows the rows ------------------------------------------------------------


def _index_entries(cli) -> list:
    return sorted(f for _, _, fs in os.walk(cli.cache / "results") for f in fs)


@pytest.mark.parametrize("args", [["clear", "-y"], ["gc", "--max-size", "0"]])
def test_clear_and_gc_take_the_index_entries_with_the_results(cli, args):
    log = cli.tmp.parent / "runs.log"
    cmd = f"echo hi; echo ran >> {log}"
    cli.run("seamless-run", cmd, check=0)
    assert len(_index_entries(cli)) == 1
    cli.run("seamless-cache", *args, check=0)
    assert _index_entries(cli) == []
    assert cli.run("seamless-run", cmd, check=0).stdout == b"hi\n"
    assert log.read_bytes().count(b"\n") == 2  # a miss again: nothing served from the index
    assert len(_index_entries(cli)) == 1


def test_verify_rebuilds_a_lost_index(cli):
    log = cli.tmp.parent / "runs.log"
    cmd = f"echo hi; echo ran >> {log}"
    cli.run("seamless-run", cmd, check=0)
    entries = _index_entries(cli)
    subprocess.run(["rm", "-rf", str(cli.cache / "results")], check=True, timeout=60)
    cli.run("seamless-cache", "verify", check=0)
    assert _index_entries(cli) == entries
    assert cli.run("seamless-run", cmd, check=0).stdout == b"hi\n"
    assert log.read_bytes().count(b"\n") == 1
