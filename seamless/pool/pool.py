"""The lazy, reused, self-healing pool of worker processes (``spawn()``, ``execution: spawn``).

Data flow (docs/worker-pool.md):

    caller threads                      I/O thread "seamless-pool-io"            worker k
    ──────────────                      ─────────────────────────────            ────────
    dispatch: backend.submit(job) ──►   inbox ─► FIFO queue (nested children
                                        first) ─► least-loaded worker:
                                        send submit (+ segment fds) ──────────►  run body
                                        result / error ◄─────────────────────  send result
                                        hooks.complete(job, outcome)
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
  hands the outcome to ``hooks.complete``.  Input segments stay alive through the job's
  ``Work`` until then; result segments come back as descriptors owned by the parent's mapping.

Scheduling is not decided here: ``scheduling.Scheduler`` (a state machine without I/O) gets
every event (submitted, worker ready, result, revoke answer, death, cancel, a deadline passed)
and returns what to do (send, revoke, kill, launch, fail, forget); this thread only translates
frames into events and actions into frames, batching the submits of one round per worker into
one ``sendmsg``.  Processes are started, reaped and explained by ``supervise.Child``.
Crashes are seen through channel EOF and the pidfd (no polling); the frames a dead worker sent
are read first, then the shared word of the last body it started decides what failed.  Three
failed starts in a row break the pool: every waiting job then fails with the last worker's
stderr tail.

The pool is an ``execution.backend.Backend``: it never imports the dispatcher; everything it
reports (outcomes, dropped jobs, nested children and their cancellation) goes through the
``Hooks`` it is built with.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time

from .. import machine
from ..encoding import PendingChecksum
from ..execution.backend import Hooks
from ..execution.runner import Failure, Outcome
from . import wire
from .protocol import EXIT_CHANNEL_LOST, IDLE_TRIM_S, MAX_FDS, OUTBOX_OFFSET, Channel, ProtocolError
from .scheduling import MAX_START_FAILURES, Fail, Forget, Kill, Launch, Revoke, Scheduler, Send
from .supervise import Child, describe_signal, raise_nofile_limit

__all__ = ["Pool"]

_log = logging.getLogger("seamless")
_HELLO_TIMEOUT = 30.0
_SHUTDOWN_GRACE = 2.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_SHARED_SIZE = OUTBOX_OFFSET + (256 << 10)  # the memfd shared with a worker


class _Worker:
    """The parent's view of one worker process (touched by the I/O thread only); which jobs it
    holds is the scheduler's business (``scheduling._Books``)."""

    def __init__(self, index: int):
        self.index = index
        self.child = None  # supervise.Child while a process runs for this slot
        self.channel = None
        self.current_fd = -1  # memfd: request id of the last body the worker started
        self.started_at = 0.0
        self.ready = False
        self.rss = 0
        self.killed_on_purpose = False
        self.protocol_error = None
        self.start_timeout = False
        self.pending_checksums: dict = {}  # request id -> (PendingChecksum, result buffer)
        self.code_sent: set = set()  # code checksums this worker process has received
        self.exited = None  # the Child that last ended here (explains its jobs' failures)

    def send(self, frames: list) -> bool:
        """Send frames to the worker; ``False`` when its channel is broken (the process is
        dying or dead). The caller then does nothing more: the pidfd reports the death, and the
        scheduler fails what had started there and requeues the rest."""
        try:
            self.channel.send(frames)
        except (OSError, ProtocolError):
            return False
        return True

    @property
    def pid(self):
        return self.child.pid if self.child else None


class Pool:
    """A pool of ``n`` worker processes (``execution.backend.Backend``)."""

    name = "spawn"
    segment_threshold = wire.INLINE_MAX  # large inputs are born in shared memory
    looks_up_cache = False  # workers have no cache: the dispatcher looks up before submit
    stops_abandoned = True  # ``abandon`` revokes the job or kills its worker

    def __init__(self, n: int, hooks: Hooks):
        self.n = n
        self._hooks = hooks
        self._inbox: collections.deque = collections.deque()
        self._wake_pending = False
        self._io_asleep = True  # until the I/O thread runs: posts must wake it
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._scheduler = Scheduler(n)
        self._actions: list = []  # the scheduler's actions, carried out at the end of a round
        self._workers: list = [_Worker(index) for index in range(n)]
        self._nested_proxies: dict = {}
        self._selector = selectors.DefaultSelector()
        self._last_start_failure = ""
        self._broken: str | None = None
        self._closed = threading.Event()
        self._dropped: list = []
        # Descriptors of dropped result segments, on their way back to their workers.
        self._returns: collections.deque = collections.deque()  # (worker index, pid, fd)
        self._returns_lock = threading.RLock()  # RLock: GC may release a segment anywhere
        self._returns_open = True
        self._next_idle_trim = 0.0
        raise_nofile_limit()
        from seamless._ipc import shm_array

        self._shm_array = shm_array
        shm_array.register_trim_hook(self._trim_workers)
        self._thread = threading.Thread(target=self._io_loop, name="seamless-pool-io",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ backend interface

    def submit(self, job):
        self._post(("submit", job))

    def submit_nested(self, job):
        """A child a worker's body waits for goes ahead of top-level work."""
        self._post(("submit-front", job))

    def withdraw(self, job) -> bool:
        """A queued job nobody wants: the dispatcher drops it, and the scheduler skips it when
        its turn comes (its claim fails), so nothing needs doing here."""
        return True

    def abandon(self, job):
        """Nobody wants a job the pool handed to a worker any more: revoke it if it waits
        staged, kill (and replace) its worker if it runs."""
        self._post(("abandon", job))

    def run_here(self, job) -> bool:
        """Only the pool's own threads wait inside the pool: callers never run its jobs."""
        return False

    def describe(self) -> str:
        return f"a pool of {self.n} workers"

    def default_nparallel(self):
        """The ``nparallel`` setting decides (docs/parallel.md)."""
        return None

    def close(self) -> list:
        """Cancel everything, stop the workers (2 s, then SIGKILL); return unstarted jobs."""
        if self._closed.is_set():
            return []
        self._post(("close", None))
        self._thread.join(_SHUTDOWN_GRACE + 5.0)
        return self._dropped

    def forget_after_fork(self):
        """In a child forked from this process: the I/O thread does not exist here, and the
        workers are the parent's.  Close this copy's descriptors and touch nothing else."""
        self._closed.set()
        self._returns_lock = threading.RLock()  # it may have been held by a parent thread
        self._returns_open = False
        self._returns.clear()  # the descriptors in it are closed below with everything else
        self._shm_array.unregister_trim_hook(self._trim_workers)
        for worker in self._workers:
            # Results whose checksum the parent's worker still owed: this child hashes them
            # itself, or its handles (and whatever takes them as input) would wait forever.
            self._settle_pending_checksums(worker)
        fds = [self._wake]
        for worker in self._workers:
            if worker.child is not None:
                fds += [worker.child.pidfd, worker.child.stderr_fd, worker.current_fd,
                        worker.channel.fileno()]
        try:
            fds.append(self._selector.fileno())
        except (AttributeError, ValueError):
            pass  # a selector without a descriptor of its own (select/poll) holds nothing
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                continue  # already closed in this copy

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
                if worker.pid == pid:
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
        for worker in self._workers:
            self._launch(worker)
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
        """The select loop: worker channels, pidfds and stderr pipes, plus the wake-up.  Events
        go to the scheduler; its actions are carried out at the end of each round, so frames
        for one worker leave together."""
        while True:
            self._io_asleep = True
            events = self._selector.select(0 if self._inbox or self._actions
                                           else self._next_timeout())
            self._io_asleep = False
            for key, _ in events:
                what, worker, child = key.data
                if worker is not None and worker.child is not child:
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
            now = time.monotonic()
            self._check_hello_timeouts(now)
            deadline = self._scheduler.deadline()
            if deadline is not None and now >= deadline:
                self._actions += self._scheduler.tick(now)
            self._carry_out()
            if now >= self._next_idle_trim:
                self._next_idle_trim = now + 1.0
                self._shm_array.trim_idle(IDLE_TRIM_S)

    def _next_timeout(self) -> float:
        """At most 1 s (the hello deadline of starting workers and the idle trim of the free
        list need a look now and then), less when staged work must be checked for a body
        that runs long."""
        deadline = self._scheduler.deadline()
        if deadline is None:
            return 1.0
        return min(1.0, max(0.0, deadline - time.monotonic()))

    def _carry_out(self):
        """Carry out the scheduler's actions in order; all submits for one worker in one
        ``sendmsg``."""
        while self._actions:
            actions, self._actions = self._actions, []
            sends: dict = {}
            for action in actions:
                if type(action) is Send:
                    sends.setdefault(action.worker, []).extend(action.items)
                    continue
                if type(action) is Revoke:
                    self._workers[action.worker].send(
                        [("revoke", rid, {}, [], []) for rid in action.rids])
                elif type(action) is Fail:
                    self._fail(action)
                elif type(action) is Forget:
                    self._hooks.forget(action.job)
                elif type(action) is Kill:
                    self._kill_unwanted(self._workers[action.worker])
                elif type(action) is Launch:
                    self._launch(self._workers[action.worker])
            for index, items in sends.items():
                self._send(self._workers[index], items)

    def _fail_everything(self):
        """Fail every queued and booked job with the pool's breakage."""
        for job in self._scheduler.close():
            job.claim()
            self._finish(job, Outcome(None, self._broken_failure(), 0.0))

    def _drain_wake(self):
        """Consume the wake-up, then allow the next one.  In this order: clearing the flag
        first let a post slip in between, whose write this read swallowed, and every later
        post then skipped its write (the flag stayed set) until a timeout."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass  # nothing to consume: the flag is cleared all the same
        self._wake_pending = False

    def _handle_inbox(self) -> bool:
        """Apply requests from other threads; True when the pool must close."""
        scheduler = self._scheduler
        while self._inbox:
            what, job = self._inbox.popleft()
            if what == "submit":
                self._actions += scheduler.submitted(job, False, time.monotonic())
            elif what == "submit-front":
                self._actions += scheduler.submitted(job, True, time.monotonic())
            elif what == "abandon":
                self._actions += scheduler.abandoned(job)
            elif what == "returns":
                self._send_returns()
            elif what == "trim":
                for worker in self._workers:
                    if worker.child is not None and worker.ready:
                        worker.send([("recycle", 0, {"trim": True}, [], [])])
            elif what == "close":
                return True
        return False

    # ------------------------------------------------------------ workers

    def _launch(self, worker: _Worker):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Shared with the worker: the request id of each body it starts (never reset), and
        # the result frames it holds back (worker._Outbox): after a death, those results are
        # delivered, what else had started fails and the rest is requeued.
        current_fd = os.memfd_create("seamless-current", os.MFD_CLOEXEC)
        os.ftruncate(current_fd, _SHARED_SIZE)
        env = dict(os.environ, SEAMLESS_WORKER_FD=str(child_end.fileno()),
                   SEAMLESS_WORKER_CURRENT_FD=str(current_fd),
                   SEAMLESS_WORKER_PPID=str(os.getpid()))
        if sys.version_info >= (3, 11):
            cmd = [sys.executable, "-P", "-m", "seamless.pool.worker"]
        else:
            cmd = [sys.executable, "-c",
                   "import sys; del sys.path[0]; from seamless.pool.worker import main; main()"]
        try:
            child = Child.start(cmd, env, pass_fds=[child_end.fileno(), current_fd])
        except OSError as exc:
            parent_end.close()
            child_end.close()
            os.close(current_fd)
            self._last_start_failure = f"could not start {cmd[0]}: {exc}"
            self._actions += self._scheduler.worker_died(worker.index, 0, time.monotonic())
            self._note_broken()
            return
        child_end.close()
        self._scheduler.worker_launched(worker.index)
        worker.child = child
        worker.current_fd = current_fd
        parent_end.setblocking(False)
        worker.channel = Channel(parent_end)
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.rss = 0
        worker.code_sent = set()  # a new process has received no code yet
        worker.killed_on_purpose = False
        worker.protocol_error = None
        worker.start_timeout = False
        self._selector.register(worker.channel.fileno(), selectors.EVENT_READ,
                                ("channel", worker, child))
        self._selector.register(child.pidfd, selectors.EVENT_READ, ("pidfd", worker, child))
        self._selector.register(child.stderr_fd, selectors.EVENT_READ,
                                ("stderr", worker, child))
        worker.send([("init", 0, self._init_header(worker), [], [])])

    def _init_header(self, worker: _Worker) -> dict:
        per_worker = str(max(1, machine.snapshot().cpus // self.n))
        return {"environ": dict(os.environ), "cwd": os.getcwd(), "sys_path": list(sys.path),
                "threads": {name: per_worker for name in _THREAD_VARS if name not in os.environ}}

    def _on_stderr(self, worker: _Worker):
        if not worker.child.read_stderr():
            self._selector.unregister(worker.child.stderr_fd)

    def _on_channel(self, worker: _Worker):
        try:
            frames = worker.channel.receive()
        except (EOFError, ConnectionError):  # a reset is a death with unread frames
            self._on_death(worker)
            return
        except ProtocolError as exc:
            self._kill(worker, protocol_error=str(exc))
            return
        self._handle_frames(worker, frames)

    def _handle_frames(self, worker: _Worker, frames) -> bool:
        """Route frames to their handlers; False when a frame was unexpected (worker killed)."""
        for frame in frames:
            handler = getattr(self, "_frame_" + frame.kind.replace("-", "_"), None)
            if handler is None:
                self._kill(worker, protocol_error=f"unexpected {frame.kind!r} frame from a worker")
                return False
            handler(worker, frame)
        return True

    def _check_hello_timeouts(self, now: float):
        for worker in self._workers:
            if worker.child and not worker.ready and now - worker.started_at > _HELLO_TIMEOUT:
                self._kill(worker, start_timeout=True)

    def _kill_unwanted(self, worker: _Worker):
        """Stop the body nobody wants any more, unless the worker's shared word shows it
        finished and a later body already started (that one must not fail for it)."""
        running = self._scheduler.running_rid(worker.index)
        started = int.from_bytes(os.pread(worker.current_fd, 8, 0), "little") \
            if worker.child is not None else 0
        if running is not None and started > running:
            self._actions += self._scheduler.kill_declined(worker.index, time.monotonic())
            return
        self._kill(worker, on_purpose=True)

    def _kill(self, worker: _Worker, protocol_error=None, start_timeout=False,
              on_purpose=False):
        if worker.child is None:
            return
        worker.killed_on_purpose = on_purpose
        worker.protocol_error = protocol_error
        worker.start_timeout = start_timeout
        worker.child.kill()
        self._on_death(worker)

    def _on_death(self, worker: _Worker):
        """Take the frames it sent before dying, reap it, and tell the scheduler which body it
        had started last: that one (and any whose result it still held) fails, the rest is
        requeued, and the worker is replaced."""
        child = worker.child
        if child is None:
            return
        child.reap()
        if worker.protocol_error is None:
            self._drain_channel(worker)  # everything it sent is in the channel by now
            if worker.child is not child:
                return  # a frame in it was malformed: that death was handled already
            self._take_held_frames(worker)
        started_rid = int.from_bytes(os.pread(worker.current_fd, 8, 0), "little")
        child.read_stderr()
        for fd in (worker.channel.fileno(), child.pidfd, child.stderr_fd):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                continue
        was_ready = worker.ready
        self._release(worker)
        if not was_ready and not worker.killed_on_purpose:
            self._last_start_failure = self._start_failure_text(worker, child)
        worker.exited = child
        self._actions += self._scheduler.worker_died(worker.index, started_rid,
                                                      time.monotonic())
        self._note_broken()

    def _drain_channel(self, worker: _Worker):
        """Results a worker sent just before it died are still in the channel: take them."""
        while worker.child is not None:
            try:
                frames = worker.channel.receive()
            except (EOFError, OSError, ProtocolError):
                return
            if not frames or not self._handle_frames(worker, frames):
                return

    def _take_held_frames(self, worker: _Worker):
        """Results a dead worker held back unsent (its outbox in the shared memfd): each body
        ran once and finished, so its result is delivered, not lost.  Frames it had sent
        already come twice; the second is ignored (no job is booked under that id)."""
        held = int.from_bytes(os.pread(worker.current_fd, 8, 8), "little")
        if not 0 < held <= _SHARED_SIZE - OUTBOX_OFFSET:
            return
        data = os.pread(worker.current_fd, held, OUTBOX_OFFSET)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.close()
        try:
            with Channel(ours) as reader:
                frames = reader.feed(data)
        except ProtocolError as exc:
            _log.warning("seamless: the held results of dead worker %d were unreadable: %s",
                         worker.index, exc)
            return
        self._handle_frames(worker, [f for f in frames if f.kind in ("result", "error")])

    def _note_broken(self):
        if self._scheduler.broken and self._broken is None:
            self._broken = (f"the worker pool could not start workers ({MAX_START_FAILURES} "
                            f"failed starts in a row): {self._last_start_failure}")

    def _release(self, worker: _Worker):
        """Close what the parent holds for a reaped worker: channel, pidfd, stderr pipe; its
        deferred checksums are computed here."""
        worker.channel.close()
        worker.child.release()
        os.close(worker.current_fd)
        worker.child = None
        worker.ready = False
        self._settle_pending_checksums(worker)

    def _start_failure_text(self, worker: _Worker, child: Child) -> str:
        code = child.returncode
        how = (f"did not say hello within {_HELLO_TIMEOUT:.0f} s"
               if worker.start_timeout
               else f"exited with code {code}" if code >= 0
               else f"was killed by {describe_signal(-code)}")
        tail = child.tail_text()
        return (f"worker {worker.index} {how} before it was ready"
                + (f"; its stderr ends with:\n{tail}" if tail else "; it wrote nothing to stderr"))

    def _broken_failure(self) -> Failure:
        return Failure(f"the worker pool is broken ({self._broken.splitlines()[0]})",
                       self._broken + "\n", crash={"exitcode": None, "signal": None,
                                                   "pid": None, "cause": self._broken})

    def _fail(self, action: Fail):
        """Carry out a ``Fail``: the job ends with a WorkerCrashedError-shaped failure."""
        if action.why == "broken":
            failure = self._broken_failure()
        else:
            failure = self._crash_failure(self._workers[action.worker], action.why)
        self._finish(action.job, Outcome(None, failure, 0.0))

    def _crash_failure(self, worker: _Worker, why: str) -> Failure:
        """The failure of a job whose body had started on a worker that then died."""
        child = worker.exited
        if worker.protocol_error:
            code, sig = None, signal.SIGKILL
            how, cause = "sent a malformed frame and was killed", worker.protocol_error
        elif worker.killed_on_purpose:
            code, sig = None, signal.SIGKILL
            how, cause = "was stopped", "its running work was cancelled"
        else:
            code, sig, how, cause = child.explain_exit(worker.rss)
            if code == EXIT_CHANNEL_LOST:
                cause = ("the transformation closed or replaced the worker's channel to this "
                         "process (its file descriptor), so the worker could not answer")
        when = ("while running it" if why == "crashed" else
                "after this body had finished, before its result left the worker (the body "
                "ran once; its result is lost)")
        what = (f"worker {worker.index} (pid {child.pid}) {how} {when}; {cause}; the worker "
                f"was replaced")
        tail = child.tail_text()
        text = what + "\n" + (f"\n--- captured stderr (last 64 KiB) ---\n{tail}\n" if tail else "")
        return Failure(what, text, crash={"exitcode": code, "signal": sig, "pid": child.pid,
                                          "cause": worker.protocol_error})

    # ------------------------------------------------------------ frames from workers

    def _frame_hello(self, worker, frame):
        from .. import __version__

        if frame.header.get("seamless") != __version__:
            worker.child.stderr_tail += (
                f"worker runs seamless {frame.header.get('seamless')}, the parent "
                f"{__version__} (reinstall seamless in {sys.executable})\n").encode()
            self._kill(worker)
            return
        worker.ready = True
        self._actions += self._scheduler.worker_ready(worker.index, time.monotonic())

    def _frame_heartbeat(self, worker, frame):
        worker.rss = frame.header.get("rss", 0)

    def _frame_result(self, worker, frame):
        job, actions = self._scheduler.finished(worker.index, frame.id,
                                                frame.header.get("duration"), time.monotonic())
        self._actions += actions
        if job is None:
            for fd in frame.fds:
                os.close(fd)
            return
        result, duration = wire.unpack_result(
            frame, job.work, on_release=self._result_released(worker.index, worker.pid))
        self._shm_array.add_copied(frame.header.get("copied", 0))
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
        job, actions = self._scheduler.finished(worker.index, frame.id, None,
                                                time.monotonic())
        self._actions += actions
        if job is not None:
            failure = wire.unpack_failure(frame)._replace(exception_type=frame.header.get("type"))
            self._finish(job, Outcome(None, failure, 0.0))

    def _frame_revoked(self, worker, frame):
        """The worker's answer to a revoke: dropped unstarted (requeued), or already started."""
        self._actions += self._scheduler.revoked(worker.index, frame.id,
                                                 frame.header.get("dropped", True),
                                                 time.monotonic())

    def _frame_nested_submit(self, worker, frame):
        checksum, work = wire.unpack_work(frame)
        proxy = _NestedProxy(self, worker, frame.id)
        self._nested_proxies[(worker.index, frame.id)] = proxy
        idle = self._scheduler.has_idle_worker(besides=worker.index)
        self._hooks.nested(checksum, work, proxy, self, idle)

    def _frame_nested_cancel(self, worker, frame):
        proxy = self._nested_proxies.pop((worker.index, frame.id), None)
        if proxy is not None:
            proxy.cancel()

    # ------------------------------------------------------------ sending work

    def _send(self, worker, sent: list):
        """Send ``submit`` frames for ``(request id, job)`` pairs the scheduler booked on
        ``worker`` (a dead worker's are requeued or failed when its death is seen)."""
        if worker.child is None:
            return
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

    def _finish(self, job, outcome: Outcome):
        self._hooks.complete(job, outcome)

    # ------------------------------------------------------------ shutdown

    def _shutdown(self):
        self._closed.set()
        self._dropped = self._scheduler.close()
        for worker in self._workers:
            if worker.child is not None:
                worker.send([("shutdown", 0, {}, [], [])])  # one already gone is reaped below
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        for worker in self._workers:
            if worker.child is None:
                continue
            worker.child.stop(max(0.0, deadline - time.monotonic()))
            self._release(worker)
        self._selector.close()
        os.close(self._wake)
        self._shm_array.unregister_trim_hook(self._trim_workers)
        with self._returns_lock:
            self._returns_open = False
            while self._returns:
                os.close(self._returns.popleft()[2])


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
        if self.worker.child is None:
            return  # the requester died meanwhile
        if outcome.failure is None:
            header, inline, fds, keep = wire.pack_result(outcome.result, outcome.duration)
            header["reply"] = "result"
        else:
            header, inline, fds, keep = wire.pack_failure(outcome.failure), [], [], []
            header["type"] = outcome.failure.exception_type
            header["reply"] = "error"
        self.worker.send([("nested-reply", self.rid, header, inline, fds)])  # a dead one needs none
        for seg in keep:
            seg.close()

    def run_here(self):
        self.done = True
        self.pool._nested_proxies.pop((self.worker.index, self.rid), None)
        self.worker.send([("nested-reply", self.rid, {"reply": "run-here"}, [], [])])

    def cancel(self):
        self.done = True
        self.pool._hooks.detach(self)

    def __repr__(self):
        return f"<nested request {self.rid:#x} of worker {self.worker.index}>"
