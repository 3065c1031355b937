"""What a task returns, and the result bytes that stay on the cluster until asked for.

A task's value (the data of its Dask key ``seamless-tf-<checksum>``) is a ``SmallResult`` or
a ``LargeResult``: the same fields, two classes so that the client learns which one it is from
the type Dask reports when the key is in memory, without fetching it.  A small result is
fetched whole (as cheap as the metadata).  For a large one the client fetches only the
metadata, from a second key ``seamless-meta-<checksum>`` computed next to it, and keeps a
``RemoteBuffer``: the bytes move when someone reads the value.

A large array result that only the body held is not copied into a canonical buffer on the
worker: it stays a ``SplitCanonical`` (the canonical prefix and the body's own array, hashed
where it is).  Dask sends it as the prefix and the array in frames below its shard size, and
the receiver joins them into one canonical buffer: the one copy Dask's merge of a large frame's
shards would have made anyway.

Ownership: a ``RemoteBuffer`` holds the Dask future of its key, so the cluster keeps the
bytes while a handle (or a downstream shipment) holds the buffer; when the last reference goes,
the future is released and Dask frees the data.  Fetched bytes are kept by the buffer and
handed to the caches (``on_fetch``).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

__all__ = ["SmallResult", "LargeResult", "LARGE", "RemoteBuffer", "SplitCanonical",
           "buffer_nbytes", "result_class", "transportable", "whole"]

#: From this many bytes a buffer is "large": scattered once instead of travelling inside a
#: task, and a result left on the worker until it is asked for.
LARGE = 1 << 20


class SmallResult(NamedTuple):
    """A task's value: the result's kind, checksum and canonical bytes, the body's duration,
    and whether the worker also wrote the bytes to the shared cache directory."""

    kind: str
    checksum: str
    buffer: object
    duration: float
    stored: bool


class LargeResult(NamedTuple):
    """Same fields as ``SmallResult``; its bytes stay on the cluster until fetched."""

    kind: str
    checksum: str
    buffer: object
    duration: float
    stored: bool


def _serialize(result):
    """Dask serialisation of a task's value: the buffer through Dask's own (zero-copy for
    arrays and bytes), the fields in the header.  Pickling the named tuple whole is several
    times slower for a large array."""
    from distributed.protocol import serialize

    header, frames = serialize(result.buffer)
    return {"fields": [result.kind, result.checksum, result.duration, result.stored],
            "buffer": header}, frames


def _deserializer(cls):
    def deserialize_result(header, frames):
        from distributed.protocol import deserialize

        kind, checksum, duration, stored = header["fields"]
        return cls(kind, checksum, deserialize(header["buffer"], frames), duration, stored)

    return deserialize_result


class SplitCanonical:
    """Canonical bytes held in two parts: ``prefix`` (bytes) and ``array`` (the body's
    C-contiguous result, read-only, owned by this object alone)."""

    __slots__ = ("prefix", "array")

    def __init__(self, prefix: bytes, array):
        self.prefix = prefix
        self.array = array

    @property
    def nbytes(self) -> int:
        return len(self.prefix) + self.array.nbytes

    def payload(self):
        """The array's bytes as a flat uint8 view (no copy)."""
        import numpy

        return self.array.reshape(-1).view(numpy.uint8)

    def whole(self):
        """One contiguous, read-only canonical buffer (a copy, see ``_joined``)."""
        return _joined((self.prefix, self.payload()))

    def __sizeof__(self):  # what Dask's memory accounting counts for the key
        return self.nbytes


def whole(buffer):
    """``buffer`` as one contiguous buffer: a ``SplitCanonical`` is joined, others returned."""
    return buffer.whole() if type(buffer) is SplitCanonical else buffer


def buffer_nbytes(buffer) -> int:
    if type(buffer) is bytes:
        return len(buffer)
    if type(buffer) is SplitCanonical:
        return buffer.nbytes
    return memoryview(buffer).nbytes


def _frame_bytes() -> int:
    """Frames of at most this size are sent as they are: Dask splits larger ones into shards
    and joins them (a copy) on receipt."""
    import dask
    from dask.utils import parse_bytes

    return max(1 << 20, parse_bytes(dask.config.get("distributed.comm.shard", "64MiB")))


def _serialize_split(split):
    payload = split.payload()
    step = _frame_bytes()
    frames = [split.prefix] + [payload[i:i + step] for i in range(0, payload.nbytes, step)]
    return {"nbytes": split.nbytes}, frames


def _joined(parts):
    """``parts`` copied into one read-only uint8 array over a ``bytes`` object.  Not
    ``numpy.empty``: numpy advises the kernel to back large arrays with huge pages, and
    faulting those in may wait for memory compaction (0.25 s instead of 0.03 s per 100 MB
    seen on a VM), while the plain pages of ``bytes`` fault in at a steady pace."""
    import numpy

    return numpy.frombuffer(b"".join(parts), numpy.uint8)


def _deserialize_split(header, frames):
    """Join the frames into one canonical buffer, as ``SplitCanonical.whole`` does."""
    out = _joined(frames)
    if out.nbytes != header["nbytes"]:
        raise ValueError(f"a split canonical buffer arrived with {out.nbytes} of its "
                         f"{header['nbytes']} bytes (frames lost in transfer)")
    return out


def _register_serialization():
    from distributed.protocol import dask_deserialize, dask_serialize

    for cls in (SmallResult, LargeResult):
        dask_serialize.register(cls)(_serialize)
        dask_deserialize.register(cls)(_deserializer(cls))
    dask_serialize.register(SplitCanonical)(_serialize_split)
    dask_deserialize.register(SplitCanonical)(_deserialize_split)


_register_serialization()


def result_class(nbytes: int) -> type:
    return LargeResult if nbytes >= LARGE else SmallResult


def transportable(buffer):
    """``buffer`` as something Dask serialises without a copy: ``bytes`` and numpy arrays
    as they are, any other buffer (a memoryview of a cache file) viewed as a uint8 array."""
    if type(buffer) is bytes or type(buffer) is SplitCanonical or hasattr(buffer, "dtype"):
        return buffer
    import numpy

    return numpy.frombuffer(buffer, numpy.uint8)


class RemoteBuffer:
    """Result bytes that live in a Dask worker's memory (or the shared cache directory).

    ``fetch()`` returns the bytes, moving them once; ``future`` is the task's future, which a
    downstream task of the same client receives as a dependency instead of the bytes.
    """

    _seamless_remote = True
    __slots__ = ("future", "kind", "checksum", "nbytes", "stored", "_read_shared", "_on_fetch",
                 "_direct", "_buffer", "_lock", "__weakref__")

    def __init__(self, future, kind: str, checksum: str, nbytes: int, stored: bool,
                 read_shared, on_fetch, direct: bool | None = None):
        self.future = future
        self.kind = kind
        self.checksum = checksum
        self.nbytes = nbytes
        self.stored = stored
        self._read_shared = read_shared  # checksum -> buffer or None
        self._on_fetch = on_fetch        # (checksum, buffer) -> None: the caches take it
        self._direct = direct            # gather from the worker itself (connect.py)
        self._buffer = None
        self._lock = threading.Lock()

    def fetch(self):
        """The bytes; the first call reads the shared directory or gathers the key."""
        with self._lock:
            if self._buffer is None:
                buffer = self._read_shared(self.checksum) if self.stored else None
                if buffer is None:
                    result = self.future.client.gather(self.future, direct=self._direct)
                    buffer = whole(result.buffer)  # split: same process
                self._buffer = buffer
                if self._on_fetch is not None:
                    self._on_fetch(self.checksum, buffer)
            return self._buffer

    def fetched(self) -> bool:
        return self._buffer is not None

    def __repr__(self):
        where = "fetched" if self._buffer is not None else "on the cluster"
        return f"<RemoteBuffer {self.checksum[:12]} {self.nbytes} bytes, {where}>"
