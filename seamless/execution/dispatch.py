"""From a started handle to a finished one: dependencies, caches, latch-on, the backend.

Lookup order (identity-and-cache.md, 4.6):

    handle.start()
      └─ dependencies unfinished? start them; continue when the last one finishes
      └─ checksum known ─► same checksum running here?  attach to its Job (latch-on)
                        ─► memory result map + memory buffer?  done (no thread involved)
                        ─► new Job ─► backend.submit(job)
    executor thread: execute(job)
      └─ persistent cache hit (read + verified off the caller's path)?  done
      └─ runner.run(work) ─► success: memory maps + queued persistent write ─► job.finish()

Ownership: the dispatcher's ``_running`` map holds each job from submission until it
finishes; the job holds its argument buffers until then; the caches and the handles hold the
result buffer afterwards.  Failures are never cached.
"""

from __future__ import annotations

import logging
import threading

from .. import cache, config
from ..encoding import Encoded
from .inprocess import InProcessExecutor, in_executor_thread
from .job import Job
from .runner import Outcome, run

__all__ = ["start", "execute", "help_run", "close", "backend_name"]

_log = logging.getLogger("seamless")
_running: dict = {}
_lock = threading.Lock()
_backends: dict = {}


def _in_process() -> InProcessExecutor:
    workers = config.get("workers")
    backend = _backends.get("process")
    if backend is None:
        with _lock:
            backend = _backends.get("process")
            if backend is None:
                backend = InProcessExecutor(workers, execute)
                _backends["process"] = backend
    elif backend.nthreads != workers:
        backend.resize(workers)
    return backend


def _backend_for(handle):
    """The backend a handle runs on: ``.local`` and ``execution: process`` stay in-process."""
    if handle._local:
        return _in_process()
    mode = config.get("execution")
    if mode == "process":
        return _in_process()
    from ..errors import ConfigurationError

    raise ConfigurationError(
        f"execution {mode!r} is not available in this version of seamless; use execution: "
        f"process (the default)", key="execution", value=mode)


def backend_name() -> str:
    return config.get("execution")


def start(handle):
    """Called once per start of a handle (its status is already "running")."""
    deps = handle._unfinished_dependencies()
    if not deps:
        _dispatch(handle)
        return
    remaining = [len(deps)]
    count_lock = threading.Lock()

    def one_done(_dep):
        with count_lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            _dispatch(handle)

    for dep in deps:
        dep.start()
        dep._add_done_callback(one_done)


def _dispatch(handle):
    if handle.status != "running":
        return
    resolved = handle._resolve()
    if resolved is None:  # a dependency failed: the handle has failed already
        return
    checksum, work = resolved
    hit = cache.memory_results.get(checksum)
    if hit is not None:
        buffer = cache.memory_buffers.get(hit[1])
        if buffer is not None:
            handle._job_finished(Outcome(Encoded(hit[0], hit[1], buffer), None, 0.0))
            return
    backend = _backend_for(handle)
    with _lock:
        job = _running.get(checksum)
        if job is not None and job.attach(handle):
            handle._job = job
            return
        job = Job(checksum, work, backend)
        job.attach(handle)
        handle._job = job
        _running[checksum] = job
    backend.submit(job)


def _persistent_hit(checksum):
    store = cache.persistent()
    if store is None:
        return None
    row = store.lookup(checksum)
    if row is None:
        return None
    kind, result_checksum = row
    buffer = store.read_buffer(result_checksum)
    if buffer is None:
        return None
    cache.memory_results.put(checksum, kind, result_checksum)
    cache.memory_buffers.put(result_checksum, buffer)
    return Outcome(Encoded(kind, result_checksum, buffer), None, 0.0)


def _cache_step(step, *args):
    """Run a persistent-cache step for a job; its failure never fails the transformation.

    The cache reports its own problems as ``CacheWarning``; where warnings are errors
    (``-W error``) such a warning arrives here as an exception: it is logged, and the job goes
    on from memory (a lookup counts as a miss, a write is skipped).
    """
    try:
        return step(*args)
    except Exception as exc:
        _log.warning("persistent cache: %s; continuing from memory",
                     f"{type(exc).__name__}: {exc}")
        return None


def execute(job: Job):
    """Run a claimed job (on an executor thread, or on a waiting thread: run-here)."""
    try:
        outcome = _cache_step(_persistent_hit, job.checksum)
        if outcome is None:
            outcome = run(job.work)
            if outcome.result is not None:
                _record(job.checksum, outcome)
    finally:
        with _lock:
            if _running.get(job.checksum) is job:
                del _running[job.checksum]
    job.finish(outcome)


def _record(checksum, outcome: Outcome):
    result = outcome.result
    cache.memory_results.put(checksum, result.kind, result.checksum)
    cache.memory_buffers.put(result.checksum, result.buffer)
    store = _cache_step(cache.persistent)
    if store is not None:
        _cache_step(store.write, checksum, result.kind, result.checksum, result.buffer,
                    outcome.duration)


def withdraw(handle):
    """A cancelled handle leaves its job; an unstarted job that nobody wants is dropped."""
    job = handle._job
    if job is None or not job.detach(handle):
        return
    if job.backend.withdraw(job) and job.drop():
        with _lock:
            if _running.get(job.checksum) is job:
                del _running[job.checksum]


def help_run(handle):
    """Before a body blocks on ``handle``: run it (and its queued dependencies) right here."""
    if not in_executor_thread():
        return
    for dep in handle._dependencies():
        help_run(dep)
    job = handle._job
    if job is not None and job.state == "queued":
        job.backend.run_here(job)


def close():
    """Stop the backends; the handles of work that had not started are cancelled."""
    with _lock:
        backends = list(_backends.values())
        _backends.clear()
    for backend in backends:
        for job in backend.close():
            with job.lock:
                handles = list(job.handles)
            for handle in handles:
                handle.cancel()
