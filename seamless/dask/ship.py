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
- other large bytes: scattered once per checksum (key ``seamless-buf-<checksum>``) and
  remembered, so a 100 MB array used by 50 transformations crosses the network once.  The
  remembered futures are dropped oldest first beyond ``memory_cache`` bytes;
- small bytes: inline, inside the task.

Ownership: the ``Shipper`` holds the scattered futures (the cluster keeps those buffers while
it does); upstream futures are held by their ``RemoteBuffer`` and by the task that depends on
them.
"""

from __future__ import annotations

import collections
import marshal
import threading

from . import sharedfs
from .results import LARGE, transportable

__all__ = ["Shipper", "task_key"]


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
    """Builds task payloads for one client and remembers what it scattered."""

    def __init__(self, client, scatter_budget: int):
        self.client = client
        self._budget = scatter_budget
        self._scattered: collections.OrderedDict = collections.OrderedDict()  # cs -> future
        self._scattered_bytes = 0
        self._sizes: dict = {}
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
        return self._scatter(cs, buffer, nbytes)

    def _scatter(self, cs: str, buffer, nbytes: int):
        with self._lock:
            future = self._scattered.get(cs)
            if future is not None:
                self._scattered.move_to_end(cs)
                return future
            key = f"seamless-buf-{cs}"
            future = self.client.scatter({key: transportable(buffer)}, hash=False)[key]
            self._scattered[cs] = future
            self._sizes[cs] = nbytes
            self._scattered_bytes += nbytes
            while self._scattered_bytes > self._budget and len(self._scattered) > 1:
                old, _ = self._scattered.popitem(last=False)
                self._scattered_bytes -= self._sizes.pop(old)
            return future

    def clear(self):
        with self._lock:
            self._scattered.clear()
            self._sizes.clear()
            self._scattered_bytes = 0
