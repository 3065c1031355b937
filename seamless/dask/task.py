"""What a Dask worker runs for a transformation: the pool worker's execution code.

``run_task(payload, buffers)`` is the function of every ``seamless-tf-<checksum>`` key:

    payload (marshal bytes: code text, input checksums)  ─┐
    buffers {checksum: bytes | array | upstream result    ├─► Work ─► execution.runner.run
             | None: read from the shared cache dir}      ─┘              │
    SmallResult | LargeResult  ◄── (raise BodyFailed on failure) ◄────────┘

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

import marshal
import threading

from ..checksum import _trusted
from ..code import FunctionCode, ModuleEntry
from ..encoding import Encoded
from ..execution.runner import Work, run
from . import sharedfs
from .failures import BodyFailed
from .results import LargeResult, SmallResult, result_class, transportable

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
        outcome = run(work)
    finally:
        _state.task = False
        if _state.seceded:
            import distributed

            _state.seceded = False
            distributed.rejoin()
    failure = outcome.failure
    if failure is not None:
        raise BodyFailed(failure.summary, failure.text, failure.exception_type)
    result = outcome.result
    buffer = result.buffer
    nbytes = len(buffer) if type(buffer) is bytes else memoryview(buffer).nbytes
    cls = result_class(nbytes)
    stored = cls is LargeResult and shared is not None \
        and sharedfs.visible(*shared) and sharedfs.write(shared[0], result.checksum, buffer)
    return cls(result.kind, str(result.checksum), transportable(buffer), outcome.duration, stored)


def metadata(result) -> tuple:
    """The value of ``seamless-meta-<checksum>``: a large result's fields without its bytes,
    ``(kind, checksum, nbytes, duration, stored)``."""
    buffer = result.buffer
    nbytes = len(buffer) if type(buffer) is bytes else memoryview(buffer).nbytes
    return result.kind, result.checksum, nbytes, result.duration, result.stored


def _buffer(buffers: dict, checksum: str, shared):
    """An input's bytes: shipped, an upstream task's result, or the shared directory's file."""
    value = buffers[checksum]
    if type(value) in (SmallResult, LargeResult):
        return value.buffer
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
