"""The lazy, reused, self-healing pool of worker processes (``spawn()``, ``execution: spawn``).

Data flow (worker-pool.md, sections 2-9):

    caller threads                      I/O thread "seamless-pool-io"            worker k
    ──────────────                      ─────────────────────────────            ────────
    dispatch: backend.submit(job) ──►   inbox ─► FIFO queue (nested children
                                        first) ─► least-loaded worker:
                                        send submit (+ segment fds) ──────────►  run body
                                        result / error ◄─────────────────────  send result
                                        dispatch.complete(job, outcome)
                                        (caches, handles, dependants)
    handle.cancel() ─► abandon(job) ─►  SIGKILL the worker running it ─► replaced

Ownership:
- The I/O thread alone launches, watches and reaps workers (so PR_SET_PDEATHSIG, which follows
  the launching *thread*, lasts as long as the pool) and alone touches worker state.  Other
  threads talk to it through ``_inbox`` plus an eventfd wake-up.
- Each worker: a ``Popen`` (reaped at once on death: no zombie), a pidfd and the parent end of
  its socketpair (both closed when it is replaced or the pool closes), and a stderr pipe whose
  bytes are forwarded to our stderr and whose last 64 KiB explain a crash or a failed start.
- A job belongs to the dispatcher's running map; the pool holds it from ``submit`` until it
  hands the outcome to ``dispatch.complete``.  Input segments stay alive through the job's
  ``Work`` until then; result segments come back as descriptors owned by the parent's mapping.

Dispatch rules: one body at a time per worker, plus *staged* submissions sent ahead so tiny
tasks do not wait a round trip: one while task durations are unknown or long, more when the
recent bodies are short (``_StagingDepth``: enough to cover about 2 ms of work, at most 64).
Staged work that has not started is revoked and moved when another worker falls idle, and
requeued (never failed) when its worker dies.
Crashes are seen through channel EOF and the pidfd (no polling); only the running job fails,
with ``WorkerCrashedError``; the worker is replaced at once.  Three failed starts in a row
break the pool: every waiting job then fails with the last worker's stderr tail.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import logging
import threading
import time

from ..encoding import PendingChecksum
from ..execution.runner import Failure, Outcome
from . import wire
from .env import usable_cpu_count
from .protocol import MAX_FDS, Channel, ProtocolError

__all__ = ["Pool"]

_log = logging.getLogger("seamless")
_HELLO_TIMEOUT = 30.0
_IDLE_TRIM_S = 2.0  # free-list segments unused this long are closed (worker-pool.md, 5)
_SHUTDOWN_GRACE = 2.0
_STDERR_TAIL = 64 * 1024
_MAX_START_FAILURES = 3
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _Worker:
    """The parent's view of one worker process (touched by the I/O thread only)."""

    def __init__(self, index: int):
        self.index = index
        self.proc = None
        self.channel = None
        self.pidfd = None
        self.started_at = 0.0
        self.ready = False
        self.running = None  # (request id, job)
        self.running_since = 0.0  # when the parent last saw a new body start here
        self.staged = collections.deque()  # (request id, job) sent ahead, not started
        self.revoking: set = set()  # request ids of staged submissions being revoked
        self.rss = 0
        self.stderr_tail = bytearray()
        self.killed_on_purpose = False
        self.protocol_error = None
        self.start_timeout = False
        self.last_pid = None
        self.pending_checksums: dict = {}  # request id -> (PendingChecksum, result buffer)
        self.code_sent: set = set()  # code checksums this worker process has received
        self.current_fd = -1  # memfd: request id of the body the worker runs (0: none)

    def send(self, frames: list) -> bool:
        """Send frames to the worker; ``False`` when its channel is broken (the process is
        dying or dead). The caller then does nothing more: the pidfd reports the death, and the
        death handler requeues the staged work and fails the running job."""
        try:
            self.channel.send(frames)
        except (OSError, ProtocolError):
            return False
        return True

    @property
    def load(self) -> int:
        return (self.running is not None) + len(self.staged)

    def take_all_jobs(self) -> list:
        """Forget the running and staged jobs (the worker is gone or the pool stops); return
        them, running first."""
        jobs = [] if self.running is None else [self.running[1]]
        jobs.extend(job for _, job in self.staged)
        self.running = None
        self.staged.clear()
        self.revoking.clear()
        return jobs

    def take_running(self):
        """Forget the running job (finished, or revoked after all) and return it; the next
        staged one now runs. Neither request id stays in ``revoking``: a revoke of the next
        one may still succeed, and its reply then finds it running (``_frame_revoked``)."""
        rid, job = self.running
        self.revoking.discard(rid)
        self.running = None
        if self.staged:
            self.running = self.staged.popleft()
            self.running_since = time.monotonic()
            self.revoking.discard(self.running[0])
        return job

    def take_staged(self, rid):
        """Remove and return the staged job with request id ``rid`` (None if not staged)."""
        for i, (staged_rid, job) in enumerate(self.staged):
            if staged_rid == rid:
                del self.staged[i]
                self.revoking.discard(rid)
                return job
        return None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


class _StagingDepth:
    """How many submissions to stage ahead on a busy worker, from recent body durations.

    Staging hides the parent's round trip (tens of microseconds) behind work already sent; it
    costs balance when the staged work is long, which revoking only partly repairs.  So the
    depth covers about ``COVER_S`` of recent work: one for bodies of 2 ms or more, up to
    ``MAX`` for microsecond bodies.  An exponential average follows changes within a few tasks.
    """

    COVER_S = 0.002
    MAX = 64

    def __init__(self):
        self.mean = None  # seconds per body, exponentially averaged

    def observe(self, duration: float):
        self.mean = duration if self.mean is None else 0.8 * self.mean + 0.2 * duration

    def stuck_after(self) -> float:
        """A body running longer than this is not a tiny one: stage nothing behind it."""
        return self.COVER_S if self.mean is None else max(self.COVER_S, 10 * self.mean)

    @property
    def depth(self) -> int:
        if self.mean is None:
            return 1
        return max(1, min(self.MAX, int(self.COVER_S / max(self.mean, 1e-6))))


def _raise_nofile_limit():
    """Soft RLIMIT_NOFILE up to the hard limit: the parent holds a descriptor per live
    segment that may be resent, besides its channels and pidfds (worker-pool.md, 10)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return  # a hard limit this platform will not grant: keep the soft one


def _describe_signal(signum: int) -> str:
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


class Pool:
    """A pool of ``n`` worker processes; a dispatch backend (see ``execution.inprocess``)."""

    name = "spawn"

    def __init__(self, n: int, complete):
        self.n = n
        self._complete = complete
        self._inbox: collections.deque = collections.deque()
        self._wake_pending = False
        self._io_asleep = True  # until the I/O thread runs: posts must wake it
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: collections.deque = collections.deque()
        self._workers: list = []
        self._ids = itertools.count(1)
        self._by_id: dict = {}  # request id -> (worker, job)
        self._staging = _StagingDepth()
        self._nested_proxies: dict = {}
        self._selector = selectors.DefaultSelector()
        self._start_failures = 0
        self._broken: str | None = None
        self._closed = threading.Event()
        self._dropped: list = []
        # Descriptors of dropped result segments, on their way back to their workers.
        self._returns: collections.deque = collections.deque()  # (worker index, pid, fd)
        self._returns_lock = threading.RLock()  # RLock: GC may release a segment anywhere
        self._returns_open = True
        self._next_idle_trim = 0.0
        _raise_nofile_limit()
        from seamless._ipc import shm_array

        self._shm_array = shm_array
        shm_array.register_trim_hook(self._trim_workers)
        self._thread = threading.Thread(target=self._io_loop, name="seamless-pool-io",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ backend interface

    def submit(self, job):
        self._post(("submit", job))

    def submit_front(self, job):
        self._post(("submit-front", job))

    def withdraw(self, job) -> bool:
        """Remove a queued job (best effort: the I/O thread skips it if it was not sent)."""
        self._post(("withdraw", job))
        return True

    def abandon(self, job):
        """Nobody wants a running job any more: stop it (kills and replaces its worker)."""
        self._post(("abandon", job))

    def run_here(self, job) -> bool:
        return False

    def close(self) -> list:
        """Cancel everything, stop the workers (2 s, then SIGKILL); return unstarted jobs."""
        if self._closed.is_set():
            return []
        self._post(("close", None))
        self._thread.join(_SHUTDOWN_GRACE + 5.0)
        return self._dropped

    def _trim_workers(self):
        """``seamless._ipc.trim()`` hook: each worker empties its free list too."""
        if not self._closed.is_set():
            self._post(("trim", None))

    def _result_released(self, worker_index: int, pid: int):
        """``on_release`` for a result segment made by that worker process."""
        def give_back(fd: int):
            with self._returns_lock:
                if not self._returns_open:
                    os.close(fd)
                    return
                self._returns.append((worker_index, pid, fd))
            self._post(("returns", None))
        return give_back

    def _send_returns(self):
        """Send dropped result segments back to the workers that made them (``recycle``);
        those of a process that is gone are closed."""
        by_worker: dict = {}
        with self._returns_lock:
            while self._returns:
                index, pid, fd = self._returns.popleft()
                by_worker.setdefault((index, pid), []).append(fd)
        for (index, pid), fds in by_worker.items():
            worker = self._workers[index]
            try:
                if worker.proc is not None and worker.proc.pid == pid:
                    # A dying worker does not get them: they are simply closed below.
                    worker.send([("recycle", 0, {}, [], fds[i:i + MAX_FDS])
                                 for i in range(0, len(fds), MAX_FDS)])
            finally:
                for fd in fds:
                    os.close(fd)

    def _post(self, item):
        """Queue a request for the I/O thread; wake it only if it may be asleep in ``select``
        and no wake-up is pending.  No request is missed: the I/O thread marks itself asleep
        *before* it looks at the inbox one last time, and clears ``_wake_pending`` only after
        consuming the wake-up.  While it is busy, posts cost no system call."""
        self._inbox.append(item)
        if not self._io_asleep or self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            return  # closed: the pool is gone, nothing will read the inbox

    # ------------------------------------------------------------ I/O thread

    def _io_loop(self):
        self._selector.register(self._wake, selectors.EVENT_READ, ("wake", None, None))
        for index in range(self.n):
            self._workers.append(_Worker(index))
            self._launch(self._workers[-1])
        try:
            self._serve()
        except Exception as exc:  # a bug here must fail the waiting work, never hang it
            self._broken = (f"the worker pool's I/O thread failed ({type(exc).__name__}: "
                            f"{exc}); start a new pool with seamless.close() and spawn()")
            _log.exception("seamless pool I/O thread failed")
            self._fail_everything()
        finally:
            self._shutdown()

    def _serve(self):
        """The select loop: worker channels, pidfds and stderr pipes, plus the wake-up."""
        while True:
            self._io_asleep = True
            timeout = 0 if self._inbox else self._next_timeout()
            events = self._selector.select(timeout)
            self._io_asleep = False
            for key, _ in events:
                what, worker, proc = key.data
                if worker is not None and worker.proc is not proc:
                    continue  # an event of a process that was already replaced
                if what == "wake":
                    self._drain_wake()
                elif what == "channel":
                    self._on_channel(worker)
                elif what == "pidfd":
                    self._on_death(worker)
                elif what == "stderr":
                    self._on_stderr(worker)
            if self._handle_inbox():
                return
            self._check_hello_timeouts()
            self._schedule()
            now = time.monotonic()
            if now >= self._next_idle_trim:
                self._next_idle_trim = now + 1.0
                self._shm_array.trim_idle(_IDLE_TRIM_S)

    def _fail_everything(self):
        """Fail every queued, staged and running job with the pool's breakage."""
        jobs = list(self._queue)
        self._queue.clear()
        for worker in self._workers:
            jobs.extend(worker.take_all_jobs())
        for job in jobs:
            job.claim()
            self._finish(job, Outcome(None, self._broken_failure(job), 0.0))

    def _drain_wake(self):
        """Consume the wake-up, then allow the next one.  In this order: clearing the flag
        first let a post slip in between, whose write this read swallowed, and every later
        post then skipped its write (the flag stayed set) until a timeout."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass  # nothing to consume: the flag is cleared all the same
        self._wake_pending = False

    def _next_timeout(self):
        """At most 1 s: the hello deadline of starting workers and the idle trim of the free
        list both need a look now and then."""
        return 1.0

    def _handle_inbox(self) -> bool:
        """Apply requests from other threads; True when the pool must close."""
        while self._inbox:
            what, job = self._inbox.popleft()
            if what in ("submit", "submit-front") and self._broken:
                if job.claim():  # a broken pool fails new work at once instead of queueing it
                    self._finish(job, Outcome(None, self._broken_failure(job), 0.0))
            elif what == "submit":
                self._queue.append(job)
            elif what == "submit-front":
                self._queue.appendleft(job)
            elif what == "withdraw":
                if job in self._queue:
                    self._queue.remove(job)
                    job.drop()
            elif what == "abandon":
                self._abandon(job)
            elif what == "returns":
                self._send_returns()
            elif what == "trim":
                for worker in self._workers:
                    if worker.proc is not None and worker.ready:
                        worker.send([("recycle", 0, {"trim": True}, [], [])])
            elif what == "close":
                return True
        return False

    # ------------------------------------------------------------ workers

    def _launch(self, worker: _Worker):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # 8 shared bytes where the worker keeps the request id of the body it runs (0: none),
        # so a crash fails that transformation and requeues the others it held, whose
        # results may still have been waiting in its outbox.
        current_fd = os.memfd_create("seamless-current", os.MFD_CLOEXEC)
        os.ftruncate(current_fd, 8)
        env = dict(os.environ, SEAMLESS_WORKER_FD=str(child_end.fileno()),
                   SEAMLESS_WORKER_CURRENT_FD=str(current_fd),
                   SEAMLESS_WORKER_PPID=str(os.getpid()))
        if sys.version_info >= (3, 11):
            cmd = [sys.executable, "-P", "-m", "seamless.pool.worker"]
        else:
            cmd = [sys.executable, "-c",
                   "import sys; del sys.path[0]; from seamless.pool.worker import main; main()"]
        try:
            worker.proc = subprocess.Popen(cmd, pass_fds=[child_end.fileno(), current_fd],
                                           env=env, stdin=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            parent_end.close()
            child_end.close()
            os.close(current_fd)
            self._start_failed(worker, f"could not start {cmd[0]}: {exc}")
            return
        child_end.close()
        worker.current_fd = current_fd
        parent_end.setblocking(False)
        worker.channel = Channel(parent_end)
        worker.pidfd = os.pidfd_open(worker.proc.pid)
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.code_sent = set()  # a new process has received no code yet
        worker.stderr_tail = bytearray()
        worker.killed_on_purpose = False
        worker.protocol_error = None
        worker.start_timeout = False
        os.set_blocking(worker.proc.stderr.fileno(), False)
        proc = worker.proc
        worker.last_pid = proc.pid
        self._selector.register(worker.channel.fileno(), selectors.EVENT_READ,
                                ("channel", worker, proc))
        self._selector.register(worker.pidfd, selectors.EVENT_READ, ("pidfd", worker, proc))
        self._selector.register(proc.stderr, selectors.EVENT_READ, ("stderr", worker, proc))
        worker.send([("init", 0, self._init_header(worker), [], [])])

    def _init_header(self, worker: _Worker) -> dict:
        per_worker = str(max(1, usable_cpu_count() // self.n))
        return {"environ": dict(os.environ), "cwd": os.getcwd(), "sys_path": list(sys.path),
                "index": worker.index,
                "threads": {name: per_worker for name in _THREAD_VARS if name not in os.environ}}

    def _on_stderr(self, worker: _Worker):
        try:
            data = os.read(worker.proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self._selector.unregister(worker.proc.stderr)
            return
        worker.stderr_tail += data
        del worker.stderr_tail[:-_STDERR_TAIL]
        try:
            os.write(2, data)
        except OSError:
            return  # our own stderr is gone; the tail still explains crashes

    def _on_channel(self, worker: _Worker):
        try:
            frames = worker.channel.receive()
        except (EOFError, ConnectionError):  # a reset is a death with unread frames
            self._on_death(worker)
            return
        except ProtocolError as exc:
            self._kill(worker, protocol_error=str(exc))
            return
        for frame in frames:
            handler = getattr(self, "_frame_" + frame.kind.replace("-", "_"), None)
            if handler is None:
                self._kill(worker, protocol_error=f"unexpected {frame.kind!r} frame from a worker")
                return
            handler(worker, frame)

    def _check_hello_timeouts(self):
        now = time.monotonic()
        for worker in self._workers:
            if worker.proc and not worker.ready and now - worker.started_at > _HELLO_TIMEOUT:
                self._kill(worker, start_timeout=True)

    def _kill(self, worker: _Worker, protocol_error=None, start_timeout=False,
              on_purpose=False):
        worker.killed_on_purpose = on_purpose
        worker.protocol_error = protocol_error
        worker.start_timeout = start_timeout
        try:
            os.kill(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # already gone; the pidfd reports it
        self._on_death(worker)

    def _on_death(self, worker: _Worker):
        """Reap, explain, fail the job whose body it was running, requeue the others it held
        (staged, or finished with the result not yet sent), and replace it."""
        if worker.proc is None:
            return
        proc = worker.proc
        returncode = proc.wait()
        crashed_rid = int.from_bytes(os.pread(worker.current_fd, 8, 0), "little")
        self._drain_stderr(worker)
        for fileobj in (worker.channel.fileno(), worker.pidfd, proc.stderr):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                continue
        self._release(worker)
        held = ([worker.running] if worker.running is not None else []) + list(worker.staged)
        worker.running = None
        worker.staged.clear()
        worker.revoking.clear()
        crashed = None
        for rid, job in reversed(held):  # last first, so the queue keeps their order
            self._by_id.pop(rid, None)
            if rid == crashed_rid:
                crashed = job
                continue
            job.unclaim()
            if job.drop():  # cancelled meanwhile: nobody wants it any more
                from ..execution import dispatch

                dispatch.forget(job)
            else:
                self._queue.appendleft(job)
        if not worker.ready and not worker.killed_on_purpose:
            self._start_failed(worker, self._start_failure_text(worker, returncode))
            return
        self._start_failures = 0
        if crashed is not None:
            self._finish(crashed, Outcome(None, self._crash_failure(worker, returncode, crashed),
                                          0.0))
        if not self._closed.is_set():
            self._launch(worker)

    def _release(self, worker: _Worker):
        """Close what the parent holds for a reaped worker: channel, pidfd, stderr pipe; its
        deferred checksums are computed here."""
        worker.channel.close()
        os.close(worker.pidfd)
        os.close(worker.current_fd)
        worker.proc.stderr.close()
        worker.proc = None
        self._settle_pending_checksums(worker)

    def _drain_stderr(self, worker: _Worker):
        while True:
            try:
                data = os.read(worker.proc.stderr.fileno(), 65536)
            except (BlockingIOError, ValueError, OSError):
                return
            if not data:
                return
            worker.stderr_tail += data
            del worker.stderr_tail[:-_STDERR_TAIL]

    def _start_failure_text(self, worker, returncode) -> str:
        how = (f"did not say hello within {_HELLO_TIMEOUT:.0f} s"
               if worker.start_timeout
               else f"exited with code {returncode}" if returncode >= 0
               else f"was killed by {_describe_signal(-returncode)}")
        tail = worker.stderr_tail.decode("utf-8", "replace").strip()
        return (f"worker {worker.index} {how} before it was ready"
                + (f"; its stderr ends with:\n{tail}" if tail else "; it wrote nothing to stderr"))

    def _start_failed(self, worker, text: str):
        self._start_failures += 1
        if self._start_failures < _MAX_START_FAILURES:
            self._launch(worker)
            return
        self._broken = (f"the worker pool could not start workers ({_MAX_START_FAILURES} "
                        f"failed starts in a row): {text}")
        self._fail_everything()

    def _broken_failure(self, job) -> Failure:
        return Failure(f"the worker pool is broken ({self._broken.splitlines()[0]})",
                       self._broken + "\n", crash={"exitcode": None, "signal": None,
                                                   "pid": None, "cause": self._broken})

    def _crash_failure(self, worker, returncode, job) -> Failure:
        pid = worker.last_pid
        if worker.protocol_error:
            what = (f"worker {worker.index} (pid {pid}) sent a malformed frame while running "
                    f"it and was killed ({worker.protocol_error}); the worker was replaced")
            code, sig = None, signal.SIGKILL
        elif returncode >= 0:
            what = (f"worker {worker.index} (pid {pid}) exited with code {returncode} while "
                    f"running it; the code called os._exit() or a library ended the process; "
                    f"the worker was replaced")
            code, sig = returncode, None
        else:
            sig = -returncode
            if sig == signal.SIGKILL:
                cause = ("killed from outside, most often by the kernel's out-of-memory killer"
                         + (f" (last seen using {_gib(worker.rss)})" if worker.rss else ""))
            elif sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL,
                         signal.SIGFPE):
                cause = "a crash in compiled code (see the faulthandler traceback below)"
            else:
                cause = "a signal from outside"
            what = (f"worker {worker.index} (pid {pid}) was killed by {_describe_signal(sig)} "
                    f"while running it; {cause}; the worker was replaced")
            code = None
        tail = worker.stderr_tail.decode("utf-8", "replace")[-_STDERR_TAIL:].strip()
        text = what + "\n" + (f"\n--- captured stderr (last 64 KiB) ---\n{tail}\n" if tail else "")
        cause = worker.protocol_error
        return Failure(what, text, crash={"exitcode": code, "signal": sig, "pid": pid,
                                          "cause": cause})

    # ------------------------------------------------------------ frames from workers

    def _frame_hello(self, worker, frame):
        from .. import __version__

        if frame.header.get("seamless") != __version__:
            worker.stderr_tail += (f"worker runs seamless {frame.header.get('seamless')}, the "
                                   f"parent {__version__} (reinstall seamless in "
                                   f"{sys.executable})\n").encode()
            self._kill(worker)
            return
        worker.ready = True
        worker.last_pid = frame.header["pid"]
        self._start_failures = 0

    def _frame_heartbeat(self, worker, frame):
        worker.rss = frame.header.get("rss", 0)

    def _take(self, worker, rid):
        """The job of a finished request; the next staged one (if any) now runs."""
        if worker.running is not None and worker.running[0] == rid:
            job = worker.take_running()
        else:
            job = worker.take_staged(rid)
            if job is None:
                return None
        self._by_id.pop(rid, None)
        return job

    def _frame_result(self, worker, frame):
        job = self._take(worker, frame.id)
        if job is None:
            for fd in frame.fds:
                os.close(fd)
            return
        result, duration = wire.unpack_result(
            frame, job.work, on_release=self._result_released(worker.index, worker.proc.pid))
        self._shm_array.add_copied(frame.header.get("copied", 0))
        self._staging.observe(duration)
        if isinstance(result.checksum, PendingChecksum):
            worker.pending_checksums[frame.id] = (result.checksum, result.buffer)
        self._finish(job, Outcome(result, None, duration))

    def _frame_result_checksum(self, worker, frame):
        entry = worker.pending_checksums.pop(frame.id, None)
        if entry is not None:
            self._shm_array.add_hashed(frame.header.get("hashed", 0))
            entry[0].set(frame.header["checksum"])

    def _settle_pending_checksums(self, worker):
        """A worker died before sending some deferred checksums: hash those results here."""
        pending, worker.pending_checksums = worker.pending_checksums, {}
        for checksum, buffer in pending.values():
            checksum.set(hashlib.sha256(memoryview(buffer)).hexdigest())

    def _frame_error(self, worker, frame):
        job = self._take(worker, frame.id)
        if job is not None:
            self._finish(job, Outcome(None, wire.unpack_failure(frame), 0.0))

    def _frame_revoked(self, worker, frame):
        """The worker dropped a staged submission unstarted: queue it again.

        The reply may overtake or follow the result of the job before it (two threads of the
        worker send), so by now the parent may already count it as running there."""
        job = worker.take_staged(frame.id)
        if job is None:
            if worker.running is None or worker.running[0] != frame.id:
                return
            job = worker.take_running()
        self._by_id.pop(frame.id, None)
        job.unclaim()
        if job.drop():  # cancelled while staged: nobody wants it any more
            from ..execution import dispatch

            dispatch.forget(job)
        else:
            self._queue.appendleft(job)

    def _frame_nested_submit(self, worker, frame):
        from ..execution import dispatch

        checksum, work = wire.unpack_work(frame)
        proxy = _NestedProxy(self, worker, frame.id)
        self._nested_proxies[(worker.index, frame.id)] = proxy
        idle = any(w.ready and w.load == 0 and w is not worker for w in self._workers)
        dispatch.nested_from_worker(checksum, work, proxy, run_elsewhere=idle)

    def _frame_nested_cancel(self, worker, frame):
        proxy = self._nested_proxies.pop((worker.index, frame.id), None)
        if proxy is not None:
            proxy.cancel()

    # ------------------------------------------------------------ scheduling

    def _schedule(self):
        """Hand queued jobs to the least-loaded workers; the frames for one worker go out in
        one ``sendmsg``."""
        batches: dict = {}
        limit = 1 + self._staging.depth
        stuck_after = self._staging.stuck_after()
        now = time.monotonic()
        while self._queue:
            # Never stage behind a body that has run far longer than the recent ones.
            candidates = [w for w in self._workers if w.ready and w.proc and not w.revoking
                          and w.load < (1 if w.running is not None
                                        and now - w.running_since > stuck_after else limit)]
            if not candidates:
                break
            worker = min(candidates, key=lambda w: (w.load, w.index))
            if worker.load >= 1 and any(w.ready and w.load == 0 for w in self._workers):
                break
            job = self._queue.popleft()
            if not job.claim():
                continue  # withdrawn or dropped meanwhile
            rid = next(self._ids)
            if worker.running is None:
                worker.running = (rid, job)
                worker.running_since = time.monotonic()
            else:
                worker.staged.append((rid, job))
            self._by_id[rid] = (worker, job)
            batches.setdefault(worker, []).append((rid, job))
        for worker, sent in batches.items():
            self._send(worker, sent)
        if not self._queue:
            self._rebalance()

    def _send(self, worker, sent: list):
        """Send ``submit`` frames for ``(request id, job)`` pairs already booked on ``worker``."""
        frames, keep = [], []
        for rid, job in sent:
            header, inline, fds, new_segments = wire.pack_work(job.work, job.checksum,
                                                               worker.code_sent)
            frames.append(("submit", rid, header, inline, fds))
            keep.extend(new_segments)
        try:
            worker.send(frames)
        finally:
            for seg in keep:
                seg.close()

    def _rebalance(self):
        """Idle workers and staged work elsewhere: revoke the newer half of the most loaded
        worker's staged submissions (at least one), so they can move."""
        if not any(w.ready and w.load == 0 for w in self._workers):
            return
        busy = [w for w in self._workers if w.staged and not w.revoking]
        if not busy:
            return
        worker = max(busy, key=lambda w: len(w.staged))
        take = list(worker.staged)[-max(1, len(worker.staged) // 2):]
        worker.revoking.update(rid for rid, _ in take)
        worker.send([("revoke", rid, {}, [], []) for rid, _ in take])

    def _abandon(self, job):
        if job in self._queue:
            self._queue.remove(job)
            return
        for worker in self._workers:
            if worker.running is not None and worker.running[1] is job:
                self._kill(worker, on_purpose=True)
                return
            for rid, staged_job in worker.staged:
                if staged_job is job:
                    if rid not in worker.revoking:
                        worker.revoking.add(rid)
                        worker.send([("revoke", rid, {}, [], [])])
                    return

    def _finish(self, job, outcome: Outcome):
        self._complete(job, outcome)

    # ------------------------------------------------------------ shutdown

    def _shutdown(self):
        self._closed.set()
        self._dropped = list(self._queue)
        self._queue.clear()
        running = []
        for worker in self._workers:
            running.extend(worker.take_all_jobs())
            if worker.proc is not None:
                worker.send([("shutdown", 0, {}, [], [])])  # one already gone is reaped below
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        for worker in self._workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            self._release(worker)
        self._selector.close()
        os.close(self._wake)
        self._shm_array.unregister_trim_hook(self._trim_workers)
        with self._returns_lock:
            self._returns_open = False
            while self._returns:
                os.close(self._returns.popleft()[2])
        self._dropped.extend(running)


class _NestedProxy:
    """Stands in for a worker's waiting handle: sends the child's outcome back to it."""

    def __init__(self, pool: Pool, worker: _Worker, rid: int):
        self.pool = pool
        self.worker = worker
        self.rid = rid
        self.done = False

    def _job_finished(self, outcome: Outcome):
        if self.done:
            return
        self.done = True
        if outcome.result is not None and isinstance(outcome.result.checksum, PendingChecksum):
            # the requester needs the checksum with the value: reply once it is known
            outcome.result.checksum.add_callback(
                lambda cs: self._reply(outcome._replace(result=outcome.result._replace(
                    checksum=cs))))
            return
        self._reply(outcome)

    def _reply(self, outcome: Outcome):
        """Send the child's outcome to the requesting worker (on the I/O thread)."""
        self.pool._nested_proxies.pop((self.worker.index, self.rid), None)
        if self.worker.proc is None:
            return  # the requester died meanwhile
        if outcome.failure is None:
            header, inline, fds, keep = wire.pack_result(outcome.result, outcome.duration)
            header["reply"] = "result"
        else:
            header, inline, fds, keep = wire.pack_failure(outcome.failure), [], [], []
            header["reply"] = "error"
        self.worker.send([("nested-reply", self.rid, header, inline, fds)])  # a dead one needs none
        for seg in keep:
            seg.close()

    def run_here(self):
        self.done = True
        self.pool._nested_proxies.pop((self.worker.index, self.rid), None)
        self.worker.send([("nested-reply", self.rid, {"reply": "run-here"}, [], [])])

    def cancel(self):
        from ..execution import dispatch

        self.done = True
        dispatch.detach_proxy(self)

    def __repr__(self):
        return f"<nested request {self.rid:#x} of worker {self.worker.index}>"
