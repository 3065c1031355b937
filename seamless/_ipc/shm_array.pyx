# cython: language_level=3, embedsignature=True
"""Fused copy-and-hash of large buffers (compiled core; twin: seamless/_ipc/_pure/shm_array.py).

Data flow of ``copy_and_hash(src, dst, hasher)``: both buffers are exported once
(``_HeldBuffer``) and stay exported until the call returns.  From
``_THREAD_MIN_BYTES`` on, a helper pthread copies ``src`` into ``dst`` with
``memcpy`` in ``CHUNK_BYTES`` pieces while the calling thread feeds the same
bytes of ``src``, in order and in ``CHUNK_BYTES`` pieces, to ``hasher.update``
(hashlib releases the GIL for large updates, so both cores work).  The helper
thread never touches Python objects; the caller owns it and always joins it
before returning, also when ``hasher.update`` raises (the helper is told to
stop at the next chunk, then joined, then the exception propagates).  Below the
threshold the copy is one ``memcpy`` without the GIL, then the chunked updates.

Ownership: the caller owns ``src``, ``dst`` and ``hasher``.  The memoryview
chunks given to ``hasher.update`` reference the held export of ``src``, so a
hasher that keeps a chunk keeps valid memory.  After an exception the contents
of ``dst`` are unspecified.  Mechanism only: no configuration, logging or retry.
"""

from cpython.buffer cimport (
    PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE, PyBuffer_IsContiguous,
    PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer,
)
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memcpy

cdef extern from *:
    """
    #define SEAMLESS_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define SEAMLESS_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    """
    int _load_relaxed "SEAMLESS_LOAD_RELAXED"(int *p) noexcept nogil
    void _store_relaxed "SEAMLESS_STORE_RELAXED"(int *p, int v) noexcept nogil

__all__ = ["CHUNK_BYTES", "copy_and_hash", "hash_into"]

# Granularity of hasher.update() calls and of the helper thread's memcpy (and of
# its stop checks).  Part of the contract: both backends feed the same chunks.
CHUNK_BYTES = 1 << 20
cdef Py_ssize_t _CHUNK = CHUNK_BYTES

# From this size on the copy runs on a helper thread.  Measured on the 2-core
# target (min of many runs, threaded / sequential): 1 MiB 1.00, 2 MiB 0.97,
# 4 MiB 0.94-0.96, 16 MiB 0.89, 64 MiB 0.85-0.90.  Below 4 MiB the gain is a few
# percent, not worth a second busy thread on a box whose other core usually runs
# a worker; from 4 MiB on it is clear and the thread start is < 0.5 % of the call.
_THREAD_MIN_BYTES = 4 << 20
cdef Py_ssize_t _thread_min = _THREAD_MIN_BYTES


cdef str _type_name(object obj):
    t = type(obj)
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


cdef class _HeldBuffer:
    """A buffer export held for the duration of one call, re-exported as flat read-only bytes."""

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("seamless._ipc.shm_array chunks are read-only")
        buffer.buf = self.view.buf
        buffer.obj = self
        buffer.len = self.view.len
        buffer.readonly = 1
        buffer.itemsize = 1
        buffer.format = <char *>"B" if flags & PyBUF_FORMAT else NULL
        buffer.ndim = 1
        buffer.shape = &self.view.len if flags & PyBUF_ND else NULL
        buffer.strides = &self.one if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL


cdef _HeldBuffer _hold(object obj, str name):
    """Export ``obj`` (any layout, no item format: numpy refuses formats for datetime64);
    raise TypeError for a non-buffer and ValueError for a non-C-contiguous one."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(
            f"{name} must support the buffer protocol (bytes, bytearray, memoryview, "
            f"numpy array, mmap), got {_type_name(obj)}")
    cdef _HeldBuffer held = _HeldBuffer.__new__(_HeldBuffer)
    held.one = 1
    PyObject_GetBuffer(obj, &held.view, PyBUF_STRIDES)
    held.held = True
    if not PyBuffer_IsContiguous(&held.view, b'C'):
        shape = tuple([held.view.shape[i] for i in range(held.view.ndim)])
        strides = tuple([held.view.strides[i] for i in range(held.view.ndim)])
        raise ValueError(
            f"{name} must be C-contiguous, got a non-contiguous {_type_name(obj)} with shape "
            f"{shape} and strides {strides} (copy it first, e.g. numpy.ascontiguousarray({name}))")
    return held


cdef int _feed(object update, object chunks, Py_ssize_t nbytes) except -1:
    """Call ``update`` on consecutive CHUNK_BYTES slices of the byte memoryview ``chunks``.

    Runs pending signal handlers between chunks, as the twin's Python loop does, so
    Ctrl-C interrupts a multi-GB hash (and stops the copy thread) within a chunk.
    """
    cdef Py_ssize_t off = 0
    while off < nbytes:
        update(chunks[off:off + _CHUNK])
        off += _CHUNK
        PyErr_CheckSignals()
    return 0


cdef void *_copy_main(void *arg) noexcept nogil:
    """Helper thread body: memcpy chunk by chunk until done or told to stop."""
    cdef _CopyJob *job = <_CopyJob *>arg
    cdef Py_ssize_t off = 0
    cdef Py_ssize_t n
    while off < job.nbytes and not _load_relaxed(&job.stop):
        n = job.nbytes - off
        if n > _CHUNK:
            n = _CHUNK
        memcpy(job.dst + off, job.src + off, <size_t>n)
        off += n
    return NULL


cdef int _copy_feed(unsigned char *dst, const unsigned char *src, Py_ssize_t nbytes,
                    object update, object chunks) except -1:
    """Copy ``nbytes`` from src to dst and feed ``chunks`` (the bytes of src) to ``update``."""
    cdef _CopyJob job
    cdef pthread_t tid
    cdef int rc = -1
    if nbytes >= _thread_min:
        job.src = src
        job.dst = dst
        job.nbytes = nbytes
        job.stop = 0
        rc = pthread_create(&tid, NULL, _copy_main, &job)
    if rc == 0:
        try:
            _feed(update, chunks, nbytes)
        except BaseException:
            _store_relaxed(&job.stop, 1)
            raise
        finally:
            with nogil:
                pthread_join(tid, NULL)
        return 0
    # Small buffer, or no thread could be started (EAGAIN): copy here, then hash.
    if nbytes > 0:
        with nogil:
            memcpy(dst, src, <size_t>nbytes)
    _feed(update, chunks, nbytes)
    return 0


def copy_and_hash(src, dst, hasher):
    """Copy ``src`` into ``dst`` and feed exactly src's bytes to ``hasher.update``.

    Fused so the hash pass and the copy overlap (one helper thread for large
    buffers).  ``src``: C-contiguous buffer; ``dst``: writable C-contiguous
    buffer of the same nbytes, not overlapping ``src``; ``hasher``: anything
    with ``update(bytes_like)``, called with consecutive read-only 1 MiB
    memoryviews of ``src`` in order.  Raises TypeError/ValueError for bad buffers
    before any byte is copied; after an exception from ``hasher.update`` the
    helper thread has been joined and ``dst`` holds unspecified bytes.
    """
    cdef _HeldBuffer s = _hold(src, "src")
    cdef _HeldBuffer d = _hold(dst, "dst")
    if d.view.readonly:
        raise ValueError(
            f"dst must be writable, got a read-only {_type_name(dst)} "
            f"(pass a bytearray, a writable numpy array or a writable mmap)")
    if d.view.len != s.view.len:
        raise ValueError(
            f"dst has {d.view.len} bytes but src has {s.view.len} "
            f"(dst must have exactly src's nbytes)")
    cdef const unsigned char *sp = <const unsigned char *>s.view.buf
    cdef unsigned char *dp = <unsigned char *>d.view.buf
    cdef Py_ssize_t n = s.view.len
    if n > 0 and sp < dp + n and dp < sp + n:
        raise ValueError("src and dst overlap in memory (copy into a separate buffer)")
    update = hasher.update
    _copy_feed(dp, sp, n, update, memoryview(s))


def hash_into(src, hasher):
    """Feed the bytes of the C-contiguous buffer ``src`` to ``hasher.update`` in 1 MiB chunks.

    Chunked like copy_and_hash so both give a hasher the same calls.
    """
    cdef _HeldBuffer s = _hold(src, "src")
    update = hasher.update
    _feed(update, memoryview(s), s.view.len)
