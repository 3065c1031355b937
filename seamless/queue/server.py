"""The ``seamless-queue`` server: one single-threaded ``selectors`` loop (docs/cli.md).

Who owns what, and who frees it:

- **Server files** (``location.server_files``): the lock file, held with an exclusive ``flock``
  from ``start`` until the process exits (the lock decides which server serves a directory); the
  listening socket (mode 0600, a stale one from a dead server is replaced); the info file (JSON:
  pid, host, dir, workers, started, socket). ``_cleanup`` removes all three on every way out:
  after a finish drain and after a signal. A SIGKILLed server leaves them; the next server takes
  the lock, finds the socket refusing and replaces it.
- **Connections**: accepted up to ``MAX_CONNECTIONS``; the peer's uid (``SO_PEERCRED``) must be
  ours before anything is read or written. Each has a ``FrameReader`` (at most one frame
  buffered) and an output buffer bounded by ``MAX_OUTPUT``. A frame must complete within
  ``FRAME_TIMEOUT_S`` of its first byte, and a client that is not waiting for an answer must
  send its next frame within ``FRAME_TIMEOUT_S``; a finish client waits as long as the drain
  takes. Bad frames get an ``error`` and a close.
- **Jobs**: ``jobs.JobTable`` decides; this module carries out its actions. A started job is a
  runner process (``seamless.shell.runner``) in the job's cwd and environment, in its own
  process group, with a parent-death signal. The fork server (``seamless.queue.zygote``,
  started at the first job, again at the next job after it died, killed and reaped when the
  server exits) forks it on request and answers with its pid, over a socket pair in the
  selector. This server is a child subreaper, so each runner becomes its child once forked: its
  end arrives as SIGCHLD through the wakeup fd and ``waitpid`` gives its status, without
  polling (an exit reaped before its pid was announced is kept until the announcement; other
  orphans that land here are reaped and forgotten). A request the fork server refuses, or
  cannot answer because it died, fails the job with the reason. The private job directory
  (``mkdtemp``) holds ``job-N.job`` (the ``ShellJob`` in ``marshal`` form, removed when the
  runner ends), ``job-N.job.outcome`` (hit or miss, written by the runner, read and removed
  here) and ``job-N.stderr`` (the runner's stderr, kept until the server exits); ``_cleanup``
  removes the directory. A job submitted with piped stdin names a file beside the socket
  (``<socket>.stdin-*``) that its submitter wrote; once the job is accepted it is ours: the
  runner reads it, ``_ended`` removes it, and ``_cleanup`` removes those of unfinished jobs;
  ``start`` removes those a SIGKILLed predecessor left.
- **Sidecars**: the submitter creates the ``.FUTURE`` sidecars of a job's targets with this
  server's pid and host; ``_adopt`` rewrites each with the job number, the heartbeat timer keeps
  them fresh every ``future.HEARTBEAT_S``, and they are removed when the job ends (its outputs
  are in place by then) and, for unfinished jobs, when the server stops. Foreign sidecars on a
  waiting job's inputs are polled every ``future.POLL_S``.
- **Signals**: SIGTERM, SIGINT, SIGHUP and SIGCHLD reach the loop through
  ``signal.set_wakeup_fd``. On the first three the
  server stops accepting, sends SIGTERM to each running job's process group (SIGKILL after
  ``STOP_GRACE_S``), tells waiting finish clients, cleans up, and exits 128 + signal.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import tempfile
import time

from seamless.pool.supervise import signal_name
from seamless.queue import location, wire
from seamless.queue.jobs import (
    CACHED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    Drained,
    End,
    JobSpec,
    JobTable,
    Start,
    describe_failure,
)
from seamless.shell import future
from seamless.shell.execute import libc_prctl

__all__ = ["Server", "ServerError", "FRAME_TIMEOUT_S", "MAX_CONNECTIONS", "STOP_GRACE_S"]

FRAME_TIMEOUT_S = wire.FRAME_TIMEOUT_S
MAX_CONNECTIONS = 256
MAX_OUTPUT = 8 << 20  # bytes queued for one client that does not read
STOP_GRACE_S = 5.0
STDERR_LINES = 20
_TAIL_BYTES = 16 * 1024
_COMMAND_LISTED = 500  # characters of a command in status and finished answers
_PR_SET_CHILD_SUBREAPER = 36
_ZYGOTE_HEADER = struct.Struct(">I")  # frames to and from the fork server (zygote.HEADER)
_SUFFIX = ".FUTURE"


class ServerError(Exception):
    """The server cannot start: the text names what is in the way and the fix."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Conn:
    """One client connection (see the module docstring for its limits)."""

    __slots__ = ("sock", "reader", "out", "deadline", "closing", "finishing", "events")

    def __init__(self, sock, now: float):
        self.sock = sock
        self.reader = wire.FrameReader()
        self.out = bytearray()
        self.deadline = now + FRAME_TIMEOUT_S
        self.closing = False  # answer sent, close once it is flushed
        self.finishing = False  # a finish client: answered when the drain ends
        self.events = selectors.EVENT_READ


class _Running:
    """A job's runner process (``pid`` None until the fork server announced it) and files."""

    __slots__ = ("job", "pid", "jobfile", "stderr_path")

    def __init__(self, job, jobfile, stderr_path):
        self.job, self.pid, self.jobfile, self.stderr_path = job, None, jobfile, stderr_path


class _Zygote:
    """The fork server process and this server's end of its socket pair."""

    __slots__ = ("pid", "sock", "buffer")

    def __init__(self, pid, sock):
        self.pid, self.sock, self.buffer = pid, sock, bytearray()


def _zygote_argv(fd: int, server: int) -> list:
    """The fork server's interpreter, isolated from the submitters' ``PYTHON*`` variables
    (``-I``) but importing this very seamless."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import sys;sys.path.insert(0,{root!r});"
            "from seamless.queue.zygote import main;main()")
    return [sys.executable, "-I", "-c", code, str(fd), str(server)]


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"


def _text_list(message: dict, field: str, absolute: bool = False) -> list:
    value = message.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {field!r} must be a list of strings")
    if absolute and not all(os.path.isabs(v) for v in value):
        raise ValueError(f"field {field!r} must hold absolute paths")
    return [os.path.normpath(v) if absolute else v for v in value]


def _tail(path: str) -> str:
    """The last ``STDERR_LINES`` lines of a job's stderr log (non-UTF-8 as surrogate escapes)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "surrogateescape").rstrip("\n").split("\n")
    return "\n".join(lines[-STDERR_LINES:]) if data else ""


class Server:
    """One queue server; ``start()`` then ``serve()`` (see the module docstring)."""

    def __init__(self, files: location.ServerFiles, workers: int, log, quiet: bool = False):
        self.files = files
        self.workers = workers
        self.quiet = quiet
        self._log_line = log  # log(message, is_error)
        self.table = JobTable(workers)
        self.pid = os.getpid()
        self.host = os.uname().nodename
        self.sel = None
        self.listener = None
        self.lock_fd = None
        self.jobdir = None
        self.conns = {}  # fd -> _Conn
        self.running = {}  # job id -> _Running
        self.pids = {}  # runner pid -> _Running
        self.early = {}  # pid -> wait status, reaped while a runner's pid was not yet known
        self.zygote = None
        self.sidecars = {}  # job id -> [future.Sidecar]
        self.owned = {}  # absolute sidecar path -> job id, for unfinished jobs
        self.stdin_files = {}  # job id -> the file holding its piped stdin
        self.stop_signal = None
        self.kill_at = None
        self.exit_code = None
        self._wakeup = None
        self._old_handlers = {}
        self._next_heartbeat = None
        self._next_poll = None
        self._prctl = libc_prctl()
        self._cleaned = False

    # -- logging ------------------------------------------------------------------------

    def info(self, message: str) -> None:
        if not self.quiet:
            self._log_line(message, False)

    def error(self, message: str) -> None:
        self._log_line(message, True)

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the directory's lock, listen, write the info file; ``ServerError`` if not."""
        try:
            location.check_socket_parent(self.files, create=True)
        except location.QueueLocationError as e:
            raise ServerError(str(e)) from None
        self._lock()
        try:
            self._remove_stale_stdin_files()
            self._listen()
            self.jobdir = tempfile.mkdtemp(prefix="seamless-queue-")
            self._write_info()
        except BaseException:
            self._cleanup()
            raise

    def _lock(self) -> None:
        import fcntl

        try:
            fd = os.open(self.files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as e:
            raise ServerError(f"cannot open the lock file {self.files.lock} "
                              f"({e.strerror or e}); remove it, or set SEAMLESS_QUEUE_SOCKET") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            record = location.read_info(self.files.info) or {}
            who = f"pid {record['pid']}" if "pid" in record else "another process"
            raise ServerError(f"another seamless-queue ({who}) already serves "
                              f"{record.get('dir', self.files.directory)} on "
                              f"{self.files.socket}; submit to it, or stop it with "
                              "seamless-queue-finish") from None
        self.lock_fd = fd

    def _listen(self) -> None:
        path = self.files.socket
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ServerError(f"{path} exists and is not a socket; remove it, or set "
                                  "SEAMLESS_QUEUE_SOCKET")
            try:
                probe = location.connect(path, timeout=1.0)
            except OSError:
                os.unlink(path)  # stale: its server is gone (we hold the lock)
            else:
                probe.close()
                raise ServerError(f"a process that does not hold {self.files.lock} listens on "
                                  f"{path}; stop it, or set SEAMLESS_QUEUE_SOCKET")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            location.bind(sock, path)
            os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
        except OSError as e:
            sock.close()
            raise ServerError(f"cannot listen on {path} ({e.strerror or e}); set "
                              "SEAMLESS_QUEUE_SOCKET to a path in a private directory") from None
        finally:
            os.umask(old)
        sock.setblocking(False)
        self.listener = sock

    def _write_info(self) -> None:
        record = {"pid": self.pid, "host": self.host, "dir": self.files.directory,
                  "workers": self.workers, "started": time.time(), "socket": self.files.socket}
        temp = f"{self.files.info}.{self.pid}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
        os.replace(temp, self.files.info)

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until a finish drain or a signal; the exit status."""
        from seamless.pool.supervise import raise_nofile_limit

        raise_nofile_limit()
        if self._prctl is None or self._prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise ServerError("cannot become a child subreaper (prctl); seamless-queue needs "
                              "Linux 3.4 or later")
        self.sel = selectors.DefaultSelector()
        try:
            self._install_signals()
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
            now = time.monotonic()
            self._next_heartbeat = now + future.HEARTBEAT_S
            self.info(f"serving {self.files.directory} on {self.files.socket}, "
                      f"{_plural(self.workers, 'worker')}")
            while self.exit_code is None:
                for key, mask in self.sel.select(self._timeout(time.monotonic())):
                    key.data(mask)
                    if self.exit_code is not None:
                        break
                self._timers(time.monotonic())
            return self.exit_code
        finally:
            self._shutdown()

    def _timeout(self, now: float) -> float:
        due = [self._next_heartbeat]
        if self._next_poll is not None:
            due.append(self._next_poll)
        if self.kill_at is not None:
            due.append(self.kill_at)
        due.extend(c.deadline for c in self.conns.values() if c.deadline is not None)
        return max(0.0, min(due) - now)

    def _timers(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.deadline is not None
                     and c.deadline <= now]:
            if conn.closing:
                self._close(conn)
            else:
                what = "a frame" if conn.reader.partial else "a request"
                self._refuse(conn, f"no complete frame within {FRAME_TIMEOUT_S:g} s "
                                   f"(waiting for {what}); closing the connection", now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + future.HEARTBEAT_S
            for sidecars in self.sidecars.values():
                for sidecar in sidecars:
                    try:
                        sidecar.touch()
                    except OSError as e:
                        self.error(f"cannot refresh {sidecar.path} ({e.strerror or e})")
        if self._next_poll is not None and now >= self._next_poll:
            self._poll_foreign(now)
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._signal_jobs(signal.SIGKILL)

    # -- signals --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (r, w)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            self._old_handlers[signum] = signal.signal(signum, _note_signal)
        self.sel.register(r, selectors.EVENT_READ, self._signalled)

    def _signalled(self, _mask) -> None:
        try:
            data = os.read(self._wakeup[0], 64)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._stop(signum)
        self._reap()  # also when the pipe overflowed and a SIGCHLD byte was dropped

    def _stop(self, signum: int) -> None:
        """Stop on a signal: no new work, running jobs' groups get SIGTERM (SIGKILL after the
        grace period, or at once on a second signal)."""
        if self.stop_signal is not None:
            self._signal_jobs(signal.SIGKILL)
            return
        self.stop_signal = signum
        self.table.stop()
        self.error(f"stopping on {signal_name(signum)}: "
                   f"{_plural(len(self.running), 'running job')} stopped, "
                   f"{self._not_run()} not run")
        self._close_listener()
        self._signal_jobs(signal.SIGTERM)
        self.kill_at = time.monotonic() + STOP_GRACE_S
        self._maybe_stopped()

    def _not_run(self) -> str:
        n = sum(j.state in (WAITING, QUEUED) for j in self.table.jobs.values())
        return _plural(n, "job")

    def _signal_jobs(self, signum: int) -> None:
        for run in self.running.values():
            if run.pid is not None:
                self._signal_group(run.pid, signum)

    @staticmethod
    def _signal_group(pid: int, signum: int) -> None:
        """Signal a runner's process group; it is our unreaped child, so the id is not reused."""
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            return  # already gone; its SIGCHLD tells us

    def _maybe_stopped(self) -> None:
        if self.stop_signal is None or self.running:
            return
        name = signal_name(self.stop_signal)
        self._cleanup()
        for conn in list(self.conns.values()):
            if conn.finishing:
                self._queue(conn, {"type": "error",
                                   "message": f"server stopped by {name}; {self._not_run()} "
                                              "not run"})
        self.exit_code = 128 + self.stop_signal

    # -- connections ----------------------------------------------------------------------

    def _accept(self, _mask) -> None:
        now = time.monotonic()
        while self.listener is not None:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self.error(f"cannot accept a connection ({e.strerror or e})")
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            try:
                pid, uid, _gid = struct.unpack(
                    "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            except OSError:
                sock.close()
                continue
            if uid != os.getuid():
                # Said before the close: once the peer sees it, the log already holds why.
                self.error(f"refused a connection from uid {uid} (pid {pid}): only uid "
                           f"{os.getuid()} may use this server")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, conn.events, lambda mask, c=conn: self._ready(c, mask))
            self._queue(conn, {"type": "hello", "v": wire.PROTOCOL_VERSION, "pid": self.pid,
                               "host": self.host, "dir": self.files.directory,
                               "workers": self.workers, "version": _version()})

    def _ready(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and conn.sock.fileno() in self.conns:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        now = time.monotonic()
        fresh = not conn.reader.partial
        try:
            messages = conn.reader.feed(data)
        except wire.FrameError as e:
            self._refuse(conn, f"bad frame: {e}", now)
            return
        for message in messages:
            self._handle(conn, message, now)
            if conn.closing or conn.sock.fileno() not in self.conns:
                return
        if conn.finishing:
            conn.deadline = None
        elif fresh or messages or not conn.reader.partial:
            conn.deadline = now + FRAME_TIMEOUT_S

    def _queue(self, conn: _Conn, message: dict) -> None:
        try:
            data = wire.encode(message)
        except wire.FrameError as e:
            data = wire.encode({"type": "error", "message": f"the answer is too large ({e})"})
        if len(conn.out) + len(data) > MAX_OUTPUT:
            self._close(conn)  # it does not read what we send
            return
        conn.out += data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                break
            except OSError:
                self._close(conn)
                return
            del conn.out[:sent]
        if conn.closing and not conn.out:
            self._close(conn)
            return
        events = selectors.EVENT_WRITE if conn.out else 0
        if not conn.closing:
            events |= selectors.EVENT_READ
        if events and events != conn.events:
            conn.events = events
            self.sel.modify(conn.sock, events, lambda mask, c=conn: self._ready(c, mask))

    def _refuse(self, conn: _Conn, message: str, now: float, code=None) -> None:
        """Answer ``error`` and close once it is sent (bounded by the frame timeout)."""
        answer = {"type": "error", "message": message}
        if code is not None:
            answer["code"] = code
        conn.closing = True
        conn.finishing = False
        conn.deadline = now + FRAME_TIMEOUT_S
        self._queue(conn, answer)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def _close_listener(self) -> None:
        if self.listener is not None:
            if self.sel is not None:
                self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None

    # -- requests -------------------------------------------------------------------------

    def _handle(self, conn: _Conn, message: dict, now: float) -> None:
        kind = message["type"]
        if kind == "submit":
            self._submit(conn, message, now)
        elif kind == "record":
            self._record(conn, message, now)
        elif kind == "status":
            self._queue(conn, {"type": "status", "accepting": self._accepting(),
                               "workers": self.workers, "jobs": self._job_list()})
        elif kind == "finish":
            conn.finishing = True
            conn.deadline = None
            self._carry_out(self.table.finish(now), now)
        else:
            self._refuse(conn, f"unknown message type {kind!r}", now)

    def _accepting(self) -> bool:
        return self.table.accepting and self.stop_signal is None

    def _submit(self, conn: _Conn, message: dict, now: float) -> None:
        if not self._accepting():
            self._refuse(conn, "server is finishing; submit after it stopped, or start a new "
                               "seamless-queue", now, code=1)
            return
        try:
            spec, futures = self._parse_submit(message)
        except ValueError as e:
            self._refuse(conn, f"bad job: {e}", now, code=2)
            return
        job, actions = self.table.submit(spec, now)
        if spec.payload[0]["stdin_path"] is not None:
            self.stdin_files[job.id] = spec.payload[0]["stdin_path"]
        self._adopt(job, futures, message.get("transformation"))
        self._queue(conn, {"type": "accepted", "job": job.id})
        if job.foreign and self._next_poll is None:
            self._next_poll = now + future.POLL_S
        self._carry_out(actions, now)

    def _parse_submit(self, message: dict):
        from seamless.shell.job import JobFormatError, ShellJob

        command, cwd, env = message.get("command"), message.get("cwd"), message.get("env")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise ValueError("field 'cwd' must be an absolute path")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("field 'env' must map strings to strings")
        inputs = _text_list(message, "inputs", absolute=True)
        outputs = _text_list(message, "outputs", absolute=True)
        futures = _text_list(message, "futures", absolute=True)
        bad = [f for f in futures if not f.endswith(_SUFFIX)]
        if bad:
            raise ValueError(f"{bad[0]} in 'futures' is not a .FUTURE sidecar")
        transformation = message.get("transformation")
        if transformation is not None and not isinstance(transformation, str):
            raise ValueError("field 'transformation' must be a string or null")
        try:
            job = ShellJob.from_wire({
                "command": command, "inputs": _text_list(message, "explicit_inputs"),
                "captures": _text_list(message, "captures"), "vars": message.get("vars", {}),
                "sandbox": message.get("sandbox", True), "use_cache": message.get("cache", True),
                "stdout_path": message.get("stdout_path"), "held_futures": outputs,
                "stdin_path": self._stdin_file(message.get("stdin_path")),
                # The job's stderr tail is for the command's own lines and real errors.
                "quiet": True})
        except JobFormatError as e:
            raise ValueError(str(e)) from None
        self._refuse_own_future(job, cwd, outputs)
        key = transformation
        if key is None:
            key = ("unknown", cwd, job.command, tuple(sorted(job.vars.items())), job.sandbox,
                   tuple(job.captures), tuple(job.inputs))
        foreign = []
        for path in inputs:
            side = future.sidecar_path(path)
            if side not in self.owned and path not in outputs and os.path.lexists(side):
                foreign.append(path)
        payload = (job.to_wire(), cwd, env)
        return JobSpec(job.command, cwd, tuple(inputs), tuple(outputs), tuple(foreign), key,
                       payload), futures

    def _stdin_file(self, path):
        """A submitted job's stdin file: ``None``, or a regular file beside our socket named by
        ``queued_file_prefix`` (never a path elsewhere: we remove it when the job ends)."""
        from seamless.shell.stdin import queued_file_prefix

        if path is None:
            return None
        prefix = queued_file_prefix(self.files.socket)
        if not (isinstance(path, str) and path.startswith(prefix) and "/" not in path[len(prefix):]
                and os.path.isfile(path) and not os.path.islink(path)):
            raise ValueError(f"field 'stdin_path' must be a file {prefix}*, not {path!r}")
        return path

    def _remove_stale_stdin_files(self) -> None:
        """Stdin files left by a server of this directory that was killed outright (no client
        can have written one for us yet: we do not listen yet)."""
        from seamless.shell.stdin import queued_file_prefix

        directory, stem = os.path.split(queued_file_prefix(self.files.socket))
        for name in os.listdir(directory):
            if name.startswith(stem):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError as e:
                    self.error(f"cannot remove {name} in {directory} ({e.strerror or e})")

    def _remove_stdin_file(self, job_id: int) -> None:
        path = self.stdin_files.pop(job_id, None)
        if path is not None:
            try:
                os.unlink(path)
            except OSError as e:
                self.error(f"cannot remove {path} ({e.strerror or e})")

    @staticmethod
    def _refuse_own_future(job, cwd: str, outputs: list) -> None:
        """A job that names one of its own outputs as ``X.FUTURE`` would wait for itself."""
        from seamless.shell import words

        try:
            split = words.split_command(job.command)
        except words.CommandSyntaxError:
            return  # the runner reports it as seamless-run would
        for word in (*split.words, *split.inputs, *split.appends):
            text = word.text
            if not word.opaque and text.endswith(_SUFFIX) and len(text) > len(_SUFFIX):
                target = os.path.normpath(os.path.join(cwd, text[:-len(_SUFFIX)]))
                if target in outputs:
                    raise ValueError(f"{text} names an output of this same job; remove "
                                     "the .FUTURE suffix or write another file")

    def _adopt(self, job, futures: list, transformation) -> None:
        """Take over the sidecars the submitter created for this server: record the job
        number, keep them fresh, remove them when the job ends."""
        adopted = []
        for path in futures:
            target = path[:-len(_SUFFIX)]
            try:
                with open(path, "rb") as f:
                    record = json.loads(f.read(4096))
            except (OSError, ValueError):
                continue  # gone, or replaced by another writer: not ours to keep
            if not (isinstance(record, dict) and record.get("pid") == self.pid
                    and record.get("host") == self.host):
                continue
            try:
                sidecar = future.Sidecar.create(target, transformation=transformation,
                                                job=job.id)
            except OSError as e:
                self.error(f"job {job.id}: cannot update {path} ({e.strerror or e})")
                continue
            adopted.append(sidecar)
            self.owned[sidecar.path] = job.id
        self.sidecars[job.id] = adopted

    def _record(self, conn: _Conn, message: dict, now: float) -> None:
        command, cwd = message.get("command"), message.get("cwd")
        if not isinstance(command, str) or not isinstance(cwd, str):
            self._refuse(conn, "bad record: 'command' and 'cwd' must be strings", now, code=2)
            return
        if not self._accepting():
            self._refuse(conn, "server is finishing; start a new seamless-queue", now, code=1)
            return
        job = self.table.record(command, cwd, now)
        self._queue(conn, {"type": "accepted", "job": job.id})
        self.info(f"job {job.id} cached (completed by its submitter): {command}")

    def _job_list(self) -> list:
        listed = []
        for job in self.table.jobs.values():
            seconds = job.seconds
            if seconds is None and job.state == RUNNING:
                seconds = time.monotonic() - job.started
            listed.append({"job": job.id, "state": job.state, "exit": job.exit,
                           "signal": job.signal,
                           "seconds": None if seconds is None else round(seconds, 3),
                           "command": job.command[:_COMMAND_LISTED]})
        return listed

    def _failed_list(self) -> list:
        return [{"job": j.id, "command": j.command[:_COMMAND_LISTED], "exit": j.exit,
                 "signal": j.signal, "stderr_tail": j.stderr_tail or j.reason or ""}
                for j in self.table.jobs.values() if j.state == FAILED]

    # -- jobs -----------------------------------------------------------------------------

    def _carry_out(self, actions: list, now: float) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._launch(action.job, now)
            elif isinstance(action, End):
                self._ended(action.job)
            elif isinstance(action, Drained):
                self._drained()

    def _launch(self, job, now: float) -> None:
        wire_job, cwd, env = job.payload
        held = set(wire_job["held_futures"])
        # Sidecars of this server's later jobs name outputs this job must not wait for: it
        # reads its inputs as they are now (it depends only on jobs submitted before it).
        held.update(p for p in job.inputs if future.sidecar_path(p) in self.owned)
        wire_job = dict(wire_job, held_futures=sorted(held))
        jobfile = os.path.join(self.jobdir, f"job-{job.id}.job")
        stderr_path = os.path.join(self.jobdir, f"job-{job.id}.stderr")
        try:
            with open(jobfile, "wb") as f:
                f.write(marshal.dumps(wire_job))
            zygote = self._zygote()
        except OSError as e:
            self._start_failed(job, jobfile, e.strerror or str(e), now)
            return
        self.running[job.id] = _Running(job, jobfile, stderr_path)
        body = marshal.dumps((job.id, jobfile, cwd, env, stderr_path))
        try:
            zygote.sock.sendall(_ZYGOTE_HEADER.pack(len(body)) + body)
        except OSError as e:
            self._zygote_lost(f"does not take requests ({e.strerror or e})")
            return
        self.info(f"job {job.id} started: {job.command}")

    def _start_failed(self, job, jobfile: str, what: str, now: float) -> None:
        self.running.pop(job.id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(jobfile)
        self.error(f"job {job.id} cannot start: {what}")
        self._carry_out(self.table.start_failed(job, f"cannot start: {what}", now), now)

    def _zygote(self) -> _Zygote:
        """The fork server, started now if there is none (at the first job, after a death)."""
        if self.zygote is not None:
            return self.zygote
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.set_inheritable(theirs.fileno(), True)
            pid = os.posix_spawn(
                sys.executable, _zygote_argv(theirs.fileno(), self.pid), os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
                setsid=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(FRAME_TIMEOUT_S)  # for sending; it is read only when readable
        self.zygote = _Zygote(pid, ours)
        self.sel.register(ours, selectors.EVENT_READ, self._from_zygote)
        return self.zygote

    def _from_zygote(self, _mask) -> None:
        try:
            data = self.zygote.sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # it closes its end only by ending
            self._zygote_lost("ended")
            return
        self.zygote.buffer += data
        self._answers(self.zygote.buffer)
        self._maybe_stopped()

    def _answers(self, buffer: bytearray) -> None:
        """Carry out the complete answers in ``buffer`` and remove them from it."""
        size = _ZYGOTE_HEADER.size
        while len(buffer) >= size:
            length = _ZYGOTE_HEADER.unpack_from(buffer)[0]
            if len(buffer) < size + length:
                return
            answer = marshal.loads(bytes(buffer[size:size + length]))
            del buffer[:size + length]
            self._answered(*answer)

    def _answered(self, kind: str, job_id: int, detail) -> None:
        run = self.running[job_id]
        now = time.monotonic()
        if kind == "refused":
            self._start_failed(run.job, run.jobfile, detail, now)
            return
        run.pid = detail
        self.pids[detail] = run
        if detail in self.early:
            self._exited(run, self.early.pop(detail))
        elif self.stop_signal is not None:
            self._signal_group(detail, signal.SIGTERM)
        self._forget_orphans()

    def _forget_orphans(self) -> None:
        """With no start unannounced, the early exits left were orphans of the jobs' commands
        (kept longer, a reused pid could be taken for a new runner's)."""
        if not any(r.pid is None for r in self.running.values()):
            self.early.clear()

    def _zygote_lost(self, how: str, status=None) -> None:
        """The fork server died or broke: the runners it announced before it ended are ours
        and run on; the others cannot start. The next job starts a new fork server."""
        zygote, self.zygote = self.zygote, None
        self.sel.unregister(zygote.sock)
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(zygote.pid, signal.SIGKILL)  # our unreaped child: the pid is its own
            status = os.waitpid(zygote.pid, 0)[1]
        self._last_answers(zygote)
        what = f"the job fork server (pid {zygote.pid}) {how} ({_describe_status(status)})"
        self.error(f"{what}; a new one starts with the next job")
        now = time.monotonic()
        for run in [r for r in self.running.values() if r.pid is None]:
            self._start_failed(run.job, run.jobfile, what, now)
        self._forget_orphans()
        self._maybe_stopped()

    def _last_answers(self, zygote: _Zygote) -> None:
        """Carry out what an ended fork server wrote: all there, then the end of the stream
        (or ECONNRESET when it died with a request unread)."""
        with zygote.sock:
            while True:
                try:
                    data = zygote.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                zygote.buffer += data
        self._answers(zygote.buffer)

    def _reap(self) -> None:
        """Collect every ended child: runners, the fork server, orphans given to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.pids.get(pid)
            if run is not None:
                self._exited(run, status)
            elif self.zygote is not None and pid == self.zygote.pid:
                self._zygote_lost("ended", status)
            elif any(r.pid is None for r in self.running.values()):
                self.early[pid] = status

    def _exited(self, run: _Running, status: int) -> None:
        from seamless.shell.runner import read_outcome

        job = run.job
        del self.running[job.id]
        del self.pids[run.pid]
        hit, _checksum = read_outcome(run.jobfile)
        try:
            os.unlink(run.jobfile)
        except OSError as e:
            self.error(f"cannot remove {run.jobfile} ({e.strerror or e})")
        code = os.waitstatus_to_exitcode(status)
        code, sig = (code, None) if code >= 0 else (None, -code)
        if code != 0:
            job.stderr_tail = _tail(run.stderr_path)
        now = time.monotonic()
        self._carry_out(self.table.exited(job, code, sig, hit, now), now)
        self._maybe_stopped()

    def _release_sidecars(self, job_id: int) -> None:
        for sidecar in self.sidecars.pop(job_id, ()):
            self.owned.pop(sidecar.path, None)
            try:
                sidecar.remove()
            except OSError as e:
                self.error(f"cannot remove {sidecar.path} ({e.strerror or e})")

    def _ended(self, job) -> None:
        self._release_sidecars(job.id)
        self._remove_stdin_file(job.id)
        if job.state == DONE:
            self.info(f"job {job.id} done in {job.seconds:.2f} s")
        elif job.state == CACHED:
            self.info(f"job {job.id} cached")
        elif job.exit is None and job.signal is None:
            self.info(f"job {job.id} failed: {job.reason}")
        else:
            lines = [f"job {job.id} failed ({describe_failure(job)})"]
            if job.stderr_tail:
                lines.append(job.stderr_tail)
            self.info("\n".join(lines))

    def _poll_foreign(self, now: float) -> None:
        for job in self.table.waiting_on_foreign():
            for target in sorted(job.foreign):
                try:
                    record = future.check(target)
                except future.StaleFuture as e:
                    self._carry_out(self.table.foreign_stale(job, str(e), now), now)
                    break
                except OSError as e:
                    self._carry_out(self.table.foreign_stale(
                        job, f"cannot read {future.sidecar_path(target)} ({e.strerror or e})",
                        now), now)
                    break
                if record is None:
                    self._carry_out(self.table.foreign_gone(job, target, now), now)
        self._next_poll = now + future.POLL_S if self.table.waiting_on_foreign() else None

    def _drained(self) -> None:
        """Every job ended after a finish: answer the finish clients, clean up, exit 0."""
        answer = {"type": "finished", "jobs": self._job_list(), "failed": self._failed_list()}
        self._cleanup()
        for conn in list(self.conns.values()):
            if conn.finishing:
                self._queue(conn, answer)
        self.exit_code = 0

    # -- the end --------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Remove sidecars of unfinished jobs, the job directory, socket, info and lock files,
        so a new server can start at once; idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        for job_id in list(self.sidecars):
            self._release_sidecars(job_id)
        for job_id in list(self.stdin_files):
            self._remove_stdin_file(job_id)
        self._close_listener()
        if self.lock_fd is not None:
            for path in (self.files.socket, self.files.info, self.files.lock):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    self.error(f"cannot remove {path} ({e.strerror or e})")
        if self.jobdir is not None:
            import shutil

            shutil.rmtree(self.jobdir, ignore_errors=True)

    def _shutdown(self) -> None:
        """Deliver the last answers (bounded), close every connection and descriptor."""
        for run in self.running.values():  # only after an unexpected error in the loop
            if run.pid is not None:
                self._signal_group(run.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(run.pid, 0)
        if self.zygote is not None:  # idle: the jobs ended
            self.sel.unregister(self.zygote.sock)
            self.zygote.sock.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.zygote.pid, signal.SIGKILL)
            os.waitpid(self.zygote.pid, 0)
            self.zygote = None
        self.running.clear()
        self._cleanup()
        deadline = time.monotonic() + STOP_GRACE_S
        for conn in list(self.conns.values()):
            if conn.out:
                # A client that went away or does not read gets nothing more.
                with contextlib.suppress(OSError):
                    conn.sock.setblocking(True)
                    conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
                    conn.sock.sendall(conn.out)
            self._close(conn)
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self.sel.unregister(self._wakeup[0])
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        if self.sel is not None:
            self.sel.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _note_signal(_signum, _frame):
    """The handler only makes the signal wake the loop (through the wakeup fd)."""


def _version() -> str:
    from seamless import __version__

    return __version__
