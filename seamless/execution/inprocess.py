"""The in-process executor: ``execution: process``, and ``.local`` transformers in every mode.

A process-wide FIFO of jobs served by up to ``workers`` daemon threads (docs/configuration.md),
started lazily.  The threads are daemons: interpreter exit does not wait for unfinished in-process work
(docs/transformations.md).

Nesting never deadlocks: a body that waits for a job still in the queue takes it out and runs it
on its own thread (``run_here``), so a full executor whose threads all wait on children keeps
making progress.

Backend interface (shared with the pool and, later, the cluster): ``submit(job)`` queues a job
and returns at once; ``withdraw(job)`` removes a queued job nobody wants; ``run_here(job)`` runs
a queued job on the calling thread if it has not started; ``close()`` stops taking work.
Whoever runs a job calls ``dispatch.execute(job)``, which does the cache work around the body.
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
    name = "process"

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
