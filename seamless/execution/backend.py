"""The execution backend contract, and the one place that picks a backend for a mode.

A backend runs the jobs the dispatcher (``execution.dispatch``) gives it and reports how each
one ended.  Three implement ``Backend``: the in-process executor (``execution: process`` and
``.local``), the worker pool (``spawn``) and the Dask backend (``remote``); inside a pool worker
the parent's pool is reached through ``execution.parent``.

Data flow::

    dispatch ──submit(job)──► backend ──job.claim()──► runs job.work somewhere
        ▲                                                  │
        └────────── hooks.complete(job, outcome) ◄─────────┘   (any thread, once per job)

Ownership:
- The dispatcher owns every ``Job`` (its running map) from submission until
  ``hooks.complete`` or ``hooks.forget``; the job's ``Work`` holds the argument buffers until
  then.  A backend keeps a reference only while it may still run or report the job.
- A backend runs a job only after ``job.claim()`` succeeded (False: someone else took it, or the
  dispatcher dropped it); every claimed job ends in exactly one ``hooks.complete`` (a
  ``Failure`` outcome when it crashed, was stopped or the backend closed).  A job it drops
  unclaimed is handed back through ``hooks.forget`` or by ``close()``.
- The result buffer in the ``Outcome`` goes to the caches and the handles; the backend keeps
  nothing of it (a pool segment is released by whoever holds it last).  A backend whose results
  stay where they were computed (a cluster) gives a *remote buffer* instead: an object with
  ``_seamless_remote = True``, ``nbytes`` and a thread-safe ``fetch()`` that moves the bytes
  once and itself puts them in the memory and persistent caches.  The dispatcher records only
  the checksum mapping for it; ``materialize()`` is called where bytes are read (a handle's
  ``.value``, an argument of a body that runs here).
- The backend owns its threads, processes, descriptors and connections, and frees them in
  ``close()``; in a forked child ``forget_after_fork()`` drops them without touching the
  parent's.

Backends are made by ``Backends.get(mode)``, which calls a factory ``create(hooks)``; the Dask
backend is ``seamless.dask.backend.create(hooks: Hooks) -> Backend``, imported only when
``execution: remote`` is first used.  No backend imports the dispatcher: everything a backend
calls back is in ``Hooks``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

__all__ = ["Backend", "Hooks", "Backends", "MODES", "is_remote", "materialize"]

#: The execution modes of the configuration, each served by one backend.
MODES = ("process", "spawn", "remote")


class Hooks(NamedTuple):
    """What the dispatcher offers a backend (passed to its factory)."""

    #: ``complete(job, outcome)``: record a claimed job's outcome and wake its handles.
    complete: Callable
    #: ``execute(job)``: run a claimed job on the calling thread, with the cache steps around
    #: the body, then complete it (the in-process executor's threads call this).
    execute: Callable
    #: ``forget(job)``: a job the backend dropped unclaimed (nobody wants it) leaves the
    #: running map.
    forget: Callable
    #: ``nested(checksum, work, proxy, backend, run_elsewhere)``: a child transformation that a
    #: body running on ``backend`` started; ``proxy`` stands in for the waiting handle (it has
    #: ``_job_finished(outcome)`` and ``run_here()``).
    nested: Callable
    #: ``detach(proxy)``: the body that waited on ``proxy`` no longer wants the child.
    detach: Callable


@runtime_checkable
class Backend(Protocol):
    """What the dispatcher needs of a backend; every method returns without waiting for work."""

    #: The execution mode served: "process", "spawn", "remote" ("parent" inside a pool worker).
    name: str
    #: Arguments of this many bytes or more are built in shared-memory segments while the
    #: backend exists (None: plain bytes), so they travel to worker processes without a copy.
    segment_threshold: int | None
    #: True: the backend's runner looks the persistent cache up itself (through
    #: ``hooks.execute``); False: the dispatcher looks up first, and a hit submits nothing.
    looks_up_cache: bool
    #: True: ``abandon`` stops a claimed job (it then completes with a failure), so the
    #: dispatcher forgets the job first and a later handle of that checksum runs it afresh;
    #: False: an abandoned job runs to its end, and later handles latch on to it.
    stops_abandoned: bool

    def submit(self, job) -> None:
        """Queue a new job (any thread, never blocks); completion comes through ``hooks``."""

    def submit_nested(self, job) -> None:
        """Queue a child of a body running on this backend, ahead of top-level work."""

    def withdraw(self, job) -> bool:
        """A queued job lost its last handle (caller's thread): True if it will not be run."""

    def abandon(self, job) -> None:
        """A claimed job lost its last handle: stop it if possible; it still completes once."""

    def run_here(self, job) -> bool:
        """A thread of this backend is about to wait for ``job``: run it here if still queued."""

    def close(self) -> list:
        """Stop (bounded wait) and free everything; return the jobs it will not complete (the
        dispatcher cancels their handles)."""

    def forget_after_fork(self) -> None:
        """In a forked child: close this copy's descriptors; touch nothing the parent owns."""

    def describe(self) -> str:
        """A phrase for messages, e.g. "a pool of 4 workers"."""

    def default_nparallel(self) -> int | None:
        """The ``parallel()`` bound when none is chosen (None: the ``nparallel`` setting)."""


def is_remote(buffer) -> bool:
    """Whether ``buffer`` is a remote buffer (its bytes are elsewhere until fetched)."""
    return getattr(buffer, "_seamless_remote", False) is True


def materialize(buffer):
    """The bytes of ``buffer``: a remote buffer is fetched (once), any other is returned."""
    return buffer.fetch() if is_remote(buffer) else buffer


# ---------------------------------------------------------------- the registry


def _create_process(hooks: Hooks, settings) -> Backend:
    from .inprocess import InProcessExecutor

    return InProcessExecutor(settings.get("workers"), hooks.execute)


def _create_spawn(hooks: Hooks, settings) -> Backend:
    from ..pool.pool import Pool

    return Pool(settings.get("workers"), hooks)


def _create_remote(hooks: Hooks, settings) -> Backend:
    try:
        from ..dask import backend as dask_backend
    except ImportError as exc:
        if exc.name not in ("seamless.dask", "seamless.dask.backend"):
            raise
        from ..errors import ConfigurationError

        raise ConfigurationError(
            "execution 'remote' is not available in this version of seamless; use execution: "
            "process (the default) or spawn", key="execution", value="remote") from None
    return dask_backend.create(hooks)


_FACTORIES: dict[str, Callable[[Hooks, Any], Backend]] = {
    "process": _create_process, "spawn": _create_spawn, "remote": _create_remote}


class Backends:
    """The live backends of this process, at most one per mode, made on first use."""

    def __init__(self, hooks: Hooks, settings, on_new: Callable[[], None]):
        self._hooks = hooks
        self._settings = settings  # seamless.config: get(), get_setting(), _set_python()
        self._on_new = on_new  # called after a backend is made (the dispatcher's exit hook)
        self._live: dict = {}
        self._lock = threading.Lock()
        self._segments: int | None = None

    def get(self, mode: str) -> Backend:
        """The backend of ``mode``, made (and its segment threshold applied) if none is live."""
        backend = self._live.get(mode)
        if backend is None:
            with self._lock:
                backend = self._live.get(mode)
                if backend is None:
                    backend = _FACTORIES[mode](self._hooks, self._settings)
                    self._live[mode] = backend
                    self._use_segments()
            self._on_new()
        elif mode == "process" and backend.nthreads != self._settings.get("workers"):
            backend.resize(self._settings.get("workers"))  # threads follow ``workers``
        return backend

    def peek(self, mode: str) -> Backend | None:
        """The live backend of ``mode``, or None (nothing is made)."""
        return self._live.get(mode)

    def close(self) -> list:
        """Stop every backend; return the jobs that never started.

        ``spawn()`` set ``execution: spawn`` from Python; closing its pool clears that, so the
        next ``spawn()`` sets it anew and plain runs go back to the configured mode."""
        with self._lock:
            backends = list(self._live.values())
            self._live.clear()
            self._use_segments()
        if "spawn" in (b.name for b in backends) \
                and self._settings.get_setting("execution").source == "python":
            self._settings._set_python("execution", None)
        dropped = []
        for backend in backends:
            dropped += backend.close()
        return dropped

    def after_fork_in_child(self):
        """Drop every backend of the parent (their threads do not exist here)."""
        self._lock = threading.Lock()
        backends = list(self._live.values())
        self._live.clear()
        for backend in backends:
            backend.forget_after_fork()

    def _use_segments(self):
        """The smallest threshold of the live backends (None when none wants segments)."""
        from .. import encoding

        wanted = [b.segment_threshold for b in self._live.values()
                  if b.segment_threshold is not None]
        threshold = min(wanted) if wanted else None
        if threshold != self._segments:
            self._segments = threshold
            encoding.use_segments(threshold)
