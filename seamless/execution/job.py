"""A job: one execution of a transformation checksum, shared by the handles that want it.

Latch-on (docs/transformations.md) is this object: while a checksum runs, later handles with
the same checksum attach to its job instead of starting a second execution.  The job owns the
``Work`` (argument buffers included) until it finishes; then the ``Outcome`` is handed to every
attached handle and the job is forgotten by the dispatcher.
"""

from __future__ import annotations

import threading

from .runner import Outcome, Work

__all__ = ["Job"]

QUEUED, RUNNING, FINISHED = "queued", "running", "finished"


class Job:
    """State machine queued -> running -> finished; ``handles`` are the handles waiting for it."""

    __slots__ = ("checksum", "work", "state", "outcome", "handles", "lock", "backend",
                 "backend_ref")

    def __init__(self, checksum, work: Work, backend):
        self.checksum = checksum
        self.work = work
        self.state = QUEUED
        self.outcome: Outcome | None = None
        self.handles: list = []
        self.lock = threading.Lock()
        self.backend = backend
        self.backend_ref = None  # the backend's own id for the job (a nested request id)

    def attach(self, handle) -> bool:
        """Add a waiting handle; False when the job already finished (the caller starts anew)."""
        with self.lock:
            if self.state == FINISHED:
                return False
            self.handles.append(handle)
            return True

    def detach(self, handle) -> bool:
        """Remove a handle; True when no handle waits any more."""
        with self.lock:
            if handle in self.handles:
                self.handles.remove(handle)
            return not self.handles

    def claim(self) -> bool:
        """Move queued -> running; False when someone else already took (or dropped) it."""
        with self.lock:
            if self.state != QUEUED:
                return False
            self.state = RUNNING
            return True

    def unclaim(self):
        """A staged job that never started goes back to the queue (its worker died or it
        was revoked)."""
        with self.lock:
            if self.state == RUNNING:
                self.state = QUEUED

    def drop(self) -> bool:
        """Withdraw a job nobody wants any more, if it has not started."""
        with self.lock:
            if self.state != QUEUED or self.handles:
                return False
            self.state = FINISHED
            return True

    def finish(self, outcome: Outcome):
        with self.lock:
            self.state = FINISHED
            self.outcome = outcome
            handles, self.handles = self.handles, []
        for handle in handles:
            handle._job_finished(outcome)
