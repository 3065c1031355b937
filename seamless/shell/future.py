"""``.FUTURE`` sidecars: ``X.FUTURE`` exists while ``X`` is being computed (docs/cli.md).

Data flow:

- A producer (seamless-run, or the queue server for a queued job) calls ``Sidecar.create``. The
  one-line JSON record is written to a hidden temporary file in the target's own directory and
  renamed over ``X.FUTURE``; ``create`` removes that temporary file itself when anything fails,
  so only complete sidecars are ever visible. A later ``create`` for the same target replaces
  the file: the last writer owns the sidecar, and readers wait for it.
- While the job waits or runs, a ``Heartbeat`` thread (one per process, daemon) refreshes the
  mtime of each registered sidecar every ``HEARTBEAT_S`` seconds. The owner registers and
  discards its sidecars and calls ``stop()``, which joins the thread.
- When the job ends, the owner calls ``Sidecar.remove``, which deletes the file only if it still
  holds the owner's record (pid, host and started), so an owner that was taken over leaves its
  successor's sidecar alone.
- Readers call ``check`` / ``wait_for``; they never write nor delete a sidecar. A sidecar whose
  writer is a dead process of this host, or whose mtime is older than ``STALE_AFTER_S``, raises
  ``StaleFuture``, whose text tells the user what to do.

Files offer no compare-and-delete: a takeover landing between ``remove``'s check and its unlink
(microseconds) loses the new sidecar, and its readers proceed early. ``touch`` has no such
window: it refreshes the very file it checked, through its descriptor.

Light module: standard library only, no ``socket`` (its import costs milliseconds on the
seamless-run cache-hit path; ``os.uname().nodename`` is what ``socket.gethostname()`` returns)
and no ``json`` (with ``re`` and ``enum`` behind it, about 7 ms): records are written and read by
``_dumps`` / ``_loads``, which handle the flat one-line form written here and hand anything else
(escaped strings, nested values, exponents) to ``json``, imported only then.
"""

from __future__ import annotations

import _thread
import math
import os
import time

__all__ = [
    "HEARTBEAT_S",
    "POLL_S",
    "STALE_AFTER_S",
    "Heartbeat",
    "Sidecar",
    "StaleFuture",
    "check",
    "sidecar_path",
    "wait_for",
]

HEARTBEAT_S = 10.0
STALE_AFTER_S = 30.0
POLL_S = 0.5

_SUFFIX = ".FUTURE"
_MAX_RECORD = 4096  # bytes read from a sidecar; a longer one is not ours and judged by mtime
_MAX_PID = 2**31 - 1


def sidecar_path(target: str) -> str:
    """``target + ".FUTURE"``; a directory target's trailing slashes are dropped, so its sidecar
    lies beside the directory and survives the directory being swapped in by rename."""
    target = os.fsdecode(target)
    return (target.rstrip("/") or "/") + _SUFFIX


def _hostname() -> str:
    return os.uname().nodename


_started_lock = _thread.allocate_lock()  # _thread: threading costs a hit 0.6 ms to import
_last_started = 0.0


def _started() -> float:
    """``time.time()``, made unique within this process: two sidecars of one owner (the queue
    server's jobs) for the same target must never look like the same record."""
    global _last_started
    with _started_lock:
        now = time.time()
        if now <= _last_started:
            now = math.nextafter(_last_started, math.inf)
        _last_started = now
        return now


_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def _dumps(record: dict) -> str:
    """``json.dumps(record)`` (default separators, ASCII), written by hand for the values a
    record holds (None, bool, int, finite float, plain ASCII str); other values go to ``json``."""
    parts = []
    for key, value in record.items():
        if value is None:
            text = "null"
        elif value is True or value is False:
            text = "true" if value else "false"
        elif type(value) is int:
            text = repr(value)
        elif type(value) is float and math.isfinite(value):
            text = repr(value)
        elif type(value) is str and _PLAIN.issuperset(value):
            text = f'"{value}"'
        else:
            text = None
        if text is None or type(key) is not str or not _PLAIN.issuperset(key):
            import json

            return json.dumps(record)
        parts.append(f'"{key}": {text}')
    return "{" + ", ".join(parts) + "}"


_CONSTANTS = {"null": None, "true": True, "false": False}
_DIGITS = frozenset("0123456789")


def _scalar(token: str):
    """The value of a JSON literal, integer or plain decimal (``-?D+(.D+)?``); raises
    ``ValueError`` for anything else (the caller then asks ``json``)."""
    if token in _CONSTANTS:
        return _CONSTANTS[token]
    digits = token[1:] if token.startswith("-") else token
    whole, dot, fraction = digits.partition(".")
    if (not whole or not _DIGITS.issuperset(whole) or (len(whole) > 1 and whole[0] == "0")
            or (dot and (not fraction or not _DIGITS.issuperset(fraction)))):
        raise ValueError(token)
    return float(token) if dot else int(token)


def _loads_flat(text: str) -> dict:
    """A one-line object of scalars without escapes, as ``_dumps`` writes it (any spacing);
    raises ``ValueError`` for anything else."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError("not an object")
    record = {}
    rest = body[1:-1].strip()
    while rest:
        if not rest.startswith('"'):
            raise ValueError("not a key")
        end = rest.index('"', 1)
        key = rest[1:end]
        rest = rest[end + 1:].lstrip()
        if not rest.startswith(":"):
            raise ValueError("no colon")
        rest = rest[1:].lstrip()
        if rest.startswith('"'):
            end = rest.index('"', 1)
            value = rest[1:end]
            rest = rest[end + 1:].lstrip()
        else:
            token, comma, after = rest.partition(",")
            value = _scalar(token.rstrip())
            rest = comma + after
        if "\\" in key or (type(value) is str and "\\" in value):
            raise ValueError("escapes")
        record[key] = value
        if rest.startswith(","):
            rest = rest[1:].lstrip()
            if not rest:
                raise ValueError("trailing comma")
        elif rest:
            raise ValueError("no comma")
    return record


def _loads(data: bytes):
    """``json.loads(data)``; without importing ``json`` for the records ``_dumps`` writes."""
    try:
        return _loads_flat(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        import json

        return json.loads(data)


def _write_record(path: str, record: dict) -> None:
    """Write ``record`` as one JSON line to ``path`` by temp file + rename in its directory.

    No fsync: after a crash the sidecar is stale anyway. The temp name does not derive from the
    target, so it is never longer than the sidecar's, and its leading dot hides it from globs.
    """
    temp = os.path.join(os.path.dirname(path),
                        f".seamless-future-{os.getpid()}-{os.urandom(6).hex()}.tmp")
    data = (_dumps(record) + "\n").encode("ascii")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass  # never created, or already renamed
        raise


def _parse(data: bytes) -> dict:
    """The record in ``data``; ``{}`` when it is not one (another tool's sidecar, damage)."""
    try:
        record = _loads(data)
    except (ValueError, RecursionError):  # bad JSON or bytes; absurd nesting
        return {}
    if not isinstance(record, dict):
        return {}
    pid, host = record.get("pid"), record.get("host")
    if type(pid) is not int or not 0 < pid <= _MAX_PID or not isinstance(host, str):
        return {}  # os.kill(0 or -1, 0) would probe whole process groups
    return record


def _open(path: str):
    """A read-only descriptor on the sidecar at ``path``, or None when there is none.

    ``O_NONBLOCK``: a FIFO planted at that name must not hang the reader. ``PermissionError``
    (another user's private sidecar) goes to the caller.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read(fd: int) -> dict:
    try:
        return _parse(os.read(fd, _MAX_RECORD))
    except (BlockingIOError, IsADirectoryError):
        return {}


def _look(path: str):
    """``(record, mtime)`` of the sidecar at ``path``, or None when there is none; a sidecar we
    may not read has the record ``{}``."""
    try:
        fd = _open(path)
    except PermissionError:
        try:
            return {}, os.stat(path).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
    if fd is None:
        return None
    try:
        return _read(fd), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


class Sidecar:
    """One sidecar this process owns."""

    def __init__(self, target: str, record: dict):
        self.target = os.fsdecode(target)
        self.path = sidecar_path(self.target)
        self.record = record
        self._removed = False

    @classmethod
    def create(cls, target: str, *, pid=None, host=None, transformation=None,
               job=None) -> Sidecar:
        """Write ``target.FUTURE``, taking over any sidecar already there (stale or not).

        An ``OSError`` (missing or read-only directory) goes to the caller, which names it.
        """
        record = {
            "pid": os.getpid() if pid is None else pid,
            "host": _hostname() if host is None else host,
            "started": _started(),
            "transformation": None if transformation is None else str(transformation),
            "job": job,
        }
        sidecar = cls(target, record)
        _write_record(sidecar.path, record)
        return sidecar

    def _open_if_ours(self):
        """A descriptor on our sidecar (the caller closes it), or None once it is removed,
        missing, or holds another owner's record."""
        if self._removed:
            return None
        try:
            fd = _open(self.path)
        except PermissionError:  # not a file we wrote
            return None
        if fd is None:
            return None
        try:
            found = _read(fd)
        except BaseException:
            os.close(fd)
            raise
        if all(found.get(key) == self.record[key] for key in ("pid", "host", "started")):
            return fd
        os.close(fd)
        return None

    def set_transformation(self, checksum: str) -> None:
        """Record the transformation once the inputs are final; a taken-over sidecar stays as
        its new owner wrote it."""
        self.record["transformation"] = str(checksum)
        fd = self._open_if_ours()
        if fd is not None:
            os.close(fd)
            _write_record(self.path, self.record)

    def touch(self) -> None:
        """Heartbeat: set the mtime to now, if the file still holds our record."""
        fd = self._open_if_ours()
        if fd is not None:
            try:
                os.utime(fd)  # the inode just checked, even if replaced meanwhile
            finally:
                os.close(fd)

    def remove(self) -> None:
        """Delete the sidecar if it still holds our record; idempotent; a missing file is fine.

        Other ``OSError``s (a directory made read-only) go to the caller.
        """
        fd = self._open_if_ours()
        self._removed = True
        if fd is None:
            return
        try:
            held = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):  # not replaced meanwhile
                os.unlink(self.path)
        except FileNotFoundError:
            return


class Heartbeat:
    """A daemon thread that touches registered sidecars every ``interval`` seconds."""

    def __init__(self, interval: float = HEARTBEAT_S):
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be positive seconds, got {interval!r}")
        self.interval = interval
        self._sidecars = set()
        # Reentrant: a signal handler in the main thread may call stop() while add() holds it.
        self._lock = _thread.RLock()
        self._thread = None
        self._stopped = None

    def add(self, sidecar) -> None:
        """Register ``sidecar``; the thread starts with the first one."""
        with self._lock:
            self._sidecars.add(sidecar)
            if self._thread is None:
                import threading  # only an owner that keeps sidecars fresh needs it

                self._stopped = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stopped,),
                                                name="seamless-future-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, sidecar) -> None:
        with self._lock:
            self._sidecars.discard(sidecar)

    def stop(self) -> None:
        """Stop and join the thread; idempotent. A later ``add`` starts a new one."""
        with self._lock:
            thread, stopped = self._thread, self._stopped
            self._thread = self._stopped = None
        if thread is not None:
            stopped.set()
            thread.join()

    def _run(self, stopped) -> None:
        while not stopped.wait(self.interval):
            with self._lock:
                sidecars = list(self._sidecars)
            for sidecar in sidecars:
                try:
                    sidecar.touch()
                except OSError:
                    # Nobody to tell from here; a missed beat makes readers see the sidecar as
                    # stale after STALE_AFTER_S, which is then the truth.
                    continue


class StaleFuture(Exception):
    """A sidecar whose writer is gone: its target may be incomplete. ``str()`` is docs/cli.md's
    message; the reader exits 1 with it and neither waits nor deletes the sidecar."""

    def __init__(self, target: str, pid=None, host=None, age=None):
        super().__init__(target, pid, host, age)
        self.target, self.pid, self.host, self.age = target, pid, host, age

    def __str__(self) -> str:
        path = sidecar_path(self.target)
        if self.pid is not None:
            why = f"writer pid {self.pid} on {self.host} is gone"
        else:
            why = f"no heartbeat for {int(self.age)} s"
        return (f"{path} is stale ({why}); check that {self.target} is complete and delete "
                f"{path}, or rerun the job that produces {self.target}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check(target: str, *, stale_after=STALE_AFTER_S) -> dict | None:
    """The record of ``target.FUTURE`` (``{}`` when it cannot be parsed), or None when there is
    no sidecar. Raises ``StaleFuture`` when its writer is gone; other ``OSError``s propagate."""
    target = os.fsdecode(target)
    found = _look(sidecar_path(target))
    if found is None:
        return None
    record, mtime = found
    if record and record["host"] == _hostname() and not _alive(record["pid"]):
        raise StaleFuture(target, pid=record["pid"], host=record["host"])
    age = time.time() - mtime
    if age > stale_after:
        raise StaleFuture(target, age=age)
    return record


def _waiting_message(target: str, record: dict) -> str:
    path = sidecar_path(target)
    if record:
        return f"waiting for {target} ({path}, pid {record['pid']} on {record['host']})"
    return f"waiting for {target} ({path})"


def wait_for(target: str, *, on_wait=None, poll=POLL_S, stale_after=STALE_AFTER_S) -> bool:
    """Wait until ``target.FUTURE`` is gone: True if there was one to wait for, else False.

    ``on_wait(message)`` is called once, before the first poll. Raises ``StaleFuture`` as soon
    as the sidecar is or becomes stale; Ctrl-C interrupts the sleep.
    """
    target = os.fsdecode(target)
    record = check(target, stale_after=stale_after)
    if record is None:
        return False
    if on_wait is not None:
        on_wait(_waiting_message(target, record))
    while True:
        time.sleep(poll)
        if check(target, stale_after=stale_after) is None:
            return True
