"""Pure-Python twin of seamless/_ipc/shm_array.pyx: fused copy-and-hash, the executable spec.

Data flow of ``copy_and_hash(src, dst, hasher)``: both buffers are viewed as flat
byte memoryviews; for each consecutive ``CHUNK_BYTES`` slice of ``src`` the
slice is copied into ``dst`` and then given to ``hasher.update``.  Sequential
and on the calling thread: a memoryview slice assignment holds the GIL, so a
helper thread (as the compiled module uses) would gain nothing here.  Same
validation, same error texts, same ``update`` calls (same chunks, in order,
read-only) as the compiled module; only the interleaving of copy and hash,
which no caller can observe except through ``dst`` after an exception (then
unspecified in both), differs.

Ownership: the caller owns ``src``, ``dst`` and ``hasher``; the views taken here
are released before returning (also on exceptions), so a bytearray ``dst`` can be
resized again.  A hasher may keep chunks: they stay valid.
"""

from __future__ import annotations

import sys

__all__ = ["CHUNK_BYTES", "copy_and_hash", "hash_into"]

# Granularity of hasher.update() calls, identical in both backends.
CHUNK_BYTES = 1 << 20


def _type_name(obj) -> str:
    t = type(obj)
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _not_contiguous(name: str, obj, shape, strides) -> ValueError:
    return ValueError(
        f"{name} must be C-contiguous, got a non-contiguous {_type_name(obj)} with shape "
        f"{tuple(shape)} and strides {tuple(strides)} "
        f"(copy it first, e.g. numpy.ascontiguousarray({name}))")


def _byte_view(obj, name: str) -> memoryview:
    """A flat memoryview (format "B") of obj's bytes; TypeError for a non-buffer,
    ValueError for a non-C-contiguous buffer."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{name} must support the buffer protocol (bytes, bytearray, memoryview, "
            f"numpy array, mmap), got {_type_name(obj)}") from None
    except ValueError:
        # numpy refuses an item format for datetime64/timedelta64; their bytes are plain.
        numpy = sys.modules.get("numpy")
        if numpy is None or not isinstance(obj, numpy.ndarray):
            raise
        if not obj.flags.c_contiguous:
            raise _not_contiguous(name, obj, obj.shape, obj.strides) from None
        return memoryview(obj.reshape(-1).view(numpy.uint8))
    if not view.c_contiguous:
        raise _not_contiguous(name, obj, view.shape, view.strides)
    if view.nbytes == 0:
        # cast() refuses shapes containing 0; an empty view with the same writability.
        return memoryview(b"") if view.readonly else memoryview(bytearray())
    return view.cast("B")


def _overlap(a: memoryview, b: memoryview) -> bool:
    """Whether two non-empty flat byte views share memory (exact for contiguous ranges)."""
    import numpy

    return bool(numpy.may_share_memory(numpy.frombuffer(a, numpy.uint8),
                                       numpy.frombuffer(b, numpy.uint8)))


def copy_and_hash(src, dst, hasher) -> None:
    """Copy ``src`` into ``dst`` and feed exactly src's bytes to ``hasher.update``.

    Fused so each chunk is hashed right after it is copied.  ``src``: C-contiguous
    buffer; ``dst``: writable C-contiguous buffer of the same nbytes, not overlapping
    ``src``; ``hasher``: anything with ``update(bytes_like)``, called with
    consecutive read-only 1 MiB memoryviews of ``src`` in order.  Raises
    TypeError/ValueError for bad buffers before any byte is copied; after an
    exception from ``hasher.update`` ``dst`` holds unspecified bytes.
    """
    with _byte_view(src, "src") as s, _byte_view(dst, "dst") as d:
        if d.readonly:
            raise ValueError(
                f"dst must be writable, got a read-only {_type_name(dst)} "
                f"(pass a bytearray, a writable numpy array or a writable mmap)")
        if d.nbytes != s.nbytes:
            raise ValueError(
                f"dst has {d.nbytes} bytes but src has {s.nbytes} "
                f"(dst must have exactly src's nbytes)")
        if s.nbytes and _overlap(s, d):
            raise ValueError("src and dst overlap in memory (copy into a separate buffer)")
        update = hasher.update
        chunks = s.toreadonly()
        for off in range(0, s.nbytes, CHUNK_BYTES):
            chunk = chunks[off:off + CHUNK_BYTES]
            d[off:off + CHUNK_BYTES] = chunk
            update(chunk)


def hash_into(src, hasher) -> None:
    """Feed the bytes of the C-contiguous buffer ``src`` to ``hasher.update`` in 1 MiB chunks.

    Chunked like copy_and_hash so both give a hasher the same calls.
    """
    with _byte_view(src, "src") as s:
        update = hasher.update
        chunks = s.toreadonly()
        for off in range(0, s.nbytes, CHUNK_BYTES):
            update(chunks[off:off + CHUNK_BYTES])
