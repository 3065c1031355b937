"""The SQLite database of a persistent cache: ``<dir>/seamless.db`` (docs/caching.md).

Connections: one per thread, kept in a ``threading.local``. Why not one shared connection behind
a lock: a reader (a lookup on an executor thread) would then wait behind the writer thread while
that one waits up to ``busy_timeout`` for another process's write lock; with a connection per
thread, WAL lets every reader proceed while one writer writes. Each connection is wrapped in a
small holder object that the thread-local owns; when a thread ends, its holder and connection
are freed (and closed). ``close()`` closes every live connection (a ``WeakSet`` of holders), so
connections are opened with ``check_same_thread=False``, but each is only ever used by the
thread that opened it. After ``os.fork()`` the child never uses (or closes) the parent's
connections: a pid check makes it open its own.

Transactions are short and explicit (autocommit mode, ``BEGIN IMMEDIATE`` for writes, so a
writer takes the write lock up front and ``busy_timeout`` = 30 s serialises writers across
processes). Failures to open, create or validate the database raise ``CacheError``; a database
whose ``meta.schema`` is unknown is not modified at all. A database of this schema written
before ``results.label`` existed gets the column on first open (``_add_label``); its old rows
have no label.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref

from seamless.cache.result_index import TOUCH_INTERVAL
from seamless.errors import CacheError

__all__ = ["Database", "SCHEMA", "ENCODING", "BUSY_TIMEOUT_MS", "TOUCH_INTERVAL"]

SCHEMA = 1
ENCODING = 1
BUSY_TIMEOUT_MS = 30000

_CREATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (transformation TEXT PRIMARY KEY,
                                    result TEXT NOT NULL,
                                    kind TEXT NOT NULL,
                                    created REAL NOT NULL,
                                    duration REAL,
                                    label TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_by_result ON results(result);
CREATE TABLE IF NOT EXISTS buffers (checksum TEXT PRIMARY KEY,
                                    size INTEGER NOT NULL,
                                    created REAL NOT NULL,
                                    last_used REAL NOT NULL) WITHOUT ROWID;
"""


class _Holder:
    """Owns one connection; weak-referenceable (sqlite3.Connection is not)."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn):
        self.conn = conn
        self.pid = os.getpid()


_FIX = "move it away to start an empty cache, or point SEAMLESS_CACHE at another directory"


def _describe(e: sqlite3.Error) -> str:
    return str(e) or type(e).__name__


class Database:
    """Per-thread connections to one ``seamless.db``, created and validated on construction."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._holders: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self._initialise()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self):
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise self._open_error(e) from e
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            conn.close()
            raise self._open_error(e) from e
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use in the thread)."""
        holder = getattr(self._local, "holder", None)
        if holder is not None and holder.pid == os.getpid() and not self._closed:
            return holder.conn
        if not self._closed:
            holder = _Holder(self._connect())
            with self._lock:
                closed = self._closed
                if not closed:
                    self._holders.add(holder)
            if not closed:
                self._local.holder = holder
                return holder.conn
            holder.conn.close()
        raise RuntimeError(
            f"the cache database {self.path} was closed; open a new PersistentCache"
        )

    def close(self) -> None:
        """Close every connection of this process (call when no other thread uses them)."""
        with self._lock:
            self._closed = True
            holders = [h for h in self._holders if h.pid == os.getpid()]
            self._holders = weakref.WeakSet()
        for h in holders:
            h.conn.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections without closing them (they belong to the parent)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._holders = weakref.WeakSet()

    @contextlib.contextmanager
    def transaction(self):
        """A short write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front)."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- creation and validation ---------------------------------------------------------------

    def _error(self, what: str, e: sqlite3.Error, fix: str = _FIX) -> CacheError:
        return CacheError(
            f"cache database {self.path} {what} ({_describe(e)}); {fix}",
            None, _describe(e), self.path,
        )

    def _schema_of(self, conn):
        """``meta.schema`` as text, or ``None`` when there is no meta table or no schema row."""
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return None if row is None else row[0]

    def _check_schema(self, schema) -> None:
        if schema is not None and schema != str(SCHEMA):
            raise CacheError(
                f"cache database {self.path} has schema {schema}, this version reads schema "
                f"{SCHEMA} (upgrade seamless, or point SEAMLESS_CACHE at another directory)",
                None, f"unknown schema {schema}", self.path,
            )

    def _enable_wal(self, conn) -> str:
        """Switch a new database to WAL; returns the journal mode in force.

        SQLite does not call the busy handler for a journal-mode change, so processes that
        create the same database at once retry here, within the busy timeout.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
                return mode
            except sqlite3.OperationalError as e:
                if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _initialise(self) -> None:
        conn = self.conn()
        try:
            # Read before writing anything: a database of an unknown schema is not touched.
            schema = self._schema_of(conn)
            self._check_schema(schema)
            if schema is not None:
                # Ours already: created in WAL mode, which is persistent. Opening takes no
                # write lock (the command line's cache-hit path opens it on every run) unless
                # the database predates the ``label`` column.
                if not self._has_label(conn):
                    self._add_label()
                return
            mode = self._enable_wal(conn)
            if mode != "wal":
                raise CacheError(
                    f"cache database {self.path} cannot use WAL mode (journal_mode is "
                    f"{mode!r}); put SEAMLESS_CACHE on a local file system",
                    None, "WAL mode unavailable", self.path,
                )
            with self.transaction() as c:
                schema = self._schema_of(c)
                self._check_schema(schema)
                if schema is None:
                    for statement in _CREATE.split(";"):
                        if statement.strip():
                            c.execute(statement)
                    c.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?), "
                        "('encoding', ?)", (str(SCHEMA), str(ENCODING)),
                    )
        except CacheError:
            self.close()
            raise
        except sqlite3.Error as e:
            self.close()
            raise self._open_error(e) from e

    @staticmethod
    def _has_label(conn) -> bool:
        return any(row[1] == "label" for row in conn.execute("PRAGMA table_info(results)"))

    def _add_label(self) -> None:
        """Upgrade a database written before results had a ``label`` in place.

        Additive, so the schema number stays (older versions of seamless name their columns
        and keep working on it). Several processes may open it at once: the write lock
        serialises them and the column is re-checked under it, so exactly one adds it.
        """
        with self.transaction() as c:
            if not self._has_label(c):
                c.execute("ALTER TABLE results ADD COLUMN label TEXT")

    def _open_error(self, e: sqlite3.Error) -> CacheError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return self._error(
                f"is locked past the {BUSY_TIMEOUT_MS // 1000} s busy timeout", e,
                "retry when the process holding it is done, or point SEAMLESS_CACHE at "
                "another directory",
            )
        if "not a database" in text or "malformed" in text:
            return self._error("is malformed", e)
        return self._error("cannot be opened, created or written", e)
