"""Clients of the queue server: ``seamless-run --qsubmit`` and ``seamless-queue-finish``
(docs/cli.md, "Queue").

Data flow:

- ``connect()`` finds the server (``location.find_server``: ``SEAMLESS_QUEUE_SOCKET``, the server
  of this directory or a parent, else the user's only one), connects to its socket, reads its
  ``hello`` and checks the protocol version. A server that is starting (its lock is held, or its
  process runs in this directory but has not taken the lock yet) is waited for, up to
  ``STARTING_WAIT_S``; with no server the error comes at once. The ``Connection`` carries one
  request (``submit``, ``record``, ``status`` or ``finish``) and its answer; its owner closes it
  (``with``).
- ``submit_job(job)`` is the submitter: connect (no server: nothing is created), plan the job
  (``pipeline.plan_submission``: targets, candidate inputs, identity, cache hit), then on a hit
  ``record`` it; otherwise create each target's ``.FUTURE`` with the server as owner (pid and
  host from ``hello``), ``submit``, and await ``accepted``. Piped stdin (bytes the caller read)
  counts in the plan's identity; a job that is not a hit takes it along as a file beside the
  server's socket (``<socket>.stdin-<pid>-<random>``, mode 0600): the frame carries its path,
  never the bytes (frames are capped), and the server feeds it to the job's runner.

Ownership: a client owns its sockets (closed before it returns). The sidecars ``submit_job``
creates are its own until the server accepts the job: on a refusal, a lost server, an error or a
signal (``KeyboardInterrupt``, or the caller's handler raising) they are removed in a
``finally``. Once accepted they belong to the server, whose pid and host they name; it refreshes
and removes them. The stdin file likewise: the submitter removes it unless the server accepted
the job; then the server removes it when the job ends (or when it stops).

Library code: nothing here prints. Failures are ``QueueError``s whose text names the server,
socket or job and the fix; ``Refused`` carries the server's exit code for the job (2 for a bad
job, else 1).
"""

from __future__ import annotations

import os
import time

from seamless.errors import QueueError
from seamless.queue import location, wire
from seamless.shell.outputs import unlink_quietly

__all__ = [
    "STARTING_WAIT_S", "ANSWER_TIMEOUT_S", "Refused", "ServerGone", "ProtocolError",
    "Connection", "connect", "Submission", "submit_job",
]

STARTING_WAIT_S = 10.0
ANSWER_TIMEOUT_S = 60.0  # submit, record, status: a select loop answers in milliseconds
_RETRY_S = 0.05
# A connection opened before planning is reused if planning took less than this.
_REUSE_WITHIN_S = wire.FRAME_TIMEOUT_S / 2


class Refused(QueueError):
    """The server answered ``error``: ``code`` is the exit status it asks for (2: bad job)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code if code in (1, 2) else 1


class ServerGone(QueueError):
    """The server closed the connection (or died) before answering."""


class ProtocolError(QueueError):
    """The server sent something this client does not understand."""


def _server_name(files, hello=None) -> str:
    pid = f" (pid {hello['pid']})" if hello else ""
    return f"the seamless-queue server{pid} for {files.directory}"


class Connection:
    """One connection to a server, after its ``hello``: ``pid``, ``host``, ``workers``."""

    def __init__(self, sock, files, hello: dict):
        self.sock = sock
        self.files = files
        self.hello = hello
        self.pid = hello["pid"]
        self.host = hello["host"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        self.sock.close()

    def request(self, message: dict, expect: str, timeout=ANSWER_TIMEOUT_S) -> dict:
        """Send ``message`` and return the answer of type ``expect``; ``timeout=None`` waits as
        long as the server takes (finish)."""
        who = _server_name(self.files, self.hello)
        try:
            wire.send(self.sock, message)
        except wire.FrameError as e:
            raise QueueError(f"cannot send the {message['type']!r} request: {e}") from None
        except OSError as e:
            raise ServerGone(f"{who} closed the connection ({e.strerror or e})") from None
        answer = _receive(self.sock, who, timeout)
        if answer["type"] == "error":
            raise Refused(f"{who} refused the {message['type']!r} request: "
                          f"{answer.get('message', '(no message)')}", answer.get("code", 1))
        if answer["type"] != expect:
            raise ProtocolError(f"{who} answered a {message['type']!r} request with a "
                                f"{answer['type']!r} message (expected {expect!r}); is it "
                                "another version? restart seamless-queue after upgrading")
        return answer


def _receive(sock, who: str, timeout) -> dict:
    try:
        return wire.receive(sock, timeout)
    except wire.FrameError as e:
        raise ProtocolError(f"{who} sent a malformed message ({e})") from None
    except TimeoutError:
        raise QueueError(f"{who} did not answer within {timeout:.0f} s; check its log "
                         "(seamless-queue's stderr)") from None
    except OSError as e:  # ConnectionError: closed; ECONNRESET: died
        raise ServerGone(f"{who} closed the connection before answering "
                         f"({e.strerror or e})") from None


def _no_server(cwd: str, files) -> QueueError:
    return QueueError(f"no seamless-queue server for {cwd} (socket {files.socket}); start one "
                      "with `seamless-queue &`")


def _starting_servers(cwd: str) -> list:
    """Pids of this user's ``seamless-queue`` processes whose working directory is ``cwd`` or a
    parent of it: servers just started (``seamless-queue &``) that may not hold their lock yet.

    Read from ``/proc`` only when no server was found, so the common path costs nothing.
    """
    found = []
    uid = os.getuid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read(4096).split(b"\0")[:3]
            if not any(os.path.basename(a) == b"seamless-queue" for a in argv) and \
                    b"seamless.cli.queue_cmd" not in argv:
                continue
            where = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if cwd == where or cwd.startswith(where.rstrip("/") + "/"):
            found.append(int(entry))
    return found


def _find(cwd: str, deadline: float):
    """The server's files; waits while a ``seamless-queue`` process of this directory has not
    yet taken its lock."""
    while True:
        try:
            return location.find_server(cwd)
        except location.QueueLocationError as e:
            if time.monotonic() >= deadline or not _starting_servers(cwd):
                raise QueueError(str(e)) from None
        time.sleep(_RETRY_S)


def _check_parent(files) -> None:
    """Refuse a socket in a directory someone else could have planted (docs/cli.md, "Queue");
    a missing directory simply means no server."""
    if os.path.isdir(os.path.dirname(files.socket)):
        try:
            location.check_socket_parent(files, create=False)
        except location.QueueLocationError as e:
            raise QueueError(str(e)) from None


def _open_socket(cwd: str, files, deadline: float):
    """A socket connected to the server; waits while the server is starting."""
    while True:
        try:
            return location.connect(files.socket, timeout=max(1.0, deadline - time.monotonic()))
        except location.QueueLocationError as e:
            raise QueueError(str(e)) from None
        except OSError as e:
            starting = location.lock_is_held(files.lock) or _starting_servers(cwd)
            if not starting:
                raise _no_server(cwd, files) from None
            if time.monotonic() >= deadline:
                raise QueueError(f"{_server_name(files)} is starting but did not listen on "
                                 f"{files.socket} within {STARTING_WAIT_S:.0f} s "
                                 f"({e.strerror or e}); check seamless-queue's stderr") from None
        time.sleep(_RETRY_S)


def _check_hello(hello: dict, files) -> None:
    who = _server_name(files)
    if hello["type"] == "error":
        raise Refused(f"{who} refused the connection: {hello.get('message', '(no message)')}")
    if hello["type"] != "hello":
        raise ProtocolError(f"{who} sent {hello['type']!r} instead of 'hello'")
    v = hello.get("v")
    if v != wire.PROTOCOL_VERSION:
        raise QueueError(f"server speaks protocol v{v}, this client v{wire.PROTOCOL_VERSION}; "
                         "restart seamless-queue after upgrading")
    if type(hello.get("pid")) is not int or not isinstance(hello.get("host"), str):
        raise ProtocolError(f"{who} sent a 'hello' without a valid pid and host")


def connect(cwd=None, wait=STARTING_WAIT_S) -> Connection:
    """A ``Connection`` to the server for ``cwd`` (default: the working directory)."""
    cwd = os.path.realpath(cwd or os.getcwd())
    deadline = time.monotonic() + wait
    files = _find(cwd, deadline)
    _check_parent(files)
    sock = _open_socket(cwd, files, deadline)
    try:
        hello = _receive(sock, _server_name(files), ANSWER_TIMEOUT_S)
        _check_hello(hello, files)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, files, hello)


class Submission:
    """What ``submit_job`` did: ``job`` (the server's number), ``hit`` (completed here from the
    cache and recorded), ``transformation`` (checksum, or None while inputs are pending),
    ``warnings`` (sidecars that could not be created: texts for the user)."""

    __slots__ = ("job", "hit", "transformation", "warnings")

    def __init__(self, job, hit, transformation, warnings):
        self.job = job
        self.hit = hit
        self.transformation = transformation
        self.warnings = warnings


def _accepted_job(answer: dict, files) -> int:
    job = answer.get("job")
    if type(job) is not int:
        raise ProtocolError(f"{_server_name(files)} accepted the job without a job number")
    return job


def _quiet_stdout():
    """Point fd 1 at /dev/null; returns the saved descriptor for ``_restore_stdout``.

    A queued job's stdout goes to its stdout file or to the cache, never to the submitter's
    terminal or pipe; a hit must do the same, or a script's output would depend on the cache.
    """
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(null, 1)
    finally:
        os.close(null)
    return saved


def _restore_stdout(saved: int) -> None:
    os.dup2(saved, 1)
    os.close(saved)


def _plan(job, stdin):
    """``plan_submission(job, stdin)``; a hit's stdout goes only to ``job.stdout_path`` (or the
    cache)."""
    from seamless.shell.pipeline import plan_submission

    if job.stdout_path is not None:
        return plan_submission(job, stdin)
    saved = _quiet_stdout()
    try:
        return plan_submission(job, stdin)
    finally:
        _restore_stdout(saved)


def _write_stdin(files, data: bytes) -> str:
    """A new 0600 file beside the server's socket holding ``data``; its path."""
    from seamless.shell.stdin import queued_file_prefix

    path = queued_file_prefix(files.socket) + f"{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise QueueError(f"cannot store the piped stdin for the queued job at {path} "
                         f"({e.strerror or e}); free space there") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise QueueError(f"cannot store the piped stdin for the queued job at {path} "
                         f"({e.strerror or e}); free space there") from None
    os.close(fd)
    return path


def _create_sidecars(targets, conn, transformation):
    """Each target's ``.FUTURE``, owned by the server; ``(sidecars, warnings)``."""
    from seamless.shell import future

    sidecars, warnings = [], []
    for target in targets:
        try:
            sidecars.append(future.Sidecar.create(target, pid=conn.pid, host=conn.host,
                                                  transformation=transformation))
        except OSError as e:
            warnings.append(f"cannot create {future.sidecar_path(target)} "
                            f"({e.strerror or e}); readers of {target} will not wait for it")
    return sidecars, warnings


def submit_job(job, cwd=None, stdin=None) -> Submission:
    """Hand ``job`` (a ``ShellJob``; ``stdout_path`` absolute or None) to the server of ``cwd``.
    ``stdin``: the piped bytes the job reads (an input), or ``None``.

    Raises ``QueueError`` (exit 1), ``Refused`` (its ``code``), or the planner's
    ``CommandError`` (a bad job: exit 2), each before or after removing what it created.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    # Connected first, so that without a server nothing is planned, written or created; the
    # same connection carries the submission unless planning (hashing large inputs) took long
    # enough for the server to drop it as silent.
    conn = connect(cwd)
    try:
        connected_at = time.monotonic()
        plan = _plan(job, stdin)
        if time.monotonic() - connected_at > _REUSE_WITHIN_S:
            conn.close()
            conn = connect(cwd)
    except BaseException:
        conn.close()
        raise
    outputs = [os.path.join(cwd, t) for t in plan.targets]
    if plan.hit:
        with conn:
            answer = conn.request({"type": "record", "command": job.command, "cwd": cwd,
                                   "transformation": plan.transformation, "outputs": outputs},
                                  "accepted")
            return Submission(_accepted_job(answer, conn.files), True, plan.transformation,
                              [])
    sidecars = []
    stdin_path = None
    try:
        with conn:
            if stdin is not None:
                stdin_path = _write_stdin(conn.files, stdin)
            sidecars, warnings = _create_sidecars(plan.targets, conn, plan.transformation)
            message = {
                "type": "submit", "command": job.command, "cwd": cwd, "env": dict(os.environ),
                "inputs": plan.candidates, "outputs": outputs, "stdout_path": job.stdout_path,
                "vars": job.vars, "sandbox": job.sandbox, "cache": job.use_cache,
                "transformation": plan.transformation,
                "futures": [os.path.join(cwd, s.path) for s in sidecars],
                "captures": job.captures, "explicit_inputs": job.inputs,
                "stdin_path": stdin_path,
            }
            answer = conn.request(message, "accepted")
            number = _accepted_job(answer, conn.files)
        sidecars = []  # the server's now
        stdin_path = None
        return Submission(number, False, plan.transformation, warnings)
    finally:
        if stdin_path is not None:
            unlink_quietly(stdin_path)  # unless the server removed it already
        for sidecar in sidecars:
            try:
                sidecar.remove()
            except OSError:
                continue  # a directory made read-only meanwhile: the sidecar goes stale
