"""What a Dask worker runs for a transformation: the pool worker's execution code.

``run_task(payload, buffers)`` is the function of every ``seamless-tf-<checksum>`` key:

    payload (marshal bytes: code text, input checksums)  ─┐
    buffers {checksum: bytes | array | upstream result    ├─► Work ─► execution.runner.run
             | None: read from the shared cache dir}      ─┘              │
    SmallResult | LargeResult  ◄── (raise BodyFailed on failure) ◄────────┘

A large array result that only the body holds is not copied: the runner hands it over in place
(``encoding.in_place_threshold``), this module hashes it where it is and keeps it as a
``SplitCanonical`` (results.py), which Dask sends without a copy on this side.

The function itself travels by reference (this module's name), the body as its code text: no
function object is ever pickled.  The buffers a task receives belong to the worker's data
store (Dask frees them); the result it returns becomes the key's data.

Nested transformations: the first task in a worker process makes that process a seamless
client of the same scheduler (``execution: remote`` through the worker's own client; the
persistent cache off: only clients write ``seamless.db``).  A body that submits a child
secedes from the worker's thread pool (``distributed.secede``, once per task) so the child can
run even on a one-thread worker; the task rejoins when its body is done.  A worker thread in
the client's own process (``LocalCluster(processes=False)``) changes nothing: the client's
settings already send children to the cluster.
"""

from __future__ import annotations

import hashlib
import marshal
import threading

from .. import encoding
from ..checksum import _trusted
from ..code import FunctionCode, ModuleEntry
from ..encoding import ClaimedBuffer, Encoded
from ..execution.runner import Work, run
from . import sharedfs
from .failures import BodyFailed
from .results import (
    LARGE,
    LargeResult,
    SmallResult,
    SplitCanonical,
    buffer_nbytes,
    result_class,
    transportable,
    whole,
)

__all__ = ["run_task", "metadata", "in_task", "secede_once"]

_state = threading.local()  # .task: this thread runs a task now; .seceded: it left the pool
_setup_lock = threading.Lock()
_process_ready = False
#: Set by the client-side backend: this process is a client (a worker thread here must not
#: change its settings).
client_process = False
#: Set by the first task in a worker process of its own: its backend uses the worker's client.
worker_process = False


def run_task(payload: bytes, buffers: dict):
    """Run one transformation on this worker; raise ``BodyFailed`` if its body fails."""
    _prepare_process()
    (checksum, name, code, params, arguments, values, functions, modules,
     shared) = marshal.loads(payload)
    work = Work(name, FunctionCode(*code), params,
                {n: Encoded(kind, _trusted(cs), _buffer(buffers, cs, shared))
                 for n, (kind, cs) in arguments.items()},
                {n: Encoded(kind, _trusted(cs), _buffer(buffers, cs, shared))
                 for n, (kind, cs) in values.items()},
                {n: FunctionCode(*c) for n, c in functions.items()},
                {n: ModuleEntry(*m) for n, m in modules.items()})
    del buffers
    _state.task, _state.seceded = True, False
    try:
        outcome = run(work, defer_checksum=True)
    finally:
        _state.task = False
        if _state.seceded:
            import distributed

            _state.seceded = False
            distributed.rejoin()
    failure = outcome.failure
    if failure is not None:
        raise BodyFailed(failure.summary, failure.text, failure.exception_type)
    checksum, buffer = _hashed(outcome.result)
    cls = result_class(buffer_nbytes(buffer))
    stored = cls is LargeResult and shared is not None \
        and sharedfs.visible(*shared) and sharedfs.write(shared[0], checksum, whole(buffer))
    return cls(outcome.result.kind, checksum, transportable(buffer), outcome.duration, stored)


def _hashed(result) -> tuple:
    """``(checksum, buffer)`` of an encoded result; one handed over in place (checksum None)
    is hashed where it is and becomes a ``SplitCanonical``."""
    claimed = result.buffer
    if result.checksum is not None:
        return str(result.checksum), claimed
    if type(claimed) is not ClaimedBuffer or claimed.segment is not None:
        raise RuntimeError(f"a Dask worker got a result of kind {result.kind} without a "
                           f"checksum in a {type(claimed).__name__}; only arrays handed over "
                           f"in place are hashed here")
    split = SplitCanonical(claimed.prefix, claimed.array)
    split.array.flags.writeable = False  # the body has gone: nobody else holds it
    hasher = hashlib.sha256(split.prefix)
    hasher.update(split.payload())
    return hasher.hexdigest(), split


def metadata(result) -> tuple:
    """The value of ``seamless-meta-<checksum>``: a large result's fields without its bytes,
    ``(kind, checksum, nbytes, duration, stored)``."""
    return result.kind, result.checksum, buffer_nbytes(result.buffer), result.duration, \
        result.stored


def _buffer(buffers: dict, checksum: str, shared):
    """An input's bytes: shipped, an upstream task's result, or the shared directory's file."""
    value = buffers[checksum]
    if type(value) in (SmallResult, LargeResult):
        return whole(value.buffer)  # a result held here, maybe split: joined for this task
    if value is None:
        data = sharedfs.read(shared[0], checksum)
        if data is None:
            raise RuntimeError(
                f"input buffer {checksum} is missing or corrupt in the cache directory "
                f"{shared[0]} that this worker shares with the client (removed meanwhile?); "
                f"run the transformation again")
        return data
    return value


def _prepare_process():
    """Once per worker process: children of bodies go to the cluster, the cache stays off."""
    global _process_ready, worker_process
    if _process_ready:
        return
    with _setup_lock:
        if _process_ready or client_process:
            _process_ready = True
            return
        encoding.in_place_threshold = LARGE
        import distributed

        from .. import config

        client = distributed.get_client()
        config._set_python("cache", False)
        config._set_python("dask_client", client)
        config._set_python("execution", "remote")
        worker_process = True
        _process_ready = True


def in_task() -> bool:
    """True on a worker thread that is running a task's body."""
    return getattr(_state, "task", False)


def secede_once():
    """Called before a body's thread submits a child: leave the worker's thread pool once."""
    if getattr(_state, "task", False) and not _state.seceded:
        import distributed

        distributed.secede()
        _state.seceded = True
