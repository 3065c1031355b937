"""A ``Work`` as a Dask task: the payload (what the transformation is) and its input buffers.

Payload: ``marshal`` bytes of plain data: the transformation checksum, name, code text (and
its checksum, file name and first line, for tracebacks), parameter kinds, ``{name: (kind,
checksum)}`` of arguments and ``.globals`` values, ``.globals`` helper code, ``.modules``
entries, and the shared cache directory with its id (or None).  No function object: the task
function is ``task.run_task``, named by reference.

Buffers: ``{checksum: source}``, one entry per distinct input, each travelling the cheapest way:

- the result of an earlier task of this client: that task's Dask future.  Dask makes it a
  dependency, so the bytes go from worker to worker and never through the client;
- large (``results.LARGE`` and up) bytes already in the shared cache directory: None (the
  worker reads the file);
- other large bytes: scattered (key ``seamless-buf-<checksum>-<n>``) unless a scatter of
  the same checksum is still alive, so 50 transformations started together with one 100 MB
  array send it once.  ``n`` counts this process's scatters: the client releases a dropped
  key through one connection and scatters through others, so a new scatter under the old
  name could be registered first and then dropped by the late release;
- small bytes: inline, inside the task.

Ownership and lifetime of a scattered input: the ``Shipper`` maps checksum -> future weakly
(for the deduplication above only).  The strong references are the shipments: the backend
keeps the ``buffers`` dict of each submitted job until the job's outcome is final (its task
finished, failed or was cancelled).  When the last such job is done, the future goes, the
client releases the key and Dask frees the bytes on the worker; a later transformation with
the same input scatters it again.  So the cluster holds an input only while a transformation
that needs it is still wanted, whatever its size (a worker that keeps every input it was ever
sent receives each new one into fresh memory, which is slow).  Upstream futures are held by
their ``RemoteBuffer`` and by the task that depends on them.
"""

from __future__ import annotations

import itertools
import marshal
import threading
import weakref

from . import sharedfs
from .results import LARGE, transportable

__all__ = ["Shipper", "task_key"]

_scatter_numbers = itertools.count()


def task_key(checksum: str) -> str:
    """The Dask key of a transformation: the same for every client of the scheduler."""
    return f"seamless-tf-{checksum}"


def _nbytes(buffer) -> int:
    return len(buffer) if type(buffer) is bytes else memoryview(buffer).nbytes


def _plain(value):
    """``value`` with ``str`` subclasses and named tuples made plain, as marshal wants."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _code_fields(code) -> tuple:
    return (str(code.name), str(code.text), str(code.checksum), str(code.filename),
            int(code.first_line))


class Shipper:
    """Builds task payloads for one client; knows which of its scatters are still alive."""

    def __init__(self, client, direct: bool | None = None):
        self.client = client
        self._direct = direct  # connect.direct_transfers
        # checksum -> scatter future, while a shipment holds it
        self._scattered: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._codes: dict = {}  # code checksum -> marshal-ready fields

    def payload(self, checksum: str, work, shared) -> bytes:
        code = self._codes.get(work.code.checksum)
        if code is None:
            code = self._codes[work.code.checksum] = _code_fields(work.code)
        return marshal.dumps((
            str(checksum), str(work.name), code, _plain(work.params),
            {n: (e.kind, str(e.checksum)) for n, e in work.arguments.items()},
            {n: (e.kind, str(e.checksum)) for n, e in work.values.items()},
            {n: _code_fields(c) for n, c in work.functions.items()},
            {n: _plain(tuple(m)) for n, m in work.modules.items()},
            shared))

    def buffers(self, work, shared) -> dict:
        """``{checksum: source}`` of the job's inputs; the caller keeps the dict until the
        job's outcome is final (it holds the scattered futures, see the module docstring)."""
        out = {}
        for group in (work.arguments, work.values):
            for enc in group.values():
                cs = str(enc.checksum)
                if cs not in out:
                    out[cs] = self._source(cs, enc.buffer, shared)
        return out

    def _source(self, cs: str, buffer, shared):
        if getattr(buffer, "_seamless_remote", False):
            if buffer.future.client is self.client:
                return buffer.future  # a Dask dependency: worker to worker
            buffer = buffer.fetch()   # another client's result (reconnected): ship the bytes
        nbytes = _nbytes(buffer)
        if nbytes < LARGE:
            return transportable(buffer)
        if shared is not None and sharedfs.has(shared[0], cs, nbytes):
            return None
        return self._scatter(cs, buffer)

    def _scatter(self, cs: str, buffer):
        with self._lock:
            future = self._scattered.get(cs)
            if future is None:
                key = f"seamless-buf-{cs}-{next(_scatter_numbers)}"
                future = self.client.scatter({key: transportable(buffer)}, hash=False,
                                             direct=self._direct)[key]
                self._scattered[cs] = future
            return future

    def clear(self):
        with self._lock:
            self._scattered.clear()
