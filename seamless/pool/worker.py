"""A pool worker: ``python -m seamless.pool.worker``, one transformation at a time.

Threads and ownership inside the worker:

    main thread     between bodies: reads the channel itself (submit/recycle/shutdown to the
                    inbox, revokes answered at once), runs the next body, holds its result
                    in the shared outbox (tiny bodies only); sends the outbox when the inbox
                    runs dry, ``_BATCH`` results wait, or a body was not tiny.  No hand-off
                    between threads for a tiny task.
    watcher thread  while a body runs longer than ``_ENGAGE_S`` (or waits for nested
                    children): takes over the channel's read side (``read_lock``), sends the
                    outbox, answers revokes, delivers nested replies, queues the rest, and
                    sends a heartbeat (RSS, request id) every second; gives the channel back
                    when the body ends.  Parked while the worker waits for work.

- Result and error frames wait in ``_Outbox``, inside the memfd shared with the parent
  (``SEAMLESS_WORKER_CURRENT_FD``): if the worker dies before sending them, the parent reads
  them there, so a body that finished is never failed nor run again because a later one
  crashed.  A segment result (it carries a descriptor) is sent at once, after what is held.
- The channel (socketpair end inherited as ``SEAMLESS_WORKER_FD``) is owned by this process;
  EOF on it means the parent is gone: the worker exits.  Every frame leaves through
  ``Worker.send``, which first checks that the descriptor is still the channel (a body may
  close it, or close it and open something else under its number): if not, or if a send
  fails, the worker cannot answer any more and exits with ``EXIT_CHANNEL_LOST`` after one
  line on stderr.  The parent then sees a death and fails the body that had started.
- The started word (the first 8 shared bytes): the request id of the last submit this worker
  took from its inbox to run, written as it is taken and never reset.  The parent sends
  submits in increasing id order and the worker runs them in that order, so after a death an
  id at or below the word had started (it fails, never runs again) and one above it had not
  (it is requeued).
- ``revoke``: a submit still in the inbox is dropped (``revoked`` with ``{"dropped": true}``);
  one the main thread already took is answered ``{"dropped": false}``.  Only the holder of the
  channel's read side touches the inbox, so exactly one of "dropped" and "started" holds.
- Whatever cannot be delivered becomes that request's ``error``, and the worker goes on: a
  result that cannot be packed (no shared memory for its segment, e.g. a body lowered
  RLIMIT_FSIZE: SIGXFSZ is ignored, so the allocation fails with EFBIG) or whose frame cannot
  be encoded; a failure text whose ``error`` frame would exceed the 64 MiB frame limit is cut
  to its first and last 64 KiB (``wire.fitting_failure``).  After each body the worker puts
  back a soft RLIMIT_FSIZE the body changed.
- A body may ``os.fork()``.  The child (marked by an at-fork hook) never sends a frame
  (``send`` raises there): when control comes back into the worker's code in it, it flushes
  stdout/stderr and leaves with ``os._exit``: 0 after a return, the code of a ``SystemExit``,
  else 1 (after printing the failure, as Python would), never running the serve loop or the
  worker's atexit handlers.
- Input segments are mapped read-only and their descriptors closed at once (``wire``); the
  mappings go when the body's values are dropped.
- Results of 1 MiB or more travel as segments.  The main thread runs bodies with the numpy
  allocator of ``shm_array`` installed, so a large array a body makes is born in a segment
  (taken from this worker's free list when one fits): a result the body no longer references
  is *claimed* (the canonical header written in front of its data, no copy); any other is
  copied once into a segment.  The worker sends the descriptor, closes its own, hashes the
  result from its own memory and sends ``result-checksum``; the memory is unmapped here when
  the body's values are dropped.  When the parent drops the result it sends the descriptor
  back (``recycle``): the segment joins this worker's free list, already touched; the list
  trims itself after ``IDLE_TRIM_S`` without use, and at once on a trimming ``recycle``.
- Nested transformations started by a body go to the parent (``nested-submit``).  The parent
  answers with the child's result or error, or with ``run-here``: then the thread that waits
  for the child runs it itself, so nesting never deadlocks.
- The worker never opens the persistent cache (the parent owns it) and ignores SIGINT (the
  parent handles Ctrl-C); PR_SET_PDEATHSIG makes it die with the parent.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import faulthandler
import hashlib
import io
import itertools
import os
import resource
import select
import signal
import socket
import sys
import threading
import time

from seamless import machine
from seamless.errors import SeamlessError
from seamless.pool.protocol import (
    EXIT_CHANNEL_LOST,
    IDLE_TRIM_S,
    OUTBOX_OFFSET,
    Channel,
    ProtocolError,
    encode_frame,
)

__all__ = ["EXIT_CHANNEL_LOST", "main"]

_TAIL = 64 * 1024
_NESTED_BIT = 1 << 63
# While more submits wait in the inbox, results are held back and sent together, at most this
# many at a time: tiny tasks then cost one sendmsg per batch instead of one each.
_BATCH = 8
_ENGAGE_S = 0.002  # a body running longer than this gets the watcher thread on the channel
_HOLD_MAX_BODY_S = 0.0002  # only the results of bodies shorter than this are held back
_IDLE_LOOK_S = 0.01  # how often the watcher looks at a worker that waits for work
_ALLOCATOR_MIN = 1 << 20  # numpy allocations from this size on are born in segments
_ALLOCATOR_HEADROOM = 4096  # room for the canonical header in front of such an allocation


class _Tee(io.TextIOBase):
    """Writes through to the real stream and keeps the last 64 KiB of the running body."""

    def __init__(self, stream):
        self._stream = stream
        self._tail = collections.deque()
        self._size = 0
        self.lock = threading.Lock()  # replaced in a forked child (``after_fork_in_child``)

    def write(self, text):
        with self.lock:
            self._tail.append(text)
            self._size += len(text)
            while self._size > _TAIL and len(self._tail) > 1:
                self._size -= len(self._tail.popleft())
        return self._stream.write(text)

    def flush(self):
        self._stream.flush()

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return self._stream.encoding

    def isatty(self):
        return self._stream.isatty()

    @property
    def written(self) -> bool:
        """Whether anything was written since the last ``take``."""
        return self._size > 0

    def take(self) -> str:
        if not self._tail:
            return ""
        with self.lock:
            text = "".join(self._tail)[-_TAIL:]
            self._tail.clear()
            self._size = 0
        return text


def _die_with_parent(parent_pid: int):
    """PR_SET_PDEATHSIG(SIGKILL), then make sure the parent did not die before that."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return  # no prctl: channel EOF still ends the worker
    if os.getppid() != parent_pid:
        os._exit(0)


def _file_id(fd: int):
    """(device, inode) of the file descriptor ``fd`` refers to; None if it is not open."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _flush_output():
    """Flush stdout and stderr; a body may have closed the descriptors under them."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _exit_status(failure) -> tuple:
    """(exit code, text to print) with which Python ends a script whose main code ended as
    this body did: None (returned) -> 0; ``SystemExit`` -> its code, or 1 and its message;
    any other exception -> 1 and its traceback."""
    if failure is None:
        return 0, ""
    name, _, arg = failure.summary.partition(": ")
    if name != "SystemExit":
        return 1, failure.text
    if arg in ("", "None"):
        return 0, ""
    try:
        return int(arg) & 0xFF, ""
    except ValueError:
        return 1, arg + "\n"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * machine.snapshot().page_size
    except (OSError, ValueError, IndexError):
        return 0


class Worker:
    """State of this worker process; ``serve()`` is its main loop."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.forked = False  # True in a child process a body forked (``after_fork_in_child``)
        self.channel_fd = channel.fileno()
        self.channel_id = _file_id(self.channel_fd)  # a body may close or replace it
        self.stderr_id = _file_id(2)
        self.fsize_soft = machine.file_size_limit()[0]
        self.inbox: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.current = None  # request id of the running body
        self.nested: dict = {}  # nested request id -> Job waiting for the parent's reply
        self.nested_ids = itertools.count(1)
        self.run_here: dict = {}  # Job -> True once the parent declined it
        self.stdout = _Tee(sys.stdout)
        self.stderr = _Tee(sys.stderr)
        self.codebook: dict = {}  # code checksum -> FunctionCode, as the parent sent them
        self.current_word = memoryview(bytearray(8)).cast("Q")  # main() maps the shared one
        self.outbox = _Outbox(memoryview(bytearray(OUTBOX_OFFSET + 4096)))  # main() maps it
        self.out_lock = threading.Lock()  # the outbox: the main thread fills, either sends
        # The channel's read side belongs to the main thread between bodies and may pass to
        # the watcher thread while a body runs (``body_starts``/``body_ended``).
        self.read_lock = threading.Lock()
        self.read_lock.acquire()
        self.in_body = False
        self.body_seq = 0
        self.want_reader = 0  # threads waiting for nested replies: the watcher reads at once
        self.watching = False
        self.watcher_parked = False
        self.idle = True  # the main thread waits for work: the watcher has nothing to watch
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.channel_poll = select.poll()
        self.channel_poll.register(self.channel_fd, select.POLLIN)
        self.watch_poll = select.poll()
        self.watch_poll.register(self.channel_fd, select.POLLIN)
        self.watch_poll.register(self.wake_fd, select.POLLIN)

    # ------------------------------------------------------------ the channel

    def send(self, frames: list):
        """Every frame leaves through here (or ``send_encoded``): never from a forked child,
        never on a descriptor that is no longer the channel, and a failed send ends the
        worker."""
        self._deliver(self.channel.send, frames)

    def send_encoded(self, data):
        """``send`` for frames already encoded (the outbox)."""
        self._deliver(self.channel.send_encoded, data)

    def _deliver(self, send, what):
        if self.forked:
            raise SeamlessError(
                "this process was forked by a transformation body running in a pool worker; "
                "only the worker itself talks to the pool: start transformations in the body, "
                "not in the forked child")
        if _file_id(self.channel_fd) != self.channel_id:
            self.exit_channel_lost(f"descriptor {self.channel_fd}, its channel to the parent, "
                                   f"was closed or replaced by the running transformation")
        try:
            send(what)
        except (OSError, ProtocolError) as exc:
            self.exit_channel_lost(f"a send to the parent failed ({type(exc).__name__}: {exc})")

    def exit_channel_lost(self, why: str):
        """Exit at once with ``EXIT_CHANNEL_LOST``: a worker that cannot answer must not go on
        (the parent sees the death and fails the body the started word names).  One line on
        stderr first, if descriptor 2 is still the worker's own."""
        if _file_id(2) == self.stderr_id:
            line = (f"seamless worker {os.getpid()}: {why}; it cannot answer any more and exits "
                    f"with code {EXIT_CHANNEL_LOST}\n")
            with contextlib.suppress(OSError):
                os.write(2, line.encode("utf-8", "backslashreplace"))
        os._exit(EXIT_CHANNEL_LOST)

    # ------------------------------------------------------------ reading the channel

    def route(self, frames):
        """Route frames read by whichever thread holds the channel's read side: answers to
        revokes and nested replies at once, the rest to the inbox in order."""
        for frame in frames:
            kind = frame.kind
            if kind == "submit" or kind == "recycle" or kind == "shutdown":
                self.inbox.append(frame)
            elif kind == "revoke":
                self._revoke(frame.id)
            elif kind == "nested-reply":
                self._nested_reply(frame)
            else:
                raise ProtocolError(f"unexpected {kind!r} frame from the parent")

    def read_available(self, timeout: float) -> bool:
        """Read and route every frame that arrives within ``timeout`` seconds (0: only those
        already here); False when none came.  The caller holds ``read_lock``.  EOF means the
        parent is gone, unless a body closed the channel."""
        try:
            if timeout and not self.channel_poll.poll(timeout * 1000):
                return False
            frames = self.channel.receive()
        except (EOFError, OSError):
            if _file_id(self.channel_fd) != self.channel_id:
                self.exit_channel_lost(f"descriptor {self.channel_fd}, its channel to the "
                                       f"parent, was closed or replaced by the running "
                                       f"transformation")
            os._exit(0)  # the parent is gone
        except ProtocolError as exc:
            os.write(2, f"seamless worker {os.getpid()}: bad frame from the parent: {exc}\n"
                     .encode())
            os._exit(70)
        self.route(frames)
        return bool(frames)

    def _revoke(self, rid: int):
        """Drop submit ``rid`` if it still waits in the inbox; answer either way.  Only the
        holder of ``read_lock`` touches the inbox, and the main thread takes a submit from it
        (marking it started) while holding that lock: so ``dropped`` is true exactly when that
        body will never run."""
        staged = next((f for f in self.inbox if f.kind == "submit" and f.id == rid), None)
        if staged is not None:
            self.inbox.remove(staged)
            for fd in staged.fds:
                os.close(fd)
        self.send([("revoked", rid, {"dropped": staged is not None}, [], [])])

    # ------------------------------------------------------------ the watcher thread

    def watch(self):
        """Watcher thread: while a body runs longer than ``_ENGAGE_S`` (or waits for nested
        children), it takes the channel's read side from the main thread, sends what the
        outbox holds, answers revokes, delivers nested replies, queues what else arrives,
        and sends a heartbeat every second.  While bodies run it looks once per
        ``_ENGAGE_S``, while the worker waits for work once per ``_IDLE_LOOK_S``, and after a
        second without work it sleeps until the next body wakes it."""
        quiet = 0  # looks in a row that found the worker waiting for work
        while True:
            if self.idle and not self.want_reader:
                # Waiting for work: look every _IDLE_LOOK_S (a wake-up from the main thread
                # at each burst of work cost more than these looks); after a second of
                # nothing, sleep until the next body.
                quiet += 1
                with self.cond:
                    if quiet * _IDLE_LOOK_S < 1.0:
                        self.cond.wait(_IDLE_LOOK_S)
                    else:
                        self.watcher_parked = True
                        while self.watcher_parked and not self.want_reader:
                            self.cond.wait()
                continue
            quiet = 0
            seq, was_in_body = self.body_seq, self.in_body
            if not self.want_reader:
                time.sleep(_ENGAGE_S)
                if not (was_in_body and self.in_body and self.body_seq == seq):
                    continue  # tiny bodies: the main thread keeps the channel
            if not self.read_lock.acquire(blocking=False):
                continue  # no body runs: the main thread has the channel
            try:
                self.watching = True
                if self.in_body:
                    self._watch_body()
            finally:
                self.watching = False
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.wake_fd)
                self.read_lock.release()

    def _watch_body(self):
        """The running body's side of the channel (``read_lock`` held) until it ends."""
        from seamless._ipc import shm_array

        self.flush()
        next_beat = time.monotonic()
        while self.in_body:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 1.0
                with contextlib.suppress(OSError):  # a body may have closed a list entry
                    shm_array.trim_idle(IDLE_TRIM_S)
                current = self.current
                if current is not None:  # the send also notices a channel the body closed
                    self.send([("heartbeat", current, {"rss": _rss_bytes()}, [], [])])
            ready = dict(self.watch_poll.poll(max(0.0, next_beat - time.monotonic()) * 1000))
            if self.channel_fd in ready:
                self.read_available(0)

    def body_starts(self, rid: int):
        """The main thread hands the channel's read side over for the body of ``rid``."""
        self.current = rid
        self.body_seq += 1
        self.in_body = True
        self.read_lock.release()
        if self.watcher_parked:  # only after the worker was idle: once per burst of work
            self.watcher_parked = False
            with self.cond:
                self.cond.notify_all()

    def body_ended(self):
        """The main thread takes the channel's read side back (the watcher lets go at once).
        A body that closed or replaced the channel fails: the worker exits before its result
        is even held."""
        self.in_body = False
        self.current = None
        if _file_id(self.channel_fd) != self.channel_id:
            self.exit_channel_lost(f"descriptor {self.channel_fd}, its channel to the parent, "
                                   f"was closed or replaced by the running transformation")
        if self.watching:
            os.eventfd_write(self.wake_fd, 1)
        self.read_lock.acquire()

    # ------------------------------------------------------------ main loop

    def serve(self):
        """The main thread: between bodies it reads the channel itself (no hand-off between
        threads for tiny tasks); results wait in the outbox until the inbox runs dry,
        ``_BATCH`` of them wait, or a body runs long (the watcher sends them)."""
        from seamless._ipc import shm_array

        inbox = self.inbox
        while True:
            if not inbox:
                if self.read_available(0):
                    continue
                self.flush()
                self.idle = True  # the watcher parks until the next body starts
                got = self.read_available(1.0)
                self.idle = False
                if not got:
                    with contextlib.suppress(OSError):  # a body may have closed a list entry
                        shm_array.trim_idle(IDLE_TRIM_S)
                continue
            frame = inbox.popleft()
            kind = frame.kind
            if kind == "submit":
                self.current_word[0] = frame.id  # started, as far as the parent can tell
                self._run_submit(frame)
            elif kind == "recycle":
                self._recycle(frame)
            elif kind == "shutdown":
                self.flush()
                return

    def _recycle(self, frame):
        """Result segments the parent dropped go to this worker's free list, where the numpy
        allocator finds them already touched; ``trim`` empties the list."""
        from seamless._ipc import shm_array

        for fd in frame.fds:
            shm_array.recycle(fd)
        if frame.header.get("trim"):
            shm_array.trim()

    def _hold_encoded(self, chunks: list):
        """Queue an encoded result frame in the shared outbox (a dead worker's held frames
        are read by the parent, so a finished body's result is never lost); sent when the
        inbox runs dry, when ``_BATCH`` wait, or by the watcher once a body runs long.  A
        frame too large for the outbox goes at once, after those before it."""
        with self.out_lock:
            held = self.outbox.add(chunks)
            if held and self.outbox.count < _BATCH:
                return
        self.flush()
        if not held and not self.outbox.add(chunks):
            self.send_encoded(b"".join(chunks))

    def flush(self):
        """Send the held-back frames in one ``sendmsg``, then empty the outbox."""
        with self.out_lock:
            held = self.outbox.held()
            if held is not None:
                self.send_encoded(held)
                self.outbox.clear()

    def _run_submit(self, frame):
        from seamless._ipc import shm_array
        from seamless.execution.runner import failure_from_exception, run
        from seamless.pool import wire

        self.stdout.take()
        self.stderr.take()
        copied_before = shm_array.bytes_copied()
        self.body_starts(frame.id)
        try:
            _checksum, work = wire.unpack_work(frame, self.codebook)
            outcome = run(work, defer_checksum=True)
            failure = outcome.failure
        except BaseException as exc:  # unpacking failed; or a body raised KeyboardInterrupt
            failure = failure_from_exception(exc)
            if not (isinstance(exc, Exception) or self.forked):
                raise
        if self.forked:
            self.leave_forked_child(failure)
        self.body_ended()
        if self.stdout.written or self.stderr.written:
            _flush_output()  # what the body printed appears before its result is reported
        if failure is None:
            failure = self._send_result(frame.id, work, outcome,
                                        shm_array.bytes_copied() - copied_before)
        if failure is not None:
            text = failure.text + _output_sections(self.stdout.take(), self.stderr.take())
            header = wire.pack_failure(wire.fitting_failure(failure._replace(text=text)))
            header["type"] = failure.exception_type  # the class the parent re-raises
            self.flush()  # the results before it first: order is kept
            self.send([("error", frame.id, header, [], [])])
        self._restore_file_size_limit()

    def _send_result(self, rid: int, work, outcome, copied: int):
        """Send a body's result, then its deferred checksum.  None, or the failure to report
        instead when the result cannot be delivered."""
        from seamless.encoding import ClaimedBuffer
        from seamless.pool import wire

        result = outcome.result
        try:
            header, inline, fds, keep = wire.pack_result(
                result, outcome.duration, wire.input_buffers(work), copied=copied)
        except Exception as exc:  # whatever stops it (no segment for it: SharedMemoryError)
            return _undeliverable(work.name, exc)
        try:
            chunks = encode_frame("result", rid, header, inline, len(fds))
        except (TypeError, ValueError) as exc:  # above the frame limit, or not encodable
            for seg in keep:
                seg.close()
            return _undeliverable(work.name, exc)
        if fds or result.checksum is None:
            # A segment travels at once (after what is held: order is kept), and the parent
            # may be waiting for this array: send it before hashing.
            self.flush()
            self.send([("result", rid, header, inline, fds)])
        else:
            self._hold_encoded(chunks)
            if outcome.duration > _HOLD_MAX_BODY_S:
                self.flush()  # one more message is nothing next to such a body
        for seg in keep:
            seg.close()
        if result.checksum is None:
            # Deferred: the caller already has the value; the checksum follows.
            if type(result.buffer) is ClaimedBuffer:
                checksum = result.buffer.sha256()
                hashed = result.buffer.nbytes
            else:
                view = memoryview(result.buffer)
                checksum = hashlib.sha256(view).hexdigest()
                hashed = view.nbytes
            self.send([("result-checksum", rid, {"checksum": checksum, "hashed": hashed},
                        [], [])])
        return None

    def _restore_file_size_limit(self):
        """A body that lowered the soft RLIMIT_FSIZE would make later results fail to get a
        segment: put the worker's own back (kept if the body lowered the hard limit too)."""
        soft, hard = machine.file_size_limit()
        if soft != self.fsize_soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize_soft, hard))

    # ------------------------------------------------------------ forks inside a body

    def after_fork_in_child(self):
        """At-fork hook: mark a child a body forked (``send`` refuses; the worker's code
        leaves it through ``leave_forked_child``) and replace the locks that the worker's
        other threads, which do not exist in the child, may have held."""
        self.forked = True
        self.cond = threading.Condition()
        self.out_lock = threading.Lock()
        self.stdout.lock = threading.Lock()
        self.stderr.lock = threading.Lock()

    def leave_forked_child(self, failure):
        """Control came back into the worker's code in a forked child: end it as Python ends a
        script (0 after a return, a SystemExit's code, else 1 after printing the failure),
        with no frame sent, no serve loop and none of the worker's atexit handlers."""
        code, message = _exit_status(failure)
        if message:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(message)
        _flush_output()
        os._exit(code)

    # ------------------------------------------------------------ nested children

    def submit_nested(self, job):
        """Backend ``submit`` in a worker: send the child to the parent."""
        from seamless.pool import wire

        rid = _NESTED_BIT | next(self.nested_ids)
        with self.cond:
            self.nested[rid] = job
        header, inline, fds, keep = wire.pack_work(job.work, job.checksum)
        try:
            self.send([("nested-submit", rid, header, inline, fds)])
        finally:
            for seg in keep:
                seg.close()
        job.backend_ref = rid

    def _nested_reply(self, frame):
        from seamless.execution import dispatch
        from seamless.execution.runner import Outcome
        from seamless.pool import wire

        with self.cond:
            job = self.nested.pop(frame.id, None)
        if job is None:
            for fd in frame.fds:
                os.close(fd)
            return
        reply = frame.header["reply"]
        if reply == "run-here":
            with self.cond:
                self.run_here[job] = True
                self.cond.notify_all()
            return
        if reply == "result":
            result, duration = wire.unpack_result(frame, job.work)
            outcome = Outcome(result, None, duration)
        else:
            outcome = Outcome(None, wire.unpack_failure(frame)._replace(
                exception_type=frame.header.get("type")), 0.0)
        if job.claim():
            dispatch.complete(job, outcome)

    def wait_for(self, handle):
        """Block the calling thread until ``handle`` is done, running declined children here.

        Sleeps on ``cond``, woken by the handle's completion callback or by a ``run-here``
        reply: no polling."""
        finished = []

        def on_finished(_handle):
            with self.cond:
                finished.append(True)
                self.cond.notify_all()

        handle._add_done_callback(on_finished)
        with self.cond:  # nested replies must be read now, not after _ENGAGE_S
            self.want_reader += 1
            self.cond.notify_all()
        try:
            self._wait_for(finished)
        finally:
            with self.cond:
                self.want_reader -= 1

    def _wait_for(self, finished: list):
        from seamless.execution import dispatch

        while True:
            with self.cond:
                ready = [job for job in self.run_here if job.state == "queued"]
                for job in ready:
                    del self.run_here[job]
                if not ready:
                    if finished:
                        return
                    self.cond.wait()
                    continue
            for job in ready:
                if job.claim():
                    dispatch.execute(job)
                    if self.forked:  # that child's body forked, and this is the child
                        self.leave_forked_child(job.outcome.failure)

    def withdraw(self, job) -> bool:
        """Backend ``withdraw``: tell the parent this child is no longer needed."""
        rid = getattr(job, "backend_ref", None)
        with self.cond:
            if rid is None or self.nested.pop(rid, None) is None:
                return False
        self.send([("nested-cancel", rid, {}, [], [])])
        return True


class _ParentBackend:
    """The backend of ``dispatch`` inside a worker: children go to the parent's pool."""

    name = "parent"

    def __init__(self, worker: Worker):
        self.worker = worker

    def submit(self, job):
        self.worker.submit_nested(job)

    def withdraw(self, job) -> bool:
        return self.worker.withdraw(job)

    def run_here(self, job) -> bool:
        return False

    def abandon(self, job):
        self.worker.withdraw(job)

    def close(self) -> list:
        return []


def _undeliverable(name: str, exc: BaseException):
    """``wire.undeliverable``, naming the exception's class so the parent can raise it too."""
    from seamless.errors import qualified_name
    from seamless.pool import wire

    return wire.undeliverable(name, exc)._replace(exception_type=qualified_name(type(exc)))


def _output_sections(out: str, err: str) -> str:
    text = ""
    if out:
        text += "\n--- captured stdout (last 64 KiB) ---\n" + out
    if err:
        text += "\n--- captured stderr (last 64 KiB) ---\n" + err
    return text


def _apply_init(header: dict):
    """The parent's environment, cwd and sys.path; the worker's own variables stay."""
    own = {k: v for k, v in os.environ.items() if k.startswith("SEAMLESS_WORKER_")}
    os.environ.clear()
    os.environ.update(header["environ"])
    os.environ.update(own)
    os.chdir(header["cwd"])
    sys.path[:] = header["sys_path"]
    for name, value in header["threads"].items():
        os.environ.setdefault(name, value)


class _Outbox:
    """Result and error frames held back, in memory the parent can read after a death.

    Layout of the shared memfd (``SEAMLESS_WORKER_CURRENT_FD``, made by the parent): bytes 0-7
    the started word, 8-15 the number of frame bytes held, then the frames as sent.  The
    length is written after the bytes it covers, so a worker killed mid-write leaves only
    whole frames counted; frames sent but not yet cleared reach the parent twice, and it
    ignores the second copy (an id it no longer books)."""

    def __init__(self, mem: memoryview):
        self.length = mem[8:OUTBOX_OFFSET].cast("Q")
        self.buf = mem[OUTBOX_OFFSET:]
        self.used = 0
        self.count = 0

    def add(self, chunks: list) -> bool:
        """Append one encoded frame; False when it does not fit."""
        n = sum(len(c) for c in chunks)
        if self.used + n > len(self.buf):
            return False
        for chunk in chunks:
            end = self.used + len(chunk)
            self.buf[self.used:end] = chunk
            self.used = end
        self.length[0] = self.used
        self.count += 1
        return True

    def held(self):
        return self.buf[:self.used] if self.used else None

    def clear(self):
        self.length[0] = 0
        self.used = 0
        self.count = 0


def _map_shared(fd: int):
    """The started word and the outbox, in the memfd the parent reads after a death."""
    import mmap

    mapping = mmap.mmap(fd, os.fstat(fd).st_size)
    os.close(fd)
    mem = memoryview(mapping)
    return mem[:8].cast("Q"), _Outbox(mem)


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A body that lowers RLIMIT_FSIZE makes segment allocations fail with EFBIG, reported as
    # that body's error, instead of killing the worker (CPython ignores it too; made sure).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _die_with_parent(int(os.environ["SEAMLESS_WORKER_PPID"]))
    faulthandler.enable()
    sock = socket.socket(fileno=int(os.environ["SEAMLESS_WORKER_FD"]))
    sock.set_inheritable(False)  # commands a body starts inherit none of the pool's descriptors
    channel = Channel(sock)
    init = channel.receive_blocking()
    if init.kind != "init":
        raise SystemExit(f"seamless worker: expected an init frame, got {init.kind!r}")
    _apply_init(init.header)
    worker = Worker(channel)
    # Registered before dispatch is imported, so it runs first in a forked child: dispatch's
    # hook fails the in-flight nested jobs there, whose callbacks take the new ``cond``.
    os.register_at_fork(after_in_child=worker.after_fork_in_child)
    worker.current_word, worker.outbox = _map_shared(
        int(os.environ["SEAMLESS_WORKER_CURRENT_FD"]))
    sys.stdout, sys.stderr = worker.stdout, worker.stderr

    import seamless
    import seamless._ipc
    from seamless import config
    from seamless.execution import dispatch

    config._set_python("cache", False)  # the parent owns the persistent cache
    # Bodies run in this thread: their large numpy allocations are born in segments, so a
    # result such as ``a * 2`` travels without a copy (docs/worker-pool.md, "What travels how").
    seamless._ipc.shm_array.install_allocator(_ALLOCATOR_MIN, _ALLOCATOR_HEADROOM)
    dispatch.become_worker(_ParentBackend(worker), worker.wait_for)
    sock.setblocking(False)  # the main thread reads what is there, and polls when idle
    threading.Thread(target=worker.watch, name="seamless-worker-watcher", daemon=True).start()
    hello = {"pid": os.getpid(), "python": sys.version.split()[0],
             "seamless": seamless.__version__, "ipc": seamless._ipc.backends()}
    worker.send([("hello", 0, hello, [], [])])
    worker.serve()
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()
