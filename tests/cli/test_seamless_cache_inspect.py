"""``seamless-cache list``, ``size``, ``rm``, read-only subcommands on a missing cache and
``clear`` off a terminal (docs/cli.md, "seamless-cache"): the installed
command run as a subprocess on a private cache, filled with ``PersistentCache.write_now`` or by
a real ``seamless-run``, and inspected afterwards with sqlite3 and the files themselves."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

import pytest
from cachehelpers import opened, sha, tf_checksum

from seamless.cache.result_index import INDEXED_KIND
from seamless.cli.cache_cmd import human_age

pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py

HEADER = f"{'TRANSFORMATION':<64}  {'SIZE':>10}  {'AGE':>5}  {'KIND':<6}  NAME"


def store(directory, items, kind="bytes") -> None:
    """``items``: ``[(n, data)]``; transformation ``tf_checksum(n)`` gets result ``data``."""
    with opened(directory) as cache:
        for n, data in items:
            assert cache.write_now(tf_checksum(n), kind, sha(data), data)


def query(directory, sql, params=()):
    with contextlib.closing(sqlite3.connect(os.path.join(directory, "seamless.db"))) as conn, \
            conn:
        return conn.execute(sql, params).fetchall()


def buffer_path(directory, cs) -> str:
    return os.path.join(directory, "buffers", cs[:2], cs)


def index_path(directory, tf) -> str:
    return os.path.join(directory, "results", tf[:2], tf)


def rows_of(proc) -> list:
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == HEADER
    return [line.split() for line in lines[1:]]


# -- list ----------------------------------------------------------------------------------------


def test_list_newest_first(cli):
    store(cli.cache, [(0, b"old"), (1, b"x" * 2048), (2, b"new!")])
    now = time.time()
    for n, age in ((0, 3 * 86400 + 5), (1, 2 * 3600 + 5), (2, 90)):
        query(cli.cache, "UPDATE results SET created = ? WHERE transformation = ?",
              (now - age, tf_checksum(n)))
    rows = rows_of(cli.run("seamless-cache", "list", check=0))
    assert rows == [[tf_checksum(2), "4", "B", "1m", "bytes", "-"],  # stored without a label
                    [tf_checksum(1), "2.0", "KiB", "2h", "bytes", "-"],
                    [tf_checksum(0), "3", "B", "3d", "bytes", "-"]]


def test_list_empty_cache_prints_the_header(cli):
    store(cli.cache, [])
    proc = cli.run("seamless-cache", "list", check=0)
    assert proc.stdout.decode() == HEADER + "\n" and proc.stderr == b""


def test_list_shows_a_seamless_run_result(cli):
    cli.run("seamless-run", "echo hello", check=0)
    (row,) = rows_of(cli.run("seamless-cache", "list", check=0))
    assert row[4] == "tree" and row[3] in ("0s", "1s", "2s", "3s")
    assert row[5:] == ["echo", "hello"]  # the NAME column: the command
    assert os.path.exists(index_path(cli.cache, row[0]))


def test_list_names_a_non_utf8_command_with_escapes(cli):
    cli.run("seamless-run", b"echo \xff".decode("utf-8", "surrogateescape"), check=0)
    (row,) = rows_of(cli.run("seamless-cache", "list", check=0))
    assert row[5:] == ["echo", "\\xff"]  # the byte 0xff, shown as an escape


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"),
                                           (3600, "1h"), (86399, "23h"), (86400, "1d"),
                                           (-30, "0s")])
def test_human_age(seconds, text):
    assert human_age(seconds) == text


# -- size ----------------------------------------------------------------------------------------


def test_size(cli):
    store(cli.cache, [(0, b"abc"), (1, b"x" * 1024), (2, b"abc")])  # 2 shares 0's buffer
    proc = cli.run("seamless-cache", "size", check=0)
    assert proc.stdout.decode() == "1027 (1.0 KiB) in 2 buffers\n"


# -- read-only subcommands on a missing cache ---------------------------------------------------


@pytest.mark.parametrize("subcommand", ["stats", "verify", "list", "size"])
def test_missing_cache_is_not_created(cli, tmp_path, subcommand):
    missing = tmp_path / "nonexistent" / "dir"
    proc = cli.run("seamless-cache", "--cache", missing, subcommand, check=1)
    assert proc.stderr.decode() == (f"seamless-cache: error: no seamless cache at {missing} "
                                    "(nothing was cached there; check --cache or "
                                    "SEAMLESS_CACHE)\n")
    assert proc.stdout == b""
    assert not (tmp_path / "nonexistent").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    cli.run("seamless-cache", "--cache", empty, subcommand, check=1)
    assert os.listdir(empty) == []


# -- rm ------------------------------------------------------------------------------------------


def test_rm_removes_row_index_and_buffer(cli):
    store(cli.cache, [(0, b"gone"), (1, b"stays")], kind=INDEXED_KIND)  # commands: indexed
    tf, result = tf_checksum(0), sha(b"gone")
    assert os.path.exists(index_path(cli.cache, tf))
    proc = cli.run("seamless-cache", "rm", tf, check=0)
    assert proc.stdout.decode() == f"removed {tf} (freed 4 (4 B))\n"
    assert query(cli.cache, "SELECT transformation FROM results") == [(tf_checksum(1),)]
    assert query(cli.cache, "SELECT checksum FROM buffers") == [(sha(b"stays"),)]
    assert not os.path.exists(index_path(cli.cache, tf))
    assert not os.path.exists(buffer_path(cli.cache, result))
    assert os.path.exists(buffer_path(cli.cache, sha(b"stays")))
    with opened(cli.cache) as cache:
        assert cache.lookup(tf) is None
        assert cache.lookup(tf_checksum(1)) == (INDEXED_KIND, sha(b"stays"))


def test_rm_keeps_a_buffer_another_result_uses(cli):
    store(cli.cache, [(0, b"shared"), (1, b"shared")])
    result = sha(b"shared")
    proc = cli.run("seamless-cache", "rm", tf_checksum(0), check=0)
    assert proc.stdout.decode() == (f"removed {tf_checksum(0)} (its buffer is kept: another "
                                    "result uses it)\n")
    assert os.path.exists(buffer_path(cli.cache, result))
    with opened(cli.cache) as cache:
        assert cache.lookup(tf_checksum(1)) == ("bytes", result)
    cli.run("seamless-cache", "rm", tf_checksum(1), check=0)
    assert not os.path.exists(buffer_path(cli.cache, result))
    assert query(cli.cache, "SELECT count(*) FROM buffers") == [(0,)]


def test_rm_a_seamless_run_result_recomputes(cli):
    cli.run("seamless-run", "echo hello > out.txt", check=0)
    (row,) = rows_of(cli.run("seamless-cache", "list", check=0))
    cli.run("seamless-cache", "rm", row[0][:8].upper(), check=0)  # a prefix, any case
    proc = cli.run("seamless-run", "-v", "echo hello > out.txt", check=0)
    assert "miss" in proc.stderr.decode()


def test_rm_unknown_ambiguous_and_bad_words(cli):
    store(cli.cache, [(0, b"a")])
    missing = tf_checksum(1)
    proc = cli.run("seamless-cache", "rm", missing, tf_checksum(0), check=1)
    assert proc.stderr.decode() == (f"seamless-cache: error: rm: no result for {missing} in "
                                    f"{cli.cache} (seamless-cache list shows the checksums)\n")
    assert proc.stdout.decode() == f"removed {tf_checksum(0)} (freed 1 (1 B))\n"
    for word in ("abc", "not-hex!", "g" * 64, "a" * 65):
        proc = cli.run("seamless-cache", "rm", word, check=2)
        assert f"rm: {word!r} is not a checksum" in proc.stderr.decode()


def test_rm_ambiguous_prefix(cli):
    with opened(cli.cache) as cache:
        for tf in ("abcdef" + "0" * 58, "abcdef" + "1" * 58):
            assert cache.write_now(tf, "bytes", sha(tf.encode()), tf.encode())
    proc = cli.run("seamless-cache", "rm", "abcdef", check=1)
    assert "is the prefix of more than one result" in proc.stderr.decode()
    assert query(cli.cache, "SELECT count(*) FROM results") == [(2,)]
    cli.run("seamless-cache", "rm", "abcdef1", check=0)
    assert query(cli.cache, "SELECT transformation FROM results") == [("abcdef" + "0" * 58,)]


def test_rm_needs_a_checksum(cli):
    proc = cli.run("seamless-cache", "rm", check=2)
    assert "usage: seamless-cache rm" in proc.stderr.decode()


@pytest.mark.parametrize("subcommand", ["list", "size", "rm"])
def test_help(cli, subcommand):
    proc = cli.run("seamless-cache", subcommand, "-h", check=0)
    assert proc.stdout.decode().startswith(f"usage: seamless-cache {subcommand}")
    assert not cli.cache.exists()


# -- clear off a terminal ------------------------------------------------------------------------


def test_clear_off_a_terminal_needs_yes(cli):
    store(cli.cache, [(0, b"kept")])
    proc = cli.run("seamless-cache", "clear", check=2)
    assert proc.stderr.decode() == (f"seamless-cache: error: clear removes every entry of "
                                    f"{cli.cache} and there is no terminal to ask; pass --yes "
                                    "to confirm\n")
    assert query(cli.cache, "SELECT count(*) FROM results") == [(1,)]
    for flag in ("--yes", "-y"):
        store(cli.cache, [(0, b"kept")])
        proc = cli.run("seamless-cache", "clear", flag, check=0)
        assert proc.stdout.decode() == "removed 1 buffer\n"
