"""The backend of a pool worker's own transformations: the parent's pool.

Inside a pool worker, a body that starts transformations sends them up to the parent
(``nested-submit``); the worker's channel object does the sending (``pool.worker``).  This
adapter gives that object the ``execution.backend.Backend`` shape, so the worker's dispatcher
treats it like any other backend.  The parent owns the children's execution; the worker's job
holds the argument buffers until the parent's reply completes it.
"""

from __future__ import annotations

from ..pool.wire import INLINE_MAX

__all__ = ["ParentPool"]


class ParentPool:
    """Children of this worker's bodies, run by the parent's pool."""

    name = "parent"
    looks_up_cache = False  # the parent answers from its memory cache before queueing
    stops_abandoned = True  # the parent is told to drop the child (``nested-cancel``)
    segment_threshold = INLINE_MAX  # large arguments travel up without a copy

    def __init__(self, channel_backend):
        self._channel = channel_backend  # submit / withdraw / abandon over the worker channel

    def submit(self, job):
        self._channel.submit(job)

    def submit_nested(self, job):
        """Every child here is nested: the parent queues it ahead of top-level work."""
        self._channel.submit(job)

    def withdraw(self, job) -> bool:
        return self._channel.withdraw(job)

    def abandon(self, job):
        self._channel.abandon(job)

    def run_here(self, job) -> bool:
        """The worker's waiting thread runs children the parent declines (``run-here``)."""
        return False

    def close(self) -> list:
        """The parent's pool owns the children: nothing to stop here."""
        return []

    def forget_after_fork(self):
        """A body's forked child: the worker's channel handles that case itself."""
        return None

    def describe(self) -> str:
        return "the parent's worker pool"

    def default_nparallel(self):
        return None
