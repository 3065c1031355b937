"""The queue server's fork server: starts each job's runner by forking, not by a new interpreter.

A fresh interpreter per job costs about 20 ms of start-up and imports; a fork of this process,
which imported the runner's modules once, costs about a millisecond (docs/cli.md, "Start-up").

Data flow and ownership:

- The server starts this process (``python -I -c ... main()``, argv: the fd of its end of a
  socket pair and the server's pid) at its first job, in a session of its own, stdin and stdout
  ``/dev/null``, stderr the server's. It dies with the server (a parent-death SIGKILL), and it
  ends when the server closes the socket or kills it. It holds nothing else.
- Requests (server -> here) and answers (here -> server) are ``marshal`` tuples behind a 4-byte
  big-endian length: ``(job, jobfile, cwd, env, stderr_path)`` -> ``("started", job, pid)`` or
  ``("refused", job, reason)``. One request at a time, answered in order.
- For a request this process opens the job's working directory and stderr log (a failure is the
  ``refused`` reason), then forks twice: the middle process forks the job's runner, puts it in a
  process group of its own, sends ``started`` and exits; this process reaps it at once (and
  answers ``refused`` if it failed), so it has no other children and needs no SIGCHLD handling;
  it writes nothing while the middle process may. The runner is then an orphan, which
  the kernel gives to the server (a child subreaper): the server waits for it, signals its group
  and reads its exit status as it would for a child it started itself.
- The runner waits until the server is its parent, asks for a parent-death SIGTERM (as a runner
  started by the server did), moves to the job's cwd, replaces its environment, makes stdin and
  stdout ``/dev/null`` and stderr the log, and runs ``seamless.shell.runner.run``; it leaves
  through ``os._exit`` on every path, never back into this loop.

Left as the server's environment: what Python fixed at this process's start (the file system
encoding, from the locale variables); the runner's imports read no environment variable.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import struct
import sys
import time

from seamless.cache.persistent import PersistentCache
from seamless.shell import execute, pipeline, runner

# The job runner's imports, done once here so that each forked runner starts with them: the
# pipeline, the cache a miss opens (sqlite3) and the command's process (subprocess; ctypes for
# the parent-death signal is loaded by main's own prctl call).
PRELOADED = (pipeline, PersistentCache, execute)

__all__ = ["main", "HEADER", "PRELOADED"]

HEADER = struct.Struct(">I")


def _read_exact(fd: int, n: int):
    """``n`` bytes from ``fd``; ``None`` at end of file."""
    data = bytearray()
    while len(data) < n:
        piece = os.read(fd, n - len(data))
        if not piece:
            return None
        data += piece
    return bytes(data)


def _send(fd: int, answer: tuple) -> None:
    body = marshal.dumps(answer)
    data = memoryview(HEADER.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def _runner(sock: int, middle: int, server: int, jobfile: str, cwd_fd: int, log_fd: int,
            env: dict, prctl) -> None:
    """The job's runner (in the forked grandchild); never returns."""
    status = 1
    try:
        os.close(sock)
        os.setpgid(0, 0)  # the middle process does it too: whoever comes first
        while os.getppid() == middle:  # until the kernel hands us to the server
            time.sleep(0.0001)
        prctl(execute.PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != server:  # the server is gone already
            os._exit(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log_fd, 2)
        for fd in (null, log_fd):
            os.close(fd)
        os.fchdir(cwd_fd)
        os.close(cwd_fd)
        os.environ.clear()
        os.environ.update(env)
        status = runner.run(jobfile)
    finally:
        os._exit(status)


def _start(sock: int, server: int, request: tuple, prctl):
    """Start a job's runner; the ``refused`` answer, or None when the middle process
    announced the runner itself."""
    job, jobfile, cwd, env, stderr_path = request
    try:
        cwd_fd = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            return ("refused", job, f"its working directory {cwd} is gone")
        return ("refused", job, f"cannot enter its working directory {cwd} ({e.strerror})")
    try:
        log_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o600)
    except OSError as e:
        os.close(cwd_fd)
        return ("refused", job, f"cannot open its log {stderr_path} ({e.strerror})")
    try:
        middle = os.fork()
    except OSError as e:
        middle = e
    if middle == 0:
        code = 1
        try:
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                _runner(sock, me, server, jobfile, cwd_fd, log_fd, env, prctl)
            with contextlib.suppress(OSError):  # the runner did it already, and may be gone
                os.setpgid(pid, pid)
            # Announced before this process ends, so before the server can see the runner as
            # its child: an answer is never lost with a fork server that dies meanwhile.
            _send(sock, ("started", job, pid))
            code = 0
        finally:
            os._exit(code)
    os.close(cwd_fd)
    os.close(log_fd)
    if isinstance(middle, OSError):
        return ("refused", job, f"cannot fork ({middle.strerror})")
    status = os.waitpid(middle, 0)[1]
    if status != 0:
        return ("refused", job, "cannot fork the job's runner (the middle process "
                                f"{os.waitstatus_to_exitcode(status)})")
    return None


def main() -> None:
    """``python -I -c ... main()`` with argv ``SOCKET_FD SERVER_PID``; ends by ``os._exit``."""
    sock, server = int(sys.argv[1]), int(sys.argv[2])
    prctl = execute.libc_prctl()
    prctl(execute.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server:
        os._exit(1)
    while True:
        header = _read_exact(sock, HEADER.size)
        if header is None:
            os._exit(0)
        body = _read_exact(sock, HEADER.unpack(header)[0])
        if body is None:
            os._exit(0)
        answer = _start(sock, server, marshal.loads(body), prctl)
        if answer is not None:
            _send(sock, answer)
