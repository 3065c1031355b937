"""From a started handle to a finished one: dependencies, caches, latch-on, the backend.

Lookup order (docs/caching.md, "The persistent cache"):

    handle.start()
      └─ dependencies unfinished? start them; continue when the last one finishes
      └─ checksum known ─► same checksum running here?  attach to its Job (latch-on)
                        ─► memory result map + memory buffer?  done (no thread involved)
                        ─► new Job ─► persistent lookup (off the caller's path) ─► backend
    backend: in-process threads call execute(job); the pool sends it to a worker
    complete(job, outcome): success ─► memory maps + queued persistent write; job.finish()

Backends (``backend.Backend``; made per execution mode by ``backend.Backends``): ``.local``
runs in-process whatever the mode; inside a backend's worker process every child goes to the
backend given to ``nest_into`` (a pool worker: the parent, ``parent.ParentPool``).  Backends
report back through ``backend.Hooks`` (``complete``, ``execute``, ``forget``, ``nested``,
``detach``), so none imports this module.  A backend that
does not look the persistent cache up itself (``looks_up_cache``) gets only the misses of the
lookup thread here: a hit submits nothing.

Ownership: ``_running`` holds each job from submission until it finishes; the job holds its
argument buffers until then; the caches and the handles hold the result buffer afterwards.
Failures are never cached.

``os.fork()``: threads do not survive it, so in the child every backend is dropped (the pool
through ``forget_after_fork()``, which closes the child's copies of its descriptors and sends
nothing to the parent's workers), every job in ``_running`` fails (it was being run by threads
or workers of the parent), and the lock and the lookup thread are new.  The next
transformation in the child starts fresh backends; ``spawn`` stays configured, and so does
``encoding.use_segments`` (the child's new pool uses it).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading

from .. import cache, config
from ..checksum import _trusted
from ..encoding import Encoded, PendingChecksum
from .backend import Backend, Backends, Hooks, is_remote, materialize
from .inprocess import in_executor_thread
from .job import Job
from .runner import Failure, Outcome, run

__all__ = ["start", "execute", "complete", "help_run", "withdraw", "close", "backend",
           "live_backend", "default_nparallel", "has_spawned", "in_worker", "become_worker",
           "nest_into"]

_log = logging.getLogger("seamless")
_running: dict = {}
_lock = threading.RLock()

#: Inside a backend's worker process (``nest_into``): the backend its bodies' children go to,
#: and the function a waiting body blocks in.  None in a client process.
_worker_backend = None
wait_hook = None
_in_pool_worker = False


# ---------------------------------------------------------------- backends

def backend(mode: str) -> Backend:
    """The backend of an execution mode ("process", "spawn", "remote"), made on first use."""
    return _backends.get(mode)


def live_backend(mode: str) -> Backend | None:
    """The backend of ``mode`` if one exists now (nothing is made)."""
    return _backends.peek(mode)


def has_spawned() -> bool:
    """True while a worker pool exists here, and inside a pool worker."""
    return _in_pool_worker or _backends.peek("spawn") is not None


def in_worker() -> bool:
    """True inside a worker process of a backend (its children go to that backend)."""
    return _worker_backend is not None


def become_worker(channel_backend, hook):
    """Called once by a pool worker: children go to the parent through ``channel_backend``."""
    from .parent import ParentPool

    global _in_pool_worker
    _in_pool_worker = True
    nest_into(ParentPool(channel_backend), hook)


def nest_into(backend: Backend, hook):
    """Called once in a worker process of a backend: every transformation a body starts here
    goes to ``backend``, and a body waiting for one blocks in ``hook(handle)`` (which may run
    declined children, or leave the worker's thread while it waits)."""
    from .. import encoding

    global _worker_backend, wait_hook
    _worker_backend = backend
    wait_hook = hook
    encoding.use_segments(backend.segment_threshold)


def default_nparallel() -> int | None:
    """The backend's ``parallel()`` bound when none is chosen (None: the setting's default)."""
    if _worker_backend is not None:
        return _worker_backend.default_nparallel()
    return _backends.get(config.get("execution")).default_nparallel()


def _register_exit_hook():
    """At interpreter exit: cancel unfinished work, stop the backends (a pool: 2 s, then
    SIGKILL).  Registered anew whenever a backend is made, so it runs before the hooks that
    were registered earlier (atexit is LIFO), such as the cache's flush."""
    import atexit

    atexit.unregister(close)
    atexit.register(close)


def _backend_for(handle) -> Backend:
    """``.local`` stays in-process; in a pool worker children go to the parent; otherwise the
    ``execution`` setting decides."""
    if handle._local:
        return _backends.get("process")
    if _worker_backend is not None:
        return _worker_backend
    return _backends.get(config.get("execution"))


# ---------------------------------------------------------------- starting

def start(handle):
    """Called once per start of a handle (its status is already "running").

    Never blocks: unfinished dependencies, then input checksums that a pool worker is still
    computing, are waited for through callbacks; the last one dispatches the handle.
    """
    deps = handle._unfinished_dependencies()
    if deps:
        _when_all(deps, lambda dep, cb: (dep.start(), dep._add_done_callback(cb)),
                  lambda: _after_dependencies(handle))
    else:
        _after_dependencies(handle)


def _after_dependencies(handle):
    pending = handle._pending_checksums()
    if pending:
        _when_all(pending, lambda p, cb: p.add_callback(cb), lambda: _dispatch(handle))
    else:
        _dispatch(handle)


def _when_all(items, subscribe, then):
    """Call ``then()`` once every item has called back (``subscribe(item, callback)``)."""
    remaining = [len(items)]
    count_lock = threading.Lock()

    def one_done(_arg):
        with count_lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for item in items:
        subscribe(item, one_done)


def _memory_hit(checksum):
    hit = cache.memory_results.get(checksum)
    if hit is None:
        return None
    buffer = cache.memory_buffers.get(hit[1])
    if buffer is None:
        return None
    return Outcome(Encoded(hit[0], _trusted(hit[1]), buffer), None, 0.0, True)


def _dispatch(handle):
    if handle.status != "running":
        return
    resolved = handle._resolve()
    if resolved is None:  # a dependency failed: the handle has failed already
        return
    checksum, work = resolved
    hit = _memory_hit(checksum)
    if hit is not None:
        handle._job_finished(hit)
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
    if backend.looks_up_cache or _cache_step(cache.persistent) is None:
        backend.submit(job)
    else:
        _lookups().submit(job)


_LOOKUP_BATCH = 256  # jobs the lookup thread takes from its queue at once


class _LookupThread:
    """Reads the persistent cache for pool jobs, off the caller's and the pool's threads."""

    def __init__(self):
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._thread = None

    def submit(self, job):
        with self._cond:
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="seamless-cache-lookup")
                self._thread.start()
            self._cond.notify()

    def _serve(self):
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                queue = self._queue
                jobs = [queue.popleft() for _ in range(min(len(queue), _LOOKUP_BATCH))]
            self._look_up_all(jobs)
            del jobs  # an idle thread must not keep the last jobs' buffers alive

    @staticmethod
    def _look_up_all(jobs):
        """Jobs queued together are probed with one query: those without a row are misses
        at once; the others are looked up (and read) one by one."""
        recorded = _cache_step(_recorded, [job.checksum for job in jobs]) \
            if len(jobs) > 1 else None
        for job in jobs:
            if recorded is not None and job.checksum not in recorded:
                job.backend.submit(job)
            else:
                _LookupThread._look_up(job)

    @staticmethod
    def _look_up(job):
        hit = _cache_step(_persistent_hit, job.checksum)
        if hit is None:
            job.backend.submit(job)
        elif job.claim():
            complete(job, hit)


_lookup_thread = None


def _lookups() -> _LookupThread:
    global _lookup_thread
    if _lookup_thread is None:
        with _lock:
            if _lookup_thread is None:
                _lookup_thread = _LookupThread()
    return _lookup_thread


# ---------------------------------------------------------------- caches

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


def _recorded(checksums) -> set | None:
    """Which of ``checksums`` have a row in the persistent cache (None: unknown)."""
    store = cache.persistent()
    return set() if store is None else store.recorded(checksums)


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
    return Outcome(Encoded(kind, result_checksum, buffer), None, 0.0, True)


def _record(checksum, outcome: Outcome, label):
    """``label``: the function's name, which ``seamless-cache list`` shows."""
    result = outcome.result
    cache.memory_results.put(checksum, result.kind, result.checksum)
    if is_remote(result.buffer):
        return  # its fetch() fills the buffer caches (execution/backend.py)
    if not _is_segment(result.buffer):  # the memory cache never keeps a segment alive
        cache.memory_buffers.put(result.checksum, result.buffer)
    _cache_step(cache.store_result, checksum, result.kind, result.checksum, result.buffer,
                outcome.duration, label)


def _is_segment(buffer) -> bool:
    """Whether ``buffer`` is shared memory (only possible once ``seamless._ipc`` is loaded)."""
    if type(buffer) is bytes:  # every inline result: never a segment
        return False
    ipc = sys.modules.get("seamless._ipc")
    shm_array = None if ipc is None else vars(ipc).get("shm_array")  # not loaded: no segments
    return shm_array is not None and shm_array.segment_of(buffer) is not None


# ---------------------------------------------------------------- finishing

def execute(job: Job):
    """Run a claimed job here (an executor thread, or a waiting thread: run-here)."""
    outcome = _cache_step(_persistent_hit, job.checksum)
    if outcome is None:
        outcome = run(_with_local_arguments(job.work))
    complete(job, outcome)


def _with_local_arguments(work):
    """``work`` whose argument buffers are all here: remote results (a cluster's) are fetched."""
    arguments = work.arguments
    if not any(is_remote(arg.buffer) for arg in arguments.values()):
        return work
    return work._replace(arguments={name: arg._replace(buffer=materialize(arg.buffer))
                                    for name, arg in arguments.items()})


def complete(job: Job, outcome: Outcome):
    """Record a job's outcome (successes only) and hand it to every waiting handle.

    A result whose checksum a worker is still computing is handed on at once and recorded
    in the caches when the checksum arrives."""
    try:
        result = outcome.result
        if result is not None and not outcome.from_cache:
            if type(result.checksum) is PendingChecksum:
                label = job.work.name
                result.checksum.add_callback(lambda cs: _record(
                    job.checksum, outcome._replace(result=result._replace(checksum=cs)), label))
            else:
                _record(job.checksum, outcome, job.work.name)
    finally:
        with _lock:
            if _running.get(job.checksum) is job:
                del _running[job.checksum]
    job.finish(outcome)


def nested_from_worker(checksum, work, proxy, backend: Backend, run_elsewhere: bool):
    """A child that a body running on ``backend`` started: answer from memory, latch on, queue
    it ahead of top-level work, or tell the requester to run it itself."""
    hit = _memory_hit(checksum)
    if hit is not None:
        proxy._job_finished(hit)
        return
    with _lock:
        job = _running.get(checksum)
        if job is not None and job.attach(proxy):
            proxy.job = job
            return
        if not run_elsewhere:
            proxy.run_here()
            return
        job = Job(checksum, work, backend)
        job.attach(proxy)
        proxy.job = job
        _running[checksum] = job
    backend.submit_nested(job)


def detach_proxy(proxy):
    job = getattr(proxy, "job", None)
    if job is not None:
        _leave(job, proxy)


def _leave(job: Job, waiter) -> bool:
    """``waiter`` leaves ``job``; a running job nobody wants any more is abandoned (and
    forgotten first when the backend stops it, so nobody latches on to a dying job).
    True when the job is queued and nobody wants it."""
    with _lock:
        if not job.detach(waiter):
            return False
        if job.state != "running":
            return job.state == "queued"
        if job.backend.stops_abandoned and _running.get(job.checksum) is job:
            del _running[job.checksum]
    job.backend.abandon(job)
    return False


def withdraw(handle):
    """A cancelled handle leaves its job; a job that nobody wants any more is stopped."""
    job = handle._job
    if job is not None and _leave(job, handle) and job.backend.withdraw(job) and job.drop():
        forget(job)


def forget(job: Job):
    """A backend dropped a job nobody wanted before it started (a revoked staged submission)."""
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
    """Stop the backends; the handles of work that had not finished are cancelled."""
    for job in _backends.close():
        with job.lock:
            handles = list(job.handles)
        for handle in handles:
            handle.cancel()


# ---------------------------------------------------------------- os.fork()

def _after_fork_in_child():
    """At-fork hook (see the module docstring): the child's backends are new, and the jobs the
    parent's threads and workers were running fail here instead of waiting forever."""
    global _lock, _lookup_thread
    _lock = threading.RLock()
    _lookup_thread = None
    _backends.after_fork_in_child()
    jobs = list(_running.values())
    _running.clear()
    if not jobs:
        return
    from ..transformation import Transformation

    summary = (f"SeamlessError: it was started before os.fork() in the parent process "
               f"(pid {os.getppid()}) and cannot finish in this forked child (pid "
               f"{os.getpid()}); start it again in the child")
    failure = Failure(summary, summary + "\n(the threads and pool workers of the parent do "
                      "not exist in a forked child; the child's next transformation starts "
                      "its own; on this handle: .clear_exception(), then .run())\n")
    for job in jobs:
        job.lock = threading.Lock()  # a thread of the parent may have held it
        # Nested children of the parent's workers wait behind pool proxies: those belong to
        # the parent, and nothing may be sent to its workers from here.
        job.handles = [h for h in job.handles if isinstance(h, Transformation)]
        job.finish(Outcome(None, failure, 0.0))


_backends = Backends(Hooks(complete=complete, execute=execute, forget=forget,
                           nested=nested_from_worker, detach=detach_proxy),
                     config, on_new=_register_exit_hook)
os.register_at_fork(after_in_child=_after_fork_in_child)
