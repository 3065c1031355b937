"""The in-process executor: ``execution: process``, and ``.local`` transformers in every mode.

A process-wide FIFO of jobs served by up to ``workers`` daemon threads (docs/configuration.md),
started lazily.  The threads are daemons: interpreter exit does not wait for unfinished
in-process work (docs/transformations.md).

Nesting never deadlocks: a body that waits for a job still in the queue takes it out and runs it
on its own thread (``run_here``), so a full executor whose threads all wait on children keeps
making progress.

Implements ``execution.backend.Backend``.  Whoever runs a job calls the dispatcher's
``execute(job)`` (given at construction), which looks the persistent cache up, runs the body
and completes the job.  Argument buffers stay plain bytes: nothing leaves the process.
"""

from __future__ import annotations

import collections
import threading

__all__ = ["InProcessExecutor", "in_executor_thread"]

_local = threading.local()


def in_executor_thread() -> bool:
    """True on one of the executor's threads (a body that waits may then run children here)."""
    return getattr(_local, "executor", False)


class InProcessExecutor:
    """A FIFO of jobs and the threads serving it (``execution.backend.Backend``)."""

    name = "process"
    segment_threshold = None  # bodies read the caller's own buffers
    looks_up_cache = True  # ``execute`` looks up on the executor thread, off the caller's path
    stops_abandoned = False  # threads cannot be interrupted: the body runs on (``abandon``)

    def __init__(self, nthreads: int, execute):
        self.nthreads = nthreads
        self._execute = execute
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._threads: list = []
        self._idle = 0
        self._closed = False

    def submit(self, job):
        with self._cond:
            self._queue.append(job)
            # More queued jobs than sleeping threads: grow, up to the thread budget.
            if len(self._queue) > self._idle and len(self._threads) < self.nthreads:
                t = threading.Thread(target=self._serve, daemon=True,
                                     name=f"seamless-executor-{len(self._threads)}")
                self._threads.append(t)
                t.start()
            self._cond.notify()

    def submit_nested(self, job):
        """A child of a body: the waiting body runs it itself if no thread takes it first
        (``run_here``), so plain FIFO order cannot deadlock."""
        self.submit(job)

    def withdraw(self, job) -> bool:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            return True

    def run_here(self, job) -> bool:
        """Run a still-queued job on this thread; False if a thread already took it."""
        if not self.withdraw(job):
            return False
        if job.claim():
            self._execute(job)
        return True

    def abandon(self, job):
        """A running job nobody wants: threads cannot be interrupted, so the body runs to its
        end and its result is still cached (docs/transformations.md)."""
        return None

    def describe(self) -> str:
        return f"{self.nthreads} in-process thread{'s' if self.nthreads != 1 else ''}"

    def default_nparallel(self):
        """The ``nparallel`` setting decides (docs/parallel.md)."""
        return None

    def forget_after_fork(self):
        """In a forked child the threads do not exist and nothing else is held: new threads
        start with the child's next submission to a new executor."""
        self._closed = True

    def resize(self, nthreads: int):
        """Follow a new ``workers`` setting: grow lazily, shrink as threads fall idle."""
        with self._cond:
            self.nthreads = nthreads
            self._cond.notify_all()

    def close(self) -> list:
        """Stop the threads once their current job ends; returns the jobs that never started."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        return dropped

    def _serve(self):
        _local.executor = True
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if len(self._threads) > self.nthreads:
                        self._threads.remove(me)
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._closed:
                    return
                job = self._queue.popleft()
            if job.claim():
                self._execute(job)
