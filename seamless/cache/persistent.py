"""The persistent cache: a directory shared by processes on one host (docs/caching.md).

``PersistentCache(directory)`` pairs the SQLite database (``database.py``) with the buffer files
(``buffers.py``) and the result index (``result_index.py``: one small file per result, which the
command line's cache hits read instead of the database; every row change here updates it).
Data flow:

- **Lookup and read** run on the caller's thread, on that thread's own SQLite connection.
  ``lookup`` is a hit only when the ``results`` row exists and the buffer file exists with the
  recorded size; ``read_buffer`` reads the whole file and verifies size and SHA-256 on every read
  (a large file is hashed while a short-lived helper thread reads it), returning a read-only
  ``memoryview`` that owns its memory.
  A corrupt buffer is deleted with its ``buffers`` row and the ``results`` rows that point to it,
  and reported by one ``CacheWarning``.
- **Writes** are queued on ONE daemon writer thread per process, shared by every
  ``PersistentCache`` instance (``_Writer``); jobs run in submission order. Consecutive result
  writes of one instance (up to ``_WRITE_BATCH``) are done together: their files, then all
  their rows in one transaction (``_job_write_many``); a result write first waits up to
  ``_LINGER_S`` for others to join it (results of tiny tasks arrive one by one), unless a
  ``flush()`` is waiting (``_Writer.flushing``). A job holds a
  reference to the caller's buffer until it is written, then drops it. The thread is started on
  the first job and ends after ``_IDLE_EXIT`` seconds without work (so an idle process has no
  cache thread); the next job starts a new one. ``flush()`` waits until this instance's queued
  jobs are done. The writer also applies ``last_used`` updates (a hit records its time in
  ``_touches``; one job writes all recorded ones in one transaction), at most one per buffer
  per ``RECENCY_INTERVAL``.
- **Size cap** (``max_bytes``, set by ``seamless.cache.persistent()`` from ``cache_max``): after
  each queued write the writer thread adds the bytes to an estimate of the directory's total;
  when the estimate passes the cap, or was last measured more than ``_MEASURE_EVERY`` ago, it
  sums the ``buffers`` rows, and a total above the cap is trimmed (``trim``) to
  ``TRIM_TO`` of it, least recently used first. Several processes may trim at once: a row is
  deleted only if its ``last_used`` is still the one read, and a file is unlinked only by the
  process whose delete removed its row. A process that found a row just before it went reads
  a missing file: ``BufferMissing``, the rows are dropped, the lookup is a miss, the result is
  computed again. Synchronous writes (``write_now``, ``write_stream_now``: the command line)
  never trim; ``seamless-cache trim`` does it on demand.
- **Failed writes** (no space, file too large, read-only, permission, quota, SQLite errors) leave
  no temp file and no row. The writer thread never warns itself: a warning raised there would be
  invisible to the user, and under ``-W error`` it would kill the thread. It records the failure
  instead, and the ``CacheWarning`` is emitted on the caller's thread at the next call on that
  instance (``lookup``, ``read_buffer``, ``write``, ``flush``); ``seamless.cache.flush()`` runs at
  interpreter exit, so none is lost. Each (directory, errno) warns once per process; repeats are
  logged at DEBUG on the ``seamless`` logger. ``stacklevel`` points at the first frame outside
  the seamless package.

The ``stats``/``verify``/``clear``/``gc``/``entries``/``remove`` methods are the primitives
of the ``seamless-cache`` command (docs/cli.md, "seamless-cache"); each is safe while other
processes use the directory.

After ``os.fork()`` the child starts with an empty queue, no writer thread and no connections
(the parent's pending jobs stay the parent's).
"""

from __future__ import annotations

import collections
import errno as _errno
import itertools
import os
import sqlite3
import sys
import threading
import time
import warnings
import weakref

from seamless.cache.buffers import (
    BufferCorrupt,
    BufferMissing,
    BufferStore,
    check_checksum,
    makedirs_0700,
)
from seamless.cache.database import Database
from seamless.cache.result_index import INDEXED_KIND, ResultIndex
from seamless.checksum import Checksum
from seamless.errors import CacheError, CacheWarning

__all__ = ["PersistentCache", "warn_cache"]


class _LazyLogger:
    """The ``seamless`` logger, importing ``logging`` on first use: the command line's cache-hit
    path never logs, and ``logging`` would cost it about 4 ms of start-up."""

    def __getattr__(self, name):
        import logging

        return getattr(logging.getLogger("seamless"), name)


_log = _LazyLogger()
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_IDLE_EXIT = 5.0
# At most this many queued result writes share one transaction: a row commit costs about as
# much as writing the small file beside it, and tiny tasks queue results by the thousand.
_WRITE_BATCH = 256
# A result write waits this long for others to share its transaction, unless a flush waits.
_LINGER_S = 0.02
_TEMP_MAX_AGE = 3600.0
# A hit refreshes its buffer's last_used (what trim and gc evict by) at most this often.
RECENCY_INTERVAL = 60.0
# A trim leaves this fraction of the cap, so the next one is many writes away.
TRIM_TO = 0.9
_MEASURE_EVERY = 60.0
_LABEL_MAX = 200  # characters of a label kept (it is only shown by seamless-cache list)
# Timestamps of rows; tests replace it with a counter to order events exactly.
_clock = time.time

_LOOKUP = (
    "SELECT r.kind, r.result, b.size, b.last_used FROM results AS r "
    "LEFT JOIN buffers AS b ON b.checksum = r.result WHERE r.transformation = ?"
)

_PROBE_MAX = 256  # transformation checksums per ``recorded`` query
_probe_statements: dict = {}  # IN-list size -> its SELECT


def _probe_sql(size: int) -> str:
    sql = _probe_statements.get(size)
    if sql is None:
        marks = ", ".join("?" * size)
        sql = _probe_statements[size] = \
            f"SELECT transformation FROM results WHERE transformation IN ({marks})"
    return sql


def _short_label(label):
    """A label as stored: at most ``_LABEL_MAX`` characters."""
    if label is not None and len(label) > _LABEL_MAX:
        return label[:_LABEL_MAX - 1] + "…"
    return label


_FIXES = {
    _errno.ENOSPC: "free space, or point SEAMLESS_CACHE elsewhere",
    _errno.EDQUOT: "free space within your quota, or point SEAMLESS_CACHE elsewhere",
    _errno.EFBIG: "raise the file size limit (ulimit -f), or point SEAMLESS_CACHE elsewhere",
    _errno.EROFS: "the file system is read-only: point SEAMLESS_CACHE at a writable directory",
    _errno.EACCES: "make the directory writable, or point SEAMLESS_CACHE elsewhere",
    _errno.EPERM: "make the directory writable, or point SEAMLESS_CACHE elsewhere",
}
_DEFAULT_FIX = "point SEAMLESS_CACHE at a writable directory on a local file system"

# (directory, errno or error name) already reported by a CacheWarning in this process.
_reported: set = set()
_reported_lock = threading.Lock()


def _stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` made by our caller: the first non-seamless frame."""
    frame = sys._getframe(2)  # the caller of the function that calls warnings.warn
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn_cache(message: str) -> None:
    """Emit a ``CacheWarning`` attributed to the user's code."""
    warnings.warn(message, CacheWarning, stacklevel=_stacklevel())


def _first_report(directory: str, key) -> bool:
    """True the first time (directory, key) is reported in this process."""
    with _reported_lock:
        if (directory, key) in _reported:
            return False
        _reported.add((directory, key))
        return True


class _Writer:
    """The process's one writer thread and its FIFO of jobs ``(cache, function, args)``."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque = collections.deque()
        self._thread = None
        self._lingering = False  # the thread waits for a result write to gather company
        self._flushes = 0  # flush() calls waiting now: no lingering meanwhile

    def submit(self, cache, function, args) -> None:
        with self._cond:
            self._jobs.append((cache, function, args))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="seamless-cache-writer", daemon=True
                )
                self._thread.start()
            if not self._lingering or len(self._jobs) >= _WRITE_BATCH:
                self._cond.notify()

    def flushing(self, delta: int) -> None:
        """A flush starts (+1: write what is queued without lingering) or ends (-1)."""
        with self._cond:
            self._flushes += delta
            if delta > 0 and self._jobs:  # an idle thread woken with nothing to do would end
                self._cond.notify()

    def _linger(self) -> None:
        """With the lock held and a result write first in the queue: wait up to
        ``_LINGER_S`` for more, so results that arrive one by one still share a transaction
        (and the thread is not woken once per result)."""
        end = time.monotonic() + _LINGER_S
        self._lingering = True
        try:
            while len(self._jobs) < _WRITE_BATCH and not self._flushes:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        finally:
            self._lingering = False

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait(_IDLE_EXIT)
                    # Decided under the lock: a submit either sees the thread gone or is seen.
                    if not self._jobs and self._thread is me:
                        self._thread = None
                        return
                # (No local names for the head job: an idle thread must not keep its buffer.)
                if self._jobs[0][1] == self._jobs[0][0]._job_write:
                    self._linger()
                cache, function, args = self._jobs.popleft()
                batch = [args]
                # Consecutive result writes of one cache share a transaction (_job_write_many).
                if function == cache._job_write:
                    while (self._jobs and len(batch) < _WRITE_BATCH
                           and self._jobs[0][0] is cache and self._jobs[0][1] == function):
                        batch.append(self._jobs.popleft()[2])
            try:
                if len(batch) == 1:
                    function(*args)
                else:
                    cache._job_write_many(batch)
            except Exception:
                # Expected failures are handled inside the jobs; anything else is a bug, and
                # the thread must survive it or flush() would wait forever.
                _log.exception("seamless cache writer: job %s failed", function.__name__)
            finally:
                done = len(batch)
                del args, batch
                cache._job_done(done)

    def thread(self):
        """The running writer thread, or ``None`` (for tests and diagnostics)."""
        with self._cond:
            return self._thread


_writer = _Writer()
_instances: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _writer, _reported_lock
    _writer = _Writer()
    _reported_lock = threading.Lock()
    for cache in list(_instances):
        cache._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _os_detail(e: OSError) -> str:
    if e.errno is None:
        return str(e)
    return f"[Errno {e.errno}] {e.strerror}"


class PersistentCache:
    """One cache directory: ``seamless.db`` plus ``buffers/`` (docs/caching.md)."""

    def __init__(self, directory):
        directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.directory = directory
        try:
            makedirs_0700(directory)
            self._store = BufferStore(directory)
            self._store.ensure_root()
            self._index = ResultIndex(directory)
        except (FileExistsError, NotADirectoryError) as e:
            blocker = f": {e.filename}" if e.filename and e.filename != directory else ""
            raise CacheError(
                f"cache directory {directory} is not a directory ({_os_detail(e)}{blocker}); "
                "set SEAMLESS_CACHE to a writable directory",
                e.errno, e.strerror, directory,
            ) from e
        except OSError as e:
            raise CacheError(
                f"cache directory {directory} is not writable ({_os_detail(e)}); "
                "set SEAMLESS_CACHE to a writable directory",
                e.errno, e.strerror, directory,
            ) from e
        if not os.access(directory, os.W_OK):
            # An existing directory on a read-only mount, or without write permission: say so
            # here rather than let SQLite report "unable to open database file".
            try:
                read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            code = _errno.EROFS if read_only else _errno.EACCES
            raise CacheError(
                f"cache directory {directory} is not writable ([Errno {code}] "
                f"{os.strerror(code)}); set SEAMLESS_CACHE to a writable directory",
                code, os.strerror(code), directory,
            )
        self.db_path = os.path.join(directory, "seamless.db")
        self._db = Database(self.db_path)
        self._state_lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._pending_cond = threading.Condition(threading.Lock())
        self._warnings: list[str] = []
        self._warn_lock = threading.Lock()
        self._touches: dict = {}  # buffer checksum -> time of its latest unrecorded hit
        self._touch_queued = False
        self.max_bytes = None     # the size cap (bytes) of queued writes; None: no cap
        self._estimate = None     # bytes in the directory: last sum plus writes since
        self._measured_at = 0.0
        _instances.add(self)

    def __repr__(self):
        return f"PersistentCache({self.directory!r})"

    # -- reading -------------------------------------------------------------------------------

    def lookup(self, tf_cs):
        """``(kind, result_cs)`` when the result row exists and its buffer file has the
        recorded size; else ``None``."""
        check_checksum("tf_cs", tf_cs)
        self._emit_warnings()
        try:
            row = self._db.conn().execute(_LOOKUP, (tf_cs,)).fetchone()
        except sqlite3.Error as e:
            self._read_failed(e)
            return None
        if row is None:
            return None
        kind, result, size, last_used = row
        if size is None:
            # A results row without its buffers row (removed by hand): no recorded size, so
            # a miss. Its results rows go; a file, if any, is reused by the next write.
            self._drop_rows(result, only_if_missing=False)
            return None
        try:
            st = os.stat(self._store.path(result))
        except FileNotFoundError:
            self._drop_missing(result)
            return None
        except OSError as e:
            self._discard_corrupt(result, BufferCorrupt(
                self._store.path(result), f"could not be read ({_os_detail(e)})"))
            return None
        if st.st_size != size:
            self._discard_corrupt(result, BufferCorrupt(
                self._store.path(result),
                f"failed verification (size {st.st_size}, expected {size})", st))
            return None
        self._maybe_touch(result, last_used)
        if kind == INDEXED_KIND:
            entry = self._index.read(tf_cs)
            if entry is None or not entry.fresh() or not entry.same(result, size, kind):
                self._write_index(tf_cs, result, size, kind)
        return kind, Checksum(result)

    def recorded(self, tf_checksums) -> set | None:
        """Which of ``tf_checksums`` have a ``results`` row, in one query per
        ``_PROBE_MAX``: a burst of new transformations is mostly misses, which then cost no
        query of their own.  Only a probe: a row found still goes through ``lookup``.
        ``None`` when the database cannot be read."""
        self._emit_warnings()
        checksums = [str(cs) for cs in tf_checksums]
        found: set = set()
        try:
            conn = self._db.conn()
            for start in range(0, len(checksums), _PROBE_MAX):
                chunk = checksums[start:start + _PROBE_MAX]
                size = 1 << (len(chunk) - 1).bit_length()  # few distinct statements
                chunk += chunk[-1:] * (size - len(chunk))
                found.update(row[0] for row in conn.execute(_probe_sql(size), chunk))
        except sqlite3.Error as e:
            self._read_failed(e)
            return None
        return found

    def read_buffer(self, cs):
        """The verified content of buffer ``cs``, or ``None`` (missing, or corrupt and discarded).

        The content is a read-only ``memoryview`` (1-D, format ``"B"``) that owns its memory:
        use it as a bytes-like object (``len``, slicing, ``==``, ``np.frombuffer``,
        ``str(view, "utf-8")``, ``bytes(view)`` for a ``bytes`` copy). Why not ``bytes``: large
        buffers are read into huge-page memory while being hashed, which ``bytes`` cannot hold
        (buffers.py); one return type for every size keeps callers honest.
        """
        check_checksum("cs", cs)
        self._emit_warnings()
        try:
            row = self._db.conn().execute(
                "SELECT size, last_used FROM buffers WHERE checksum = ?", (cs,)
            ).fetchone()
        except sqlite3.Error as e:
            self._read_failed(e)
            row = None
        try:
            data, _ = self._store.read_file(cs, None if row is None else row[0])
        except BufferMissing:
            if row is not None:
                self._drop_missing(cs)
            return None
        except BufferCorrupt as corrupt:
            self._discard_corrupt(cs, corrupt)
            return None
        if row is not None:
            self._maybe_touch(cs, row[1])
        return data

    def _read_failed(self, e: sqlite3.Error) -> None:
        message = (
            f"could not read the persistent cache at {self.directory} ({e}); lookups count "
            f"as misses (run `seamless-cache verify`, or point SEAMLESS_CACHE elsewhere)"
        )
        if _first_report(self.directory, "read:" + _sqlite_name(e)):
            warn_cache(message)
        else:
            _log.debug(message)

    def _write_index(self, tf_cs: str, result: str, size: int, kind: str) -> None:
        """Write the index entry of a row of kind ``INDEXED_KIND`` (other kinds get none); a
        failure only costs the command line its fast hit (it then reads the database), so it
        is logged, not warned."""
        if kind != INDEXED_KIND:
            return
        try:
            self._index.write(tf_cs, result, size, kind)
        except OSError as e:
            _log.debug("could not write the result index entry of %s in %s: %s", tf_cs,
                       self.directory, e)

    def _remove_index(self, tf_checksums) -> None:
        try:
            self._index.remove(tf_checksums)
        except OSError as e:
            # A stale entry names a result computed for its transformation, verified on
            # every read; the next verify, clear or gc removes it.
            _log.debug("could not remove result index entries in %s: %s", self.directory, e)

    @staticmethod
    def _delete_result_rows(c, result_cs: str) -> list:
        """Delete the rows of ``result_cs`` in transaction ``c``; their transformations."""
        tfs = [tf for (tf,) in c.execute(
            "SELECT transformation FROM results WHERE result = ?", (result_cs,))]
        c.execute("DELETE FROM results WHERE result = ?", (result_cs,))
        c.execute("DELETE FROM buffers WHERE checksum = ?", (result_cs,))
        return tfs

    def _drop_rows(self, result_cs: str, only_if_missing: bool) -> None:
        """Delete the buffers row of ``result_cs``, the results rows that point to it and their
        index entries."""
        try:
            with self._db.transaction() as c:
                # Re-checked inside the write lock: a concurrent writer may have just stored it.
                if only_if_missing and os.path.exists(self._store.path(result_cs)):
                    return
                tfs = self._delete_result_rows(c, result_cs)
        except sqlite3.Error as e:
            # The rows stay; the next reader sees the same miss and tries again.
            _log.debug("could not delete cache rows of %s in %s: %s", result_cs,
                       self.directory, e)
            return
        self._remove_index(tfs)

    def _drop_missing(self, result_cs: str) -> None:
        _log.debug("cache buffer %s… is missing from %s; its rows are dropped",
                   result_cs[:12], self.directory)
        self._drop_rows(result_cs, only_if_missing=True)

    def _discard_corrupt_quietly(self, cs: str, corrupt: BufferCorrupt) -> None:
        try:
            gone = self._store.remove_if_same(cs, corrupt.stat_result)
        except OSError as e:
            # It stays on disk, but without rows it is never served: a miss from now on.
            _log.debug("could not remove corrupt cache buffer %s: %s", corrupt.path, e)
            gone = True
        if gone:
            self._drop_rows(cs, only_if_missing=False)
        else:
            _log.debug("corrupt cache buffer %s was replaced by a new copy meanwhile",
                       corrupt.path)

    def _discard_corrupt(self, cs: str, corrupt: BufferCorrupt) -> None:
        self._discard_corrupt_quietly(cs, corrupt)
        warn_cache(
            f"cache buffer {cs[:12]}… at {corrupt.path} {corrupt.reason}; discarded, the "
            "result will be recomputed"
        )

    def _maybe_touch(self, cs: str, last_used) -> None:
        """Record a hit of ``cs``; the writer thread stores the recorded hits in one batch."""
        now = _clock()
        if last_used is not None and now - last_used < RECENCY_INTERVAL:
            return
        with self._state_lock:
            if self._closed:
                return
            self._touches[cs] = now
            if not self._touch_queued:
                self._touch_queued = True
                self._submit(self._do_touches, ())

    def _do_touches(self) -> None:
        with self._state_lock:
            touches, self._touches = self._touches, {}
            self._touch_queued = False
        try:
            with self._db.transaction() as c:
                c.executemany(
                    "UPDATE buffers SET last_used = ? WHERE checksum = ? AND last_used < ?",
                    [(when, cs, when) for cs, when in touches.items()],
                )
        except sqlite3.Error as e:
            _log.debug("could not update last_used of %d buffers in %s: %s", len(touches),
                       self.directory, e)

    # -- writing -------------------------------------------------------------------------------

    def _check_write_args(self, tf_cs, kind, result_cs, buffer, duration, replace, label=None):
        _check_label(label)
        check_checksum("tf_cs", tf_cs)
        check_checksum("result_cs", result_cs)
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty str such as 'json', got {kind!r}")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, (int, float))):
            raise TypeError(f"duration must be a number of seconds or None, got {duration!r}")
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be True or False, got {replace!r}")
        with memoryview(buffer) as view:
            if not view.c_contiguous:
                raise ValueError(
                    f"the buffer of result {result_cs[:12]}… must be C-contiguous (pass "
                    "bytes(buffer))"
                )

    def write(self, tf_cs, kind, result_cs, buffer, duration=None, replace=False,
              label=None) -> None:
        """Queue the storage of a successful result; returns at once (see ``flush``).

        ``buffer`` (bytes or a C-contiguous buffer of exactly the canonical bytes of
        ``result_cs``) is referenced until written and must not change meanwhile.
        ``replace=True`` overwrites an existing results row (``seamless-run --no-cache``).
        ``label``: what ``seamless-cache list`` shows for it (a function name, a command).
        """
        self._check_write_args(tf_cs, kind, result_cs, buffer, duration, replace, label)
        with self._state_lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed; open a new PersistentCache")
            self._submit(self._job_write,
                         (tf_cs, kind, result_cs, buffer, duration, replace, label))
        self._emit_warnings()

    def write_now(self, tf_cs, kind, result_cs, buffer, duration=None, replace=False,
                  label=None) -> bool:
        """Store a result synchronously; ``True`` when its rows are in place.

        A failure is reported like a queued one (one ``CacheWarning`` per directory and errno,
        emitted here) and returns ``False``.
        """
        self._check_write_args(tf_cs, kind, result_cs, buffer, duration, replace, label)
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open a new PersistentCache")
        ok, message = self._do_write(tf_cs, kind, result_cs, buffer, duration, replace, label)
        if message is not None:
            warn_cache(message)
        return ok

    def write_stream_now(self, tf_cs, kind, pieces, size_hint, duration=None, replace=False,
                         label=None):
        """Store a result given as pieces of its canonical bytes (about ``size_hint`` bytes),
        synchronously; returns its checksum, or ``None`` when the write failed (reported like
        ``write_now``). ``label``: as for ``write`` (seamless-run passes the command).

        For the command line, whose results (a command's stdout, its output files) are streamed
        from files rather than held in memory.
        """
        check_checksum("tf_cs", tf_cs)
        _check_label(label)
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open a new PersistentCache")
        try:
            result_cs, size = self._store.write_stream(pieces, size_hint)
        except OSError as e:
            message = self._failure_message(e)
            if message is not None:
                warn_cache(message)
            return None
        ok, message = self._do_rows(tf_cs, kind, result_cs, size, duration, replace, label)
        if message is not None:
            warn_cache(message)
        return Checksum(result_cs) if ok else None

    def _submit(self, function, args) -> None:
        with self._pending_cond:
            self._pending += 1
        _writer.submit(self, function, args)

    def _job_done(self, count: int = 1) -> None:
        with self._pending_cond:
            self._pending -= count
            if self._pending == 0:
                self._pending_cond.notify_all()

    def _job_write(self, *args) -> None:
        ok, message = self._do_write(*args)
        self._record_failure(message)
        if ok and self.max_bytes is not None:
            self._keep_under_cap(memoryview(args[3]).nbytes)

    def _job_write_many(self, batch) -> None:
        """Queued writes (``write``'s argument tuples): each file, then every row in one
        transaction. A file that cannot be written drops only its own row."""
        stored, written = [], 0
        for tf_cs, kind, result_cs, buffer, duration, replace, label in batch:
            try:
                self._store.write_file(result_cs, buffer)
            except OSError as e:
                self._record_failure(self._failure_message(e))
                continue
            size = memoryview(buffer).nbytes
            stored.append((tf_cs, kind, result_cs, size, duration, replace, label))
            written += size
        ok, message = self._do_rows_many(stored)
        self._record_failure(message)
        if ok and stored and self.max_bytes is not None:
            self._keep_under_cap(written)

    def _record_failure(self, message) -> None:
        """Keep a writer-thread failure for the caller's thread to warn about."""
        if message is not None:
            with self._warn_lock:
                self._warnings.append(message)

    def _keep_under_cap(self, written: int) -> None:
        """On the writer thread, after a write of ``written`` bytes: trim when over the cap."""
        cap = self.max_bytes
        now = time.monotonic()
        if self._estimate is not None:
            self._estimate += written
        try:
            if (self._estimate is None or self._estimate > cap
                    or now - self._measured_at > _MEASURE_EVERY):
                self._estimate = self.total_bytes()
                self._measured_at = now
            if self._estimate > cap:
                done = self.trim(cap)
                self._estimate = done["total"]
        except (sqlite3.Error, OSError) as e:
            # The directory stays over its cap until the next write tries again.
            _log.debug("could not trim the persistent cache at %s: %s", self.directory, e)
            self._estimate = None

    def _do_write(self, tf_cs, kind, result_cs, buffer, duration, replace, label=None):
        """Write file then rows; return ``(ok, message)``: ``message`` is the warning text of a
        failure reported for the first time, else ``None`` (repeats are logged at DEBUG)."""
        try:
            self._store.write_file(result_cs, buffer)
        except OSError as e:
            return False, self._failure_message(e)
        return self._do_rows(tf_cs, kind, result_cs, memoryview(buffer).nbytes, duration,
                             replace, label)

    def _do_rows(self, tf_cs, kind, result_cs, size, duration, replace, label=None):
        """Insert the rows of a stored buffer; ``(ok, message)`` as ``_do_write``."""
        return self._do_rows_many([(tf_cs, kind, result_cs, size, duration, replace, label)])

    def _do_rows_many(self, stored):
        """Insert the rows of stored buffers (``(tf_cs, kind, result_cs, size, duration,
        replace, label)`` each) in one transaction, then their index entries; ``(ok, message)``
        as ``_do_write``: all rows or none."""
        if not stored:
            return True, None
        try:
            now = _clock()
            with self._db.transaction() as c:
                # A buffer stored before was just used again (new ones are inserted after).
                c.executemany(
                    "UPDATE buffers SET last_used = ? WHERE checksum = ? AND last_used < ?",
                    [(now, row[2], now - RECENCY_INTERVAL) for row in stored])
                c.executemany(
                    "INSERT OR IGNORE INTO buffers (checksum, size, created, last_used) "
                    "VALUES (?, ?, ?, ?)", [(row[2], row[3], now, now) for row in stored])
                for replace, group in itertools.groupby(stored, key=lambda row: row[5]):
                    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
                    c.executemany(
                        f"{verb} INTO results (transformation, result, kind, created, "
                        "duration, label) VALUES (?, ?, ?, ?, ?, ?)",
                        [(tf_cs, result_cs, kind, now, duration, _short_label(label))
                         for tf_cs, kind, result_cs, _size, duration, _r, label in group])
                # What the rows of indexed results say now (an older result stays unless
                # ``replace``).
                rows = [(row[0], c.execute(_LOOKUP, (row[0],)).fetchone()) for row in stored
                        if row[1] == INDEXED_KIND]
        except sqlite3.Error as e:
            return False, self._failure_message(e)
        for tf_cs, row in rows:
            if row is not None and row[2] is not None:
                self._write_index(tf_cs, row[1], row[2], row[0])
        return True, None

    def _failure_message(self, e):
        """The warning text of a failed write (an ``OSError`` or ``sqlite3.Error``) the first
        time its (directory, error) is seen; later ones are logged at DEBUG and give ``None``."""
        if isinstance(e, OSError):
            key = e.errno if e.errno is not None else type(e).__name__
            detail, fix = _os_detail(e), _FIXES.get(e.errno, _DEFAULT_FIX)
        else:
            key = "sqlite:" + _sqlite_name(e)
            detail = str(e)
            fix = _FIXES[_errno.ENOSPC] if "full" in detail else _DEFAULT_FIX
        message = (
            f"could not write to the persistent cache at {self.directory} ({detail}); "
            f"results stay in memory only ({fix})"
        )
        if _first_report(self.directory, key):
            return message
        _log.debug(message)
        return None

    def _emit_warnings(self) -> None:
        """Emit, on the caller's thread, the warnings the writer thread recorded."""
        while self._warnings:
            with self._warn_lock:
                if not self._warnings:
                    return
                message = self._warnings.pop(0)
            warn_cache(message)

    def flush(self, timeout=None) -> bool:
        """Wait until this cache's queued writes are done; ``False`` if ``timeout`` ran out.

        Then emits the warnings of failed writes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        writer = _writer
        writer.flushing(+1)
        try:
            with self._pending_cond:
                while self._pending:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._pending_cond.wait(remaining)
                done = self._pending == 0
        finally:
            writer.flushing(-1)
        self._emit_warnings()
        return done

    def close(self) -> None:
        """Flush, then close this process's connections; later calls raise ``RuntimeError``."""
        with self._state_lock:
            self._closed = True
        try:
            self.flush()
        finally:
            self._db.close()
            _instances.discard(self)

    def _after_fork_in_child(self) -> None:
        self._state_lock = threading.Lock()
        self._pending = 0
        self._pending_cond = threading.Condition(threading.Lock())
        self._warn_lock = threading.Lock()
        self._warnings = []
        self._touches = {}
        self._touch_queued = False
        self._estimate = None
        self._db.after_fork_in_child()

    # -- primitives for `seamless-cache` (docs/caching.md) ---------------------------------------

    def stats(self) -> dict:
        """Counts of results and buffers, total buffer bytes, oldest and newest ``last_used``."""
        conn = self._db.conn()
        conn.execute("BEGIN")
        try:
            (results,) = conn.execute("SELECT count(*) FROM results").fetchone()
            buffers, total, oldest, newest = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(last_used), max(last_used) "
                "FROM buffers"
            ).fetchone()
        finally:
            conn.execute("COMMIT")
        return {"directory": self.directory, "results": results, "buffers": buffers,
                "bytes": total, "oldest_use": oldest, "newest_use": newest}

    def entries(self) -> list:
        """Every result, newest first, for ``seamless-cache list``: dicts with
        ``transformation``, ``result``, ``kind``, ``size`` (``None`` when its buffer row is
        gone), ``created``, ``duration`` and ``label`` (the function's name or the command;
        ``None`` for rows stored before labels were recorded)."""
        rows = self._db.conn().execute(
            "SELECT r.transformation, r.result, r.kind, b.size, r.created, r.duration, r.label "
            "FROM results AS r LEFT JOIN buffers AS b ON b.checksum = r.result "
            "ORDER BY r.created DESC, r.transformation ASC").fetchall()
        names = ("transformation", "result", "kind", "size", "created", "duration", "label")
        return [dict(zip(names, row)) for row in rows]

    def transformations_starting(self, prefix: str, limit: int = 2) -> list:
        """Up to ``limit`` transformation checksums that start with ``prefix`` (lower-case
        hex): ``seamless-cache rm`` accepts a unique prefix, as git does."""
        rows = self._db.conn().execute(
            "SELECT transformation FROM results WHERE transformation >= ? AND transformation < ? "
            "ORDER BY transformation LIMIT ?", (prefix, prefix + "g", limit)).fetchall()
        return [tf for (tf,) in rows]

    def remove(self, tf_cs: str):
        """Forget the result of ``tf_cs``: its row, its index entry, and its buffer (row and
        file) when no other result points to it. Returns ``{"result", "buffer_removed",
        "bytes"}``, or ``None`` when there is no such result.

        Another process storing the same buffer meanwhile may lose its file; its next lookup
        then sees the file missing and drops the row, as after ``gc``.
        """
        with self._db.transaction() as c:
            row = c.execute("SELECT result FROM results WHERE transformation = ?",
                            (tf_cs,)).fetchone()
            if row is None:
                return None
            (result,) = row
            c.execute("DELETE FROM results WHERE transformation = ?", (tf_cs,))
            shared = c.execute("SELECT 1 FROM results WHERE result = ? LIMIT 1",
                               (result,)).fetchone() is not None
            size = 0
            if not shared:
                size_row = c.execute("SELECT size FROM buffers WHERE checksum = ?",
                                     (result,)).fetchone()
                size = size_row[0] if size_row is not None else 0
                c.execute("DELETE FROM buffers WHERE checksum = ?", (result,))
        self._remove_index([tf_cs])
        removed = False
        if not shared:
            try:
                os.unlink(self._store.path(result))
                removed = True
            except FileNotFoundError:  # already gone (gc or verify elsewhere)
                size = 0
        return {"result": result, "buffer_removed": removed, "bytes": size}

    def verify(self) -> dict:
        """Re-hash every buffer file: drop corrupt ones with their rows, drop rows whose file
        is missing, register valid files that have no row.

        Returns ``{"checked": n, "dropped": [checksums], "missing": [checksums],
        "registered": [checksums]}``.
        """
        conn = self._db.conn()
        sizes = dict(conn.execute("SELECT checksum, size FROM buffers").fetchall())
        report = {"checked": 0, "dropped": [], "missing": [], "registered": []}
        on_disk = set()
        for cs, _path in self._store.iter_files():
            try:
                data, _ = self._store.read_file(cs, sizes.get(cs))
            except BufferMissing:  # deleted by another process since the listing
                continue
            except BufferCorrupt as corrupt:
                on_disk.add(cs)
                report["checked"] += 1
                self._discard_corrupt_quietly(cs, corrupt)
                report["dropped"].append(cs)
                continue
            on_disk.add(cs)
            report["checked"] += 1
            if cs not in sizes:
                now = time.time()
                with self._db.transaction() as c:
                    c.execute(
                        "INSERT OR IGNORE INTO buffers (checksum, size, created, last_used) "
                        "VALUES (?, ?, ?, ?)", (cs, len(data), now, now),
                    )
                report["registered"].append(cs)
            del data
        for cs in sizes:
            if cs not in on_disk and not os.path.exists(self._store.path(cs)):
                self._drop_rows(cs, only_if_missing=True)
                report["missing"].append(cs)
        with self._db.transaction() as c:
            c.execute(
                "DELETE FROM results WHERE result NOT IN (SELECT checksum FROM buffers)"
            )
        self._verify_index()
        return report

    def _verify_index(self) -> None:
        """Make the index say what the rows say: entries without a row of ``INDEXED_KIND``,
        or naming another result, go; such rows without an entry (stored before the index
        existed) get one."""
        rows = {tf: (result, size, kind) for tf, result, size, kind in self._db.conn().execute(
            "SELECT r.transformation, r.result, b.size, r.kind FROM results AS r "
            "JOIN buffers AS b ON b.checksum = r.result WHERE r.kind = ?", (INDEXED_KIND,))}
        stray = []
        for tf, _path in self._index.iter_files():
            entry = self._index.read(tf)
            if tf in rows and entry is not None and entry.same(*rows[tf]):
                del rows[tf]
            else:
                stray.append(tf)
        self._remove_index(stray)
        for tf, (result, size, kind) in rows.items():
            self._write_index(tf, result, size, kind)

    def clear(self) -> int:
        """Delete every row, index entry and buffer file (temp files of writes in progress are
        left); returns the number of buffer files removed."""
        with self._db.transaction() as c:
            c.execute("DELETE FROM results")
            c.execute("DELETE FROM buffers")
        self._remove_index([tf for tf, _path in self._index.iter_files()])
        removed = 0
        for _cs, path in self._store.iter_files():
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
        return removed

    def total_bytes(self) -> int:
        """The recorded size of every buffer, summed."""
        (total,) = self._db.conn().execute(
            "SELECT coalesce(sum(size), 0) FROM buffers").fetchone()
        return total

    def trim(self, max_bytes: int, keep=TRIM_TO) -> dict:
        """When the total is above ``max_bytes``, drop least recently used buffers (with their
        results rows and index entries) until it is at most ``keep * max_bytes``.

        Safe beside other processes (see the module docstring). Returns ``{"buffers": n,
        "bytes": freed, "total": bytes left}``.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        total = self.total_bytes()
        if total <= max_bytes:
            return {"buffers": 0, "bytes": 0, "total": total}
        goal = total - int(max_bytes * keep)
        victims, planned = [], 0
        for cs, size, last_used in self._db.conn().execute(
                "SELECT checksum, size, last_used FROM buffers "
                "ORDER BY last_used ASC, checksum ASC"):
            if planned >= goal:
                break
            victims.append((cs, size, last_used))
            planned += size
        freed = dropped = 0
        for start in range(0, len(victims), 256):
            gone, tfs = [], []
            with self._db.transaction() as c:
                for cs, size, last_used in victims[start:start + 256]:
                    # Used again (or replaced) since it was chosen: it stays.
                    if c.execute("DELETE FROM buffers WHERE checksum = ? AND last_used = ?",
                                 (cs, last_used)).rowcount:
                        tfs += self._delete_result_rows(c, cs)
                        gone.append((cs, size))
            self._remove_index(tfs)
            for cs, size in gone:
                try:
                    os.unlink(self._store.path(cs))
                except FileNotFoundError:  # removed by another process meanwhile
                    continue
                dropped += 1
                freed += size
        return {"buffers": dropped, "bytes": freed, "total": self.total_bytes()}

    def gc(self, max_bytes: int) -> dict:
        """Drop least recently used buffers (and their results rows and index entries) until the
        total is at most ``max_bytes``; remove temp files older than one hour.

        Returns ``{"buffers": n, "bytes": freed, "temp_files": n}``.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        conn = self._db.conn()
        rows = conn.execute(
            "SELECT checksum, size FROM buffers ORDER BY last_used ASC, checksum ASC"
        ).fetchall()
        total = sum(size for _, size in rows)
        freed = dropped = 0
        for cs, size in rows:
            if total <= max_bytes:
                break
            with self._db.transaction() as c:
                tfs = self._delete_result_rows(c, cs)
            self._remove_index(tfs)
            total -= size
            try:
                os.unlink(self._store.path(cs))
            except FileNotFoundError:  # removed meanwhile: its rows are gone now too
                continue
            dropped += 1
            freed += size
        temps = 0
        cutoff = time.time() - _TEMP_MAX_AGE
        for path in (*self._store.iter_temp_files(), *self._index.iter_temp_files()):
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    temps += 1
            except FileNotFoundError:
                continue
        return {"buffers": dropped, "bytes": freed, "temp_files": temps}


def _check_label(label) -> None:
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str (a function name or a command) or None, "
                        f"got {label!r}")


def _sqlite_name(e: sqlite3.Error) -> str:
    return getattr(e, "sqlite_errorname", None) or type(e).__name__
