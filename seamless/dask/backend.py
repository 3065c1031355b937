"""The backend of ``execution: remote``: jobs become Dask tasks (docs/scale-out.md).

Threads and data flow::

    dispatcher thread ── submit(job) ──► claim; payload + buffers (ship) ──► client.submit
                                         key seamless-tf-<checksum>            │
    client event loop  ◄── _watch(job, future): await the key; a small result ─┘
                            is gathered whole, a large one only as metadata
                            (key seamless-meta-<checksum>, on the same worker)
    completion thread  ◄── (job, what happened) ── builds the Outcome (failures: failures.py)
                            and calls hooks.complete(job, outcome), once per job

- The dispatcher looked the caches up before ``submit`` (``looks_up_cache`` False), so a cache
  hit submits nothing; a checksum whose large result this backend still holds on the cluster
  (a live ``RemoteBuffer``) is answered from it, also without submitting.
- Jobs are claimed at ``submit``: Dask queues them, not us; ``parallel()`` bounds how many
  are submitted.  ``abandon`` cancels this client's interest in the key (a task other clients
  still want runs on; ``stops_abandoned``: the dispatcher forgets the job first); the watcher
  then completes the job as failed.  A cancel that nobody here asked for (the scheduler's late
  notice about an earlier, abandoned run of the same key) resubmits the job, at most
  ``_RESENDS`` times.  ``close()`` cancels the keys still in flight and hands their jobs back.
- A large result stays on the cluster: its ``Outcome`` holds a ``RemoteBuffer`` (a remote
  buffer of execution/backend.py), fetched when the value is read, which then fills the
  caches.  Small results are fetched whole, in batches: that costs no more than their
  metadata.
- Jobs are completed by the completion thread, which is not the event loop, so completions
  may block (fetch, scatter, submit more work) without stalling Dask; only a job that never
  reached Dask (answered from a held result, or refused by ``client.submit``) is completed
  by ``submit`` itself.
- Ownership: ``_inflight`` holds each submitted job, its future and the buffers shipped with
  it until its outcome is final, so a scattered input stays on the cluster exactly while a
  job that needs it is in flight (ship.py); erred futures are released at once, so the
  scheduler forgets their keys and tracebacks.  A client seamless made (``scheduler``
  setting) is closed by ``close()``; the user's is left open.
"""

from __future__ import annotations

import collections
import threading
import weakref

from .. import cache, config
from ..checksum import _trusted
from ..encoding import Encoded
from ..errors import ConfigurationError
from ..execution.runner import Failure, Outcome
from . import connect, sharedfs, task
from .failures import failure_from_error
from .results import RemoteBuffer, SmallResult
from .ship import Shipper, task_key

__all__ = ["DaskBackend", "create"]

_CLOSE_TIMEOUT_S = 10
_RESENDS = 3


def create(hooks) -> "DaskBackend":
    """The remote backend for the configured client (``execution.backend.Backends``)."""
    _refuse_with_pool()
    client, owned = connect.client_from_config(config)
    in_worker = task.worker_process
    if not in_worker:
        task.client_process = True
        try:
            connect.check_versions(client)
        except BaseException:
            if owned:
                client.close()
            raise
    return DaskBackend(hooks, client, owned, in_worker)


def _refuse_with_pool():
    import sys

    dispatch = sys.modules.get("seamless.execution.dispatch")
    if dispatch is not None and dispatch.has_spawned():
        raise ConfigurationError(
            "execution is 'remote' but a worker pool was started by spawn(); the two are "
            "exclusive: call seamless.close() before switching to the Dask cluster, or drop "
            "spawn() to use the cluster", key="execution", value="remote")


class DaskBackend:
    name = "remote"
    segment_threshold = None  # arguments are plain bytes: Dask serialises them itself
    looks_up_cache = False
    stops_abandoned = True  # abandon() cancels the key: a later handle submits it afresh

    def __init__(self, hooks, client, owned: bool, in_worker: bool):
        self._hooks = hooks
        self._client = client
        self._scheduler_address = getattr(client.scheduler, "address", None) or "(unknown)"
        self._owned = owned
        self._in_worker = in_worker
        self._direct = connect.direct_transfers(client)
        self._shipper = Shipper(client, self._direct)
        self._inflight: dict = {}  # job -> (future, its buffers), until the job completes
        self._abandoned: set = set()  # in-flight jobs whose handles all left (cancelled)
        self._resent: dict = {}  # job -> times resubmitted after a cancel nobody here asked
        self._held: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # tf cs -> rb
        self._lock = threading.Lock()
        self._done: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="seamless-dask-completion")
        self._thread.start()
        self._to_gather: list = []  # (job, future) finished, not yet gathered (loop thread)
        self._gathering = False
        self._shared_for = None  # (cache directory, its id), per config generation
        self._shared_generation = None

    # ------------------------------------------------------------ the Backend contract

    def submit(self, job) -> None:
        if not job.claim():
            return
        held = self._held.get(job.checksum)
        if held is not None:
            self._hooks.complete(job, self._large_outcome(job, held, 0.0, from_cache=True))
            return
        if self._in_worker:
            task.secede_once()  # the body that submits this child will wait for it
        self._send(job)

    def _send(self, job):
        """Submit a claimed job's task and watch it."""
        shared = self._shared()
        try:
            payload = self._shipper.payload(job.checksum, job.work, shared)
            buffers = self._shipper.buffers(job.work, shared)
            future = self._client.submit(task.run_task, payload, buffers,
                                         key=task_key(job.checksum), pure=False)
        except Exception as exc:
            self._hooks.complete(job, _failed(
                f"it could not be submitted to the Dask scheduler at {self._address()} "
                f"({type(exc).__name__}: {exc})"))
            return
        with self._lock:
            if self._closed:
                future.release()
                closed = True
            else:
                self._inflight[job] = (future, buffers)  # the buffers keep its scatters alive
                closed = False
        if closed:
            self._hooks.complete(job, _failed("the Dask backend was closed"))
            return
        self._client.loop.add_callback(self._watch, job, future)

    submit_nested = submit

    def withdraw(self, job) -> bool:
        return False  # never queued here: submit claims at once

    def abandon(self, job) -> None:
        with self._lock:
            sent = self._inflight.get(job)
            if sent is not None:
                self._abandoned.add(job)
        if sent is not None:
            sent[0].cancel()

    def run_here(self, job) -> bool:
        return False

    def close(self) -> list:
        """Cancel this client's interest in every key still running and hand those jobs back
        (the dispatcher cancels their handles); close the client if seamless made it."""
        with self._lock:
            self._closed = True
            jobs = list(self._inflight.items())
            self._inflight.clear()
        for _job, (future, _buffers) in jobs:
            future.cancel()
        with self._cond:
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:  # closed from a completion
            self._thread.join(_CLOSE_TIMEOUT_S)
        self._shipper.clear()
        self._held.clear()
        if self._owned:
            self._client.close(timeout=_CLOSE_TIMEOUT_S)
        return [job for job, _sent in jobs]

    def forget_after_fork(self) -> None:
        """The client's loop thread does not exist in a forked child: drop it, close nothing."""
        self._closed = True
        self._inflight = {}
        self._held = weakref.WeakValueDictionary()

    def describe(self) -> str:
        return f"the Dask cluster at {self._address()}"

    def _address(self) -> str:
        return self._scheduler_address

    def default_nparallel(self) -> int | None:
        return connect.cluster_threads(self._client)

    # ------------------------------------------------------------ watching a task

    async def _watch(self, job, future):
        """On the client's event loop: wait for the key, fetch what completion needs.

        Small results join the next batched gather: one request for all the keys that
        finished meanwhile, as ``client.gather`` does.  A large one (or one of unknown type:
        the key was already in memory for another client) gets its metadata only."""
        try:
            await future._state.wait()
            status = future.status
            if status == "finished":
                if future.type is SmallResult:
                    self._to_gather.append((job, future))
                    if not self._gathering:
                        self._gathering = True
                        await self._gather_batches()
                    return
                meta = self._client.submit(task.metadata, future, pure=False,
                                           key=f"seamless-meta-{job.checksum}")
                what = ("large", await meta._result())
                meta.release()
            elif status == "error":
                what = ("error", await future._exception())
            else:
                what = ("cancelled", None)
        except BaseException as exc:  # the connection went, or the data was lost meanwhile
            what = ("error", exc)
        self._deliver(job, what)

    async def _gather_batches(self):
        """Gather every queued finished key, batch after batch, until none waits."""
        try:
            while self._to_gather:
                batch, self._to_gather = self._to_gather, []
                try:
                    values = await self._client._gather([f for _, f in batch])
                    results = [("whole", v) for v in values]
                except BaseException:  # one key lost: fetch them one by one, to know which
                    results = []
                    for _, future in batch:
                        try:
                            results.append(("whole", await future._result()))
                        except BaseException as exc:
                            results.append(("error", exc))
                for (job, _), what in zip(batch, results):
                    self._deliver(job, what)
        finally:
            self._gathering = False

    def _deliver(self, job, what):
        with self._cond:
            self._done.append((job, what))
            self._cond.notify()

    def _serve(self):
        """The completion thread: one outcome at a time, in the order the tasks ended."""
        while self._wait_for_done():
            self._finish_next()

    def _wait_for_done(self) -> bool:
        """Wait until a task ended (True) or the backend closed with none left (False)."""
        with self._cond:
            while not self._done and not self._closed:
                self._cond.wait()
            return bool(self._done)

    def _finish_next(self):
        """Complete (or resend) the oldest ended job.  A method of its own so that nothing
        of it (future, shipped buffers, outcome) outlives it while the thread waits for the
        next one: a finished job's inputs and result must leave the cluster when its handles
        go."""
        with self._cond:
            job, what = self._done.popleft()
        with self._lock:
            sent = self._inflight.pop(job, None)
            abandoned = job in self._abandoned
            self._abandoned.discard(job)
            resend = what[0] == "cancelled" and not abandoned and not self._closed \
                and self._resent.get(job, 0) < _RESENDS
            if resend:
                self._resent[job] = self._resent.get(job, 0) + 1
            else:
                self._resent.pop(job, None)
        if sent is None:
            return  # closed meanwhile: handed back by close()
        future = sent[0]
        del sent  # the outcome is final: its scattered inputs may go (ship.py)
        if resend:
            # Cancelled by nobody here: the scheduler's late notice of an earlier
            # abandoned run of the same key, or another client's forced cancel.
            self._release_now(future)
            self._send(job)
            return
        try:
            outcome = self._outcome(job, future, what)
        except Exception as exc:  # e.g. fetching a result whose worker just died
            outcome = _failed(f"its result could not be fetched from the Dask cluster at "
                              f"{self._address()} ({type(exc).__name__}: {exc})")
        del future
        self._hooks.complete(job, outcome)

    def _outcome(self, job, future, what) -> Outcome:
        kind, value = what
        if kind == "whole":
            return Outcome(Encoded(value.kind, _trusted(value.checksum), value.buffer), None,
                           value.duration)
        if kind == "large":
            result_kind, checksum, nbytes, duration, stored = value
            rb = RemoteBuffer(future, result_kind, checksum, nbytes, stored, self._read_shared,
                              self._on_fetch(job.checksum, result_kind, duration, job.work.name),
                              self._direct)
            self._held[job.checksum] = rb
            return self._large_outcome(job, rb, duration)
        self._release_now(future)  # a new submission of the key must not find this one
        if kind == "cancelled":
            return _failed(f"the Dask scheduler at {self._address()} cancelled it "
                           f"(.cancel(), or the scheduler restarted)")
        return Outcome(None, failure_from_error(value, self._client), 0.0)

    def _release_now(self, future):
        """Release an erred or cancelled future and wait until the client has dropped the key:
        ``client.submit`` of the same key would otherwise hand back this stale state."""
        future.release()
        try:
            self._client.sync(_loop_turn)  # runs after the release queued on the loop
        except Exception:  # the client is closing: no submission can follow anyway
            return

    @staticmethod
    def _large_outcome(job, rb: RemoteBuffer, duration: float, from_cache=False) -> Outcome:
        return Outcome(Encoded(rb.kind, _trusted(rb.checksum), rb), None, duration, from_cache)

    # ------------------------------------------------------------ caches

    def _shared(self):
        """``(directory, id)`` of the persistent cache the workers may share, or None."""
        generation = config.generation()
        if generation != self._shared_generation:
            store = None if self._in_worker or config.cache_is_implicit() \
                else cache.persistent()
            shared = None
            if store is not None:
                try:
                    shared = (store.directory, sharedfs.client_token(store.directory))
                except OSError:
                    shared = None
            self._shared_for, self._shared_generation = shared, generation
        return self._shared_for

    def _read_shared(self, checksum: str):
        shared = self._shared()
        return None if shared is None else sharedfs.read(shared[0], checksum)

    def _on_fetch(self, tf_checksum: str, kind: str, duration: float, label: str):
        """What a lazily fetched result does with its bytes: the caches keep them."""

        def record(checksum, buffer):
            cache.memory_buffers.put(checksum, buffer)
            if not self._in_worker:
                cache.store_result(tf_checksum, kind, checksum, buffer, duration, label)

        return record


async def _loop_turn():
    return None


def _failed(reason: str) -> Outcome:
    """The outcome of a job the machinery failed (not its body)."""
    summary = f"SeamlessError: {reason}"
    return Outcome(None, Failure(summary, summary + "\n",
                                 exception_type="seamless.errors.SeamlessError"), 0.0)
