"""From a started handle to a finished one: dependencies, caches, latch-on, the backend.

Lookup order (docs/caching.md, "The persistent cache"):

    handle.start()
      └─ dependencies unfinished? start them; continue when the last one finishes
      └─ checksum known ─► same checksum running here?  attach to its Job (latch-on)
                        ─► memory result map + memory buffer?  done (no thread involved)
                        ─► new Job ─► persistent lookup (off the caller's path) ─► backend
    backend: in-process threads call execute(job); the pool sends it to a worker
    complete(job, outcome): success ─► memory maps + queued persistent write; job.finish()

Backends: ``inprocess.InProcessExecutor`` (``execution: process`` and ``.local``), the worker
pool ``pool.Pool`` (``spawn``), and inside a pool worker the parent itself (children go up as
``nested-submit``).  Interface: ``submit(job)``, ``withdraw(job)``, ``abandon(job)``,
``run_here(job)``, ``close() -> unstarted jobs``.

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
from .inprocess import InProcessExecutor, in_executor_thread
from .job import Job
from .runner import Failure, Outcome, run

__all__ = ["start", "execute", "complete", "help_run", "withdraw", "close", "start_pool",
           "has_spawned", "pool_size"]

_log = logging.getLogger("seamless")
_running: dict = {}
_lock = threading.RLock()
_backends: dict = {}

#: Inside a pool worker: the backend that sends children to the parent, and the function a
#: waiting thread blocks in (it runs children the parent declined).  None in a parent.
_worker_backend = None
wait_hook = None


# ---------------------------------------------------------------- backends

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


def start_pool(n: int):
    """Create the worker pool (``spawn()``); it launches its workers in the background."""
    from .. import encoding
    from ..pool.pool import Pool
    from ..pool.wire import INLINE_MAX

    with _lock:
        pool = _backends.get("spawn")
        if pool is None:
            encoding.use_segments(INLINE_MAX)  # large inputs are born in shared memory
            pool = Pool(n, complete)
            _backends["spawn"] = pool
            _register_exit_hook()
    return pool


_exit_hook_registered = False


def _register_exit_hook():
    """At interpreter exit: cancel pool work, stop the workers (2 s, then SIGKILL).

    Registered after the cache's own flush hook, so it runs first (atexit is LIFO) and the
    cache then writes what finished."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        import atexit

        atexit.register(close)
        _exit_hook_registered = True


def has_spawned() -> bool:
    return _worker_backend is not None or "spawn" in _backends


def pool_size():
    pool = _backends.get("spawn")
    return pool.n if pool is not None else None


def become_worker(backend, hook, index: int):
    """Called once by a pool worker: children go to the parent through ``backend``."""
    from .. import encoding
    from ..pool.wire import INLINE_MAX

    global _worker_backend, wait_hook
    _worker_backend = backend
    wait_hook = hook
    encoding.use_segments(INLINE_MAX)


def _backend_for(handle):
    """``.local`` and ``execution: process`` stay in-process; ``spawn`` uses the pool."""
    if handle._local:
        return _in_process()
    if _worker_backend is not None:
        return _worker_backend
    mode = config.get("execution")
    if mode == "process":
        return _in_process()
    if mode == "spawn":
        return _backends.get("spawn") or start_pool(config.get("workers"))
    from ..errors import ConfigurationError

    raise ConfigurationError(
        f"execution {mode!r} is not available in this version of seamless; use execution: "
        f"process (the default) or spawn", key="execution", value=mode)


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
    if isinstance(backend, InProcessExecutor) or _worker_backend is not None \
            or _cache_step(cache.persistent) is None:
        backend.submit(job)  # in-process threads look the persistent cache up themselves
    else:
        _lookups().submit(job)


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
                job = self._queue.popleft()
            self._look_up(job)
            del job  # an idle thread must not keep the last job's buffers alive

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


def _record(checksum, outcome: Outcome):
    result = outcome.result
    cache.memory_results.put(checksum, result.kind, result.checksum)
    if not _is_segment(result.buffer):  # the memory cache never keeps a segment alive
        cache.memory_buffers.put(result.checksum, result.buffer)
    store = _cache_step(cache.persistent)
    if store is not None:
        _cache_step(store.write, checksum, result.kind, result.checksum, result.buffer,
                    outcome.duration)


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
    outcome = _cache_step(_persistent_hit, job.checksum) if _worker_backend is None else None
    if outcome is None:
        outcome = run(job.work)
    complete(job, outcome)


def complete(job: Job, outcome: Outcome):
    """Record a job's outcome (successes only) and hand it to every waiting handle.

    A result whose checksum a worker is still computing is handed on at once and recorded
    in the caches when the checksum arrives."""
    try:
        result = outcome.result
        if result is not None and not outcome.from_cache:
            if type(result.checksum) is PendingChecksum:
                result.checksum.add_callback(lambda cs: _record(
                    job.checksum, outcome._replace(result=result._replace(checksum=cs))))
            else:
                _record(job.checksum, outcome)
    finally:
        with _lock:
            if _running.get(job.checksum) is job:
                del _running[job.checksum]
    job.finish(outcome)


def nested_from_worker(checksum, work, proxy, run_elsewhere: bool):
    """A child that a pool worker's body started: answer from memory, latch on, queue it ahead
    of top-level work on an idle worker, or tell the requester to run it itself."""
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
        pool = _backends["spawn"]
        job = Job(checksum, work, pool)
        job.attach(proxy)
        proxy.job = job
        _running[checksum] = job
    pool.submit_front(job)


def detach_proxy(proxy):
    job = getattr(proxy, "job", None)
    if job is not None and job.detach(proxy) and job.state == "running":
        job.backend.abandon(job)


def withdraw(handle):
    """A cancelled handle leaves its job; a job that nobody wants any more is stopped."""
    job = handle._job
    if job is None or not job.detach(handle):
        return
    if job.state == "queued":
        if job.backend.withdraw(job) and job.drop():
            forget(job)
    elif job.state == "running":
        job.backend.abandon(job)


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
    with _lock:
        backends = list(_backends.values())
        _backends.clear()
    if any(b.name == "spawn" for b in backends):
        from .. import encoding

        encoding.use_segments(None)
        if config.get_setting("execution").source == "python":
            config._set_python("execution", None)  # spawn() set it; spawn() sets it anew
    for backend in backends:
        for job in backend.close():
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
    backends = list(_backends.values())
    _backends.clear()
    for backend in backends:
        forget_pool = getattr(backend, "forget_after_fork", None)  # the in-process executor
        if forget_pool is not None:                                # holds nothing to close
            forget_pool()
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


os.register_at_fork(after_in_child=_after_fork_in_child)
