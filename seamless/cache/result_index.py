"""The result index of a persistent cache: one small file per stored result (docs/caching.md).

Layout: ``<dir>/results/<first two hex>/<transformation checksum>`` holds one line,
``<result checksum> <size> <kind>\\n``; a write in progress is ``.tmp-<checksum>-<pid>-<random>``
beside it. Why it exists: a cache hit of ``seamless-run`` reads it with one ``open()`` and then
the buffer file, without importing ``sqlite3`` (about 11 ms of a process start) nor opening the
database. The database stays the source of truth; the index only repeats what its rows say.

Data flow and ownership:

- ``PersistentCache`` writes an entry after it committed a ``results`` row of kind
  ``INDEXED_KIND`` (the Python API and the command line store through the same
  ``_do_rows_many``; other kinds get no entry), and again after a lookup through the
  database that found the entry missing, different or older than ``TOUCH_INTERVAL``. A write is
  temp file + ``os.replace`` (no fsync: a file damaged by a crash is just unreadable here).
- ``read_result`` (the command line's hit path) trusts an entry only while it is younger than
  ``TOUCH_INTERVAL``: an older one means "ask the database", whose lookup refreshes the buffer's
  ``last_used`` (``seamless-cache gc`` evicts by it) and rewrites the entry.
- Removing rows removes their entries (corrupt or missing buffers, ``verify``, ``clear``,
  ``gc``). An entry that outlives its row (a race with those) can only name a result that was
  computed for that very transformation, and its buffer is verified on every read; a missing or
  damaged entry, or one whose buffer is gone, just means "ask the database".

Light module: ``os`` and ``time``, plus ``buffers.py`` (no ``re``, no ``sqlite3``).
"""

from __future__ import annotations

import os
import time

from seamless.cache.buffers import (
    BufferCorrupt,
    BufferMissing,
    BufferStore,
    HexTree,
    _temp_file,
    is_checksum,
    makedirs_0700,
)

__all__ = ["ResultIndex", "IndexEntry", "read_result", "INDEXED_KIND", "TOUCH_INTERVAL"]

# The one kind of result that gets an entry: the command line, the index's only reader, looks
# up commands, and their results are of this kind (seamless/shell/result.py). An entry for any
# other result would cost it a file write and never be read.
INDEXED_KIND = "tree"
TOUCH_INTERVAL = 3600.0  # buffers.last_used is updated at most this often (seconds)
_MAX_ENTRY = 512  # bytes read from an entry; a longer file is not one


class IndexEntry:
    """What an index file says: ``result`` checksum, buffer ``size``, ``kind``, and the file's
    ``mtime`` (when it was last written)."""

    __slots__ = ("result", "size", "kind", "mtime")

    def __init__(self, result: str, size: int, kind: str, mtime: float):
        self.result, self.size, self.kind, self.mtime = result, size, kind, mtime

    def fresh(self, now=None) -> bool:
        return (time.time() if now is None else now) - self.mtime < TOUCH_INTERVAL

    def same(self, result: str, size: int, kind: str) -> bool:
        return (self.result, self.size, self.kind) == (result, size, kind)


def _line(result: str, size: int, kind: str):
    """The entry's bytes, or ``None`` for a kind the one-line format cannot hold."""
    if not kind or "\n" in kind or "\r" in kind:
        return None
    try:
        return f"{result} {size} {kind}\n".encode("utf-8")
    except UnicodeEncodeError:
        return None


def _parse(data: bytes, mtime: float):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n") or text.count("\n") != 1:
        return None
    result, _, rest = text[:-1].partition(" ")
    size, _, kind = rest.partition(" ")
    if not is_checksum(result) or not size.isdigit() or not size.isascii() or not kind:
        return None
    return IndexEntry(result, int(size), kind, mtime)


class ResultIndex(HexTree):
    """The ``results/`` tree of one cache directory (named by transformation checksum)."""

    def __init__(self, directory: str):
        super().__init__(os.path.join(directory, "results"))

    def read(self, tf_cs: str):
        """The entry of ``tf_cs``, or ``None`` when there is none or it is not well-formed."""
        try:
            fd = os.open(self.path(tf_cs), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            data = os.read(fd, _MAX_ENTRY)
            mtime = os.fstat(fd).st_mtime
        except OSError:
            return None
        finally:
            os.close(fd)
        return _parse(data, mtime)

    def write(self, tf_cs: str, result: str, size: int, kind: str) -> bool:
        """Write (or refresh) the entry of ``tf_cs``; ``False`` when ``kind`` cannot be
        written in one line (that result is then found through the database only). Raises
        ``OSError``, after removing the temp file."""
        data = _line(result, size, kind)
        if data is None:
            return False
        directory = os.path.dirname(self.path(tf_cs))
        makedirs_0700(directory)
        with _temp_file(directory, tf_cs) as (tmp, fd):
            os.write(fd, data)
            os.replace(tmp, self.path(tf_cs))
        return True

    def remove(self, tf_checksums) -> None:
        """Delete the entries of ``tf_checksums``; a missing one is fine. Raises ``OSError``."""
        for tf_cs in tf_checksums:
            try:
                os.unlink(self.path(tf_cs))
            except FileNotFoundError:
                continue



def read_result(directory: str, tf_cs: str):
    """The verified result buffer of ``tf_cs`` found through the index, as a read-only
    ``memoryview``; ``None`` means "ask the database" (no fresh entry, or its buffer missing or
    damaged: the database lookup then reports and discards it). Never writes anything."""
    if not is_checksum(tf_cs):
        return None
    entry = ResultIndex(directory).read(tf_cs)
    if entry is None or not entry.fresh():
        return None
    try:
        data, _ = BufferStore(directory).read_file(entry.result, entry.size)
    except (BufferMissing, BufferCorrupt):
        return None
    return data
