# cython: language_level=3, embedsignature=True
"""Shared-memory segments, their free list, the numpy allocator and fused copy-and-hash.

Compiled core; the pure-Python twin seamless/_ipc/_pure/shm_array.py is the executable
specification (same names, errors and counters; it has no numpy allocator).

Segments
    A ``Segment`` is one anonymous memfd (``memfd_create(MFD_CLOEXEC)``) whose logical buffer
    is the bytes ``[offset, offset + size)`` of a file of ``capacity`` bytes (size classes and
    recycling make the file larger; results born by the numpy allocator have a header in
    front, so ``offset`` > 0).  Values of 1 MiB and more travel between the parent and the
    workers in segments: the creator fills one, the descriptor crosses the channel as
    ``SCM_RIGHTS`` data, the receiver maps it read-only (docs/worker-pool.md, "What travels how").

Ownership
- **Descriptor.** ``Segment.create`` makes a memfd or takes one from the free list;
  ``Segment.from_fd`` takes over a received one (also when it raises: it is then closed);
  ``claim`` makes a Segment owning a ``dup`` of an allocator segment.  The ``Segment`` owns it:
  ``close()`` closes it at once; otherwise ``__dealloc__`` (no reference left: every mapping
  holds its Segment) *releases* it: to ``on_release(fd)`` for a ``from_fd`` segment that has one
  (the callback owns it from then on; it may run on any thread), to this process's free list
  for a segment created here with ``recycle=True`` (closed instead when over budget), else
  closed.  A process that inherited a Segment through ``fork`` only ever closes it.
- **Mappings** are ``_Mapping`` objects: ``mmap`` from the page at or below ``offset``, exporting
  exactly the logical bytes through the buffer protocol (read-only for ``PROT_READ``), unmapped
  in ``__dealloc__``; ``readonly()``/``writable()`` return a memoryview over one, and whatever is
  built on it (numpy ``.base``) keeps it, and so the Segment, alive.  ``fill`` maps, copies and
  unmaps within the call.  No Python ``mmap`` objects, no descriptor per mapping.
- **Free list** (one per process, C array under ``_lock``, a pthread mutex, so the allocator
  can use it without the GIL): entries ``{fd, capacity, last_used}`` own their descriptors.
  ``create``/the allocator take the smallest fitting entry; ``trim``/``trim_idle``/a lower
  budget close entries; Segment release, ``recycle(fd)``, ``prewarm`` and allocator frees add
  them.  A forked child closes the entries it inherited (its parent's memory).
- **Allocator table** (same mutex): one record per live numpy allocation served from a segment
  ``{data, mapping base and length, logical size, capacity, headroom, fd, exported}``.  The
  handler's free unmaps and puts the fd on the free list, or closes it when ``claim`` exported
  the segment (its dup travels elsewhere; the memory must never be reused here).
- **Immutability** comes from the mappings, never from seals: creators drop every writable
  mapping before a segment is shared; readers map ``PROT_READ``.
- **Counters** (``bytes_copied``, ``bytes_hashed``, ``live_segments``) are C integers updated
  with atomics; ``live_segments()`` counts Segment objects whose descriptor is open.

Locking rule: nothing runs Python code (or allocates Python objects, which may run finalizers
that take the mutex) while holding ``_lock``; everything under it is plain C.

Fused copy-and-hash
    ``copy_and_hash(src, dst, hasher)``: both buffers are exported once (``_HeldBuffer``) and
    stay exported until the call returns.  From ``_THREAD_MIN_BYTES`` on, a helper pthread
    copies ``src`` into ``dst`` with ``memcpy`` in ``CHUNK_BYTES`` pieces while the calling
    thread feeds the same bytes, in order and in ``CHUNK_BYTES`` pieces, to ``hasher.update``
    (hashlib releases the GIL for large updates).  The helper never touches Python objects; it
    is always joined before returning, also when ``hasher.update`` raises.  The chunks given to
    ``hasher.update`` reference the held export of ``src``, so a hasher that keeps one keeps
    valid memory.  After an exception the contents of ``dst`` are unspecified.

What both backends share outside the copy loops (chunk size, argument checks, the memory
check and the error texts, trim hooks) lives in seamless/_ipc/policy/segments.py; the
allocator's memory check (``_memory_allows``) is its C twin, as it runs without the GIL.

Mechanism only: no configuration, logging or retry; callers pass sizes in.
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport (
    PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE, PyBuffer_IsContiguous,
    PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer,
)
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from libc.errno cimport errno, EINVAL, ENOSYS, EOPNOTSUPP
from libc.stdint cimport SIZE_MAX
from libc.stdlib cimport calloc, free, malloc, realloc, strtoull
from libc.string cimport memcpy, memset, strdup, strstr

import contextvars
import os

import numpy

from seamless import machine
from seamless._ipc.policy import segments as policy
from seamless._ipc.policy.segments import CHUNK_BYTES, SAFETY_MARGIN, available_memory

cnp.import_array()

cdef extern from *:
    """
    #define SEAMLESS_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define SEAMLESS_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define SEAMLESS_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
    #define SEAMLESS_STORE_LL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define SEAMLESS_LOAD_SIZE(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define SEAMLESS_STORE_SIZE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    """
    int _load_relaxed "SEAMLESS_LOAD_RELAXED"(int *p) noexcept nogil
    void _store_relaxed "SEAMLESS_STORE_RELAXED"(int *p, int v) noexcept nogil
    long long _atomic_add "SEAMLESS_ADD"(long long *p, long long v) noexcept nogil
    void _atomic_store "SEAMLESS_STORE_LL"(long long *p, long long v) noexcept nogil
    size_t _load_size "SEAMLESS_LOAD_SIZE"(size_t *p) noexcept nogil
    void _store_size "SEAMLESS_STORE_SIZE"(size_t *p, size_t v) noexcept nogil

cdef extern from "<sys/types.h>":
    ctypedef long off_t
    ctypedef int pid_t

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int memfd_create(const char *name, unsigned int flags)
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_POPULATE
    void *MAP_FAILED
    unsigned int MFD_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int ftruncate(int fd, off_t length)
    pid_t getpid()
    ssize_t read(int fd, void *buf, size_t count)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    int fcntl(int fd, int cmd, int arg)
    int posix_fallocate(int fd, off_t offset, off_t length)
    int O_RDONLY
    int O_CLOEXEC
    int F_GET_SEALS
    int F_DUPFD_CLOEXEC

cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat:
        unsigned long long st_dev
        unsigned long long st_ino
        unsigned int st_mode
        off_t st_size
    int fstat(int fd, stat *buf)
    bint S_ISREG(unsigned int mode)

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clock, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "numpy/arrayobject.h":
    # Declared here rather than taken from numpy's .pxd, which types ``name`` as char *
    # (it is char[127] in C).
    ctypedef struct _DataAllocator "PyDataMemAllocator":
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct _DataHandler "PyDataMem_Handler":
        char name[127]
        unsigned char version
        _DataAllocator allocator
    object _set_handler "PyDataMem_SetHandler"(object handler)
    object _get_handler "PyDataMem_GetHandler"()

__all__ = [
    "CHUNK_BYTES", "copy_and_hash", "hash_into",
    "SAFETY_MARGIN", "Segment", "segment_id", "segment_of", "available_memory", "as_array",
    "bytes_copied", "bytes_hashed", "add_copied", "add_hashed", "live_segments",
    "reset_counters", "trim", "trim_idle", "register_trim_hook", "unregister_trim_hook",
    "recycle", "prewarm", "free_list", "set_free_list_budget", "size_class",
    "install_allocator", "uninstall_allocator", "allocator_installed", "claim",
]

# CHUNK_BYTES (policy): also the helper thread's memcpy piece, between its stop checks.
cdef Py_ssize_t _CHUNK = CHUNK_BYTES

# From this size on the copy runs on a helper thread.  Measured on the 2-core
# target (min of many runs, threaded / sequential): 1 MiB 1.00, 2 MiB 0.97,
# 4 MiB 0.94-0.96, 16 MiB 0.89, 64 MiB 0.85-0.90.  Below 4 MiB the gain is a few
# percent, not worth a second busy thread on a box whose other core usually runs
# a worker; from 4 MiB on it is clear and the thread start is < 0.5 % of the call.
_THREAD_MIN_BYTES = 4 << 20
cdef Py_ssize_t _thread_min = _THREAD_MIN_BYTES

# Above this a cgroup v1 limit means "no limit" (machine.UNLIMITED, as a C integer for the
# allocator's memory check, which runs without the GIL).
cdef unsigned long long _C_UNLIMITED = machine.UNLIMITED


# --- process-wide C state ----------------------------------------------------------------------

cdef struct _Entry:
    # One free-list entry: an idle memfd of `capacity` bytes, owned by the list.
    int fd
    size_t capacity
    double last_used            # CLOCK_MONOTONIC seconds (same clock as time.monotonic())


cdef struct _Alloc:
    # One numpy allocation served from a segment: data == base + headroom.
    char *data
    char *base
    size_t map_len
    size_t size                 # bytes numpy asked for (the array's data)
    size_t capacity             # file size
    size_t headroom
    int fd                      # owned by this record until free
    bint exported               # claim() shared it: free closes fd instead of recycling


cdef pthread_mutex_t _lock
cdef _Entry *_free_entries = NULL
cdef size_t _free_len = 0
cdef size_t _free_cap = 0
cdef size_t _free_bytes = 0
cdef size_t _budget = 0
cdef _Alloc *_allocs = NULL
cdef size_t _allocs_len = 0     # also read without the lock (atomically) as a fast path
cdef size_t _allocs_cap = 0
cdef int _inject_count = 0      # _fail_next_create(): creations left to fail, and with what
cdef int _inject_errno = 0
cdef long long _copied = 0
cdef long long _hashed = 0
cdef long long _live = 0
cdef size_t _page = 4096

# Which call failed in _new_memfd, for the error message.
cdef enum:
    _CALL_MEMFD = 0
    _CALL_FTRUNCATE = 1
    _CALL_FALLOCATE = 2
_CALL_NAMES = ("memfd_create", "ftruncate", "fallocate")


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef size_t _page_round(size_t n) noexcept nogil:
    return (n + _page - 1) // _page * _page


cdef size_t _class_of(size_t n) noexcept nogil:
    """The file size of a new segment of n bytes (see size_class())."""
    cdef size_t step
    if n < (<size_t>1 << 20):
        step = _page
    elif n < (<size_t>64 << 20):
        step = <size_t>1 << 20
    else:
        step = 1
        while step <= n // 2:
            step <<= 1
        step >>= 3
    return (n + step - 1) // step * step


cdef bint _fits(size_t capacity, size_t n) noexcept nogil:
    return n <= capacity and (capacity <= 2 * n or capacity == _class_of(n))


cdef int _free_take(size_t n, size_t *capacity) noexcept nogil:
    """Remove the smallest fitting entry; its fd (capacity in *capacity), or -1."""
    global _free_len, _free_bytes
    cdef size_t i
    cdef Py_ssize_t best = -1
    cdef int fd = -1
    if n == 0:
        return -1
    pthread_mutex_lock(&_lock)
    for i in range(_free_len):
        if _fits(_free_entries[i].capacity, n) and (
                best < 0 or _free_entries[i].capacity < _free_entries[best].capacity):
            best = <Py_ssize_t>i
    if best >= 0:
        fd = _free_entries[best].fd
        capacity[0] = _free_entries[best].capacity
        _free_bytes -= capacity[0]
        _free_len -= 1
        _free_entries[best] = _free_entries[_free_len]
    pthread_mutex_unlock(&_lock)
    return fd


cdef bint _free_put(int fd, size_t capacity) noexcept nogil:
    """Give fd to the free list; closed instead (False) when the budget does not allow.

    Only whole pages count: a mapping never reaches past the end of the file (SIGBUS), even
    for a descriptor of odd size handed to recycle()."""
    global _free_entries, _free_cap, _free_len, _free_bytes
    cdef bint ok
    cdef _Entry *grown
    cdef size_t new_cap
    capacity = capacity // _page * _page
    pthread_mutex_lock(&_lock)
    ok = capacity > 0 and _free_bytes + capacity <= _budget
    if ok and _free_len == _free_cap:
        new_cap = 16 if _free_cap == 0 else 2 * _free_cap
        grown = <_Entry *>realloc(_free_entries, new_cap * sizeof(_Entry))
        if grown == NULL:
            ok = False
        else:
            _free_entries = grown
            _free_cap = new_cap
    if ok:
        _free_entries[_free_len].fd = fd
        _free_entries[_free_len].capacity = capacity
        _free_entries[_free_len].last_used = _now()
        _free_len += 1
        _free_bytes += capacity
    pthread_mutex_unlock(&_lock)
    if not ok:
        close(fd)
    return ok


cdef size_t _free_close(double used_before, size_t budget_after) noexcept nogil:
    """Close entries last used before ``used_before``, then the least recently used ones while
    the list holds more than ``budget_after`` bytes; return how many.  The descriptors are
    closed after unlocking (closing a big memfd frees its pages, which takes a while)."""
    global _free_len, _free_bytes
    cdef size_t i, kept = 0, n = 0, oldest
    cdef int *gone
    pthread_mutex_lock(&_lock)
    gone = <int *>malloc((_free_len + 1) * sizeof(int))
    for i in range(_free_len):
        if _free_entries[i].last_used < used_before:
            _free_bytes -= _free_entries[i].capacity
            if gone != NULL:
                gone[n] = _free_entries[i].fd
            else:
                close(_free_entries[i].fd)
            n += 1
        else:
            _free_entries[kept] = _free_entries[i]
            kept += 1
    _free_len = kept
    while _free_len and _free_bytes > budget_after:
        oldest = 0
        for i in range(1, _free_len):
            if _free_entries[i].last_used < _free_entries[oldest].last_used:
                oldest = i
        _free_bytes -= _free_entries[oldest].capacity
        if gone != NULL:
            gone[n] = _free_entries[oldest].fd
        else:
            close(_free_entries[oldest].fd)
        n += 1
        _free_len -= 1
        _free_entries[oldest] = _free_entries[_free_len]
    pthread_mutex_unlock(&_lock)
    if gone != NULL:
        for i in range(n):
            close(gone[i])
        free(gone)
    return n


cdef int _new_memfd(size_t size, size_t capacity, int *err, int *call) noexcept nogil:
    """memfd_create + ftruncate(capacity) + fallocate(size): the fd, or -1 with *err and *call
    set and nothing left open.  Consumes one _fail_next_create() injection (as ftruncate)."""
    global _inject_count
    cdef int fd, injected = 0, rc
    fd = memfd_create(b"seamless-segment", MFD_CLOEXEC)
    if fd < 0:
        err[0] = errno
        call[0] = _CALL_MEMFD
        return -1
    pthread_mutex_lock(&_lock)
    if _inject_count > 0:
        _inject_count -= 1
        injected = _inject_errno
    pthread_mutex_unlock(&_lock)
    if injected or ftruncate(fd, <off_t>capacity) < 0:
        err[0] = injected if injected else errno
        call[0] = _CALL_FTRUNCATE
        close(fd)
        return -1
    if size:
        rc = posix_fallocate(fd, 0, <off_t>size)
        if rc != 0 and rc != EOPNOTSUPP and rc != ENOSYS and rc != EINVAL:
            err[0] = rc
            call[0] = _CALL_FALLOCATE
            close(fd)
            return -1
    return fd


cdef void _fork_prepare() noexcept nogil:
    pthread_mutex_lock(&_lock)


cdef void _fork_parent() noexcept nogil:
    pthread_mutex_unlock(&_lock)


cdef void _fork_child() noexcept nogil:
    """The child must not reuse its parent's memory: close inherited free entries, and have
    allocator frees close (not recycle) the segments of allocations it inherited."""
    global _free_len, _free_bytes
    cdef size_t i
    pthread_mutex_init(&_lock, NULL)
    for i in range(_free_len):
        close(_free_entries[i].fd)
    _free_len = 0
    _free_bytes = 0
    for i in range(_allocs_len):
        _allocs[i].exported = True


cdef void _init_state(size_t page, size_t budget) noexcept nogil:
    global _page, _budget
    pthread_mutex_init(&_lock, NULL)
    _page = page
    _budget = budget
    pthread_atfork(_fork_prepare, _fork_parent, _fork_child)


# The page size and the free-list budget (a quarter of RAM) come from seamless.machine.
_init_state(machine.snapshot().page_size, machine.snapshot().total_memory // 4)



# --- counters ----------------------------------------------------------------------------------

def bytes_copied():
    """Bytes copied into or out of segments for this process's transformations so far."""
    return _atomic_add(&_copied, 0)


def bytes_hashed():
    """Bytes hashed while filling segments (and reported by workers) so far."""
    return _atomic_add(&_hashed, 0)


def add_copied(n):
    """Add ``n`` bytes to ``bytes_copied()`` (the pool reports worker-side copies with it)."""
    cdef long long k = policy.checked_count(n, "add_copied")
    _atomic_add(&_copied, k)


def add_hashed(n):
    """Add ``n`` bytes to ``bytes_hashed()``."""
    cdef long long k = policy.checked_count(n, "add_hashed")
    _atomic_add(&_hashed, k)


def live_segments():
    """How many ``Segment`` objects of this process still hold an open descriptor."""
    return _atomic_add(&_live, 0)


def reset_counters():
    """Set ``bytes_copied()`` and ``bytes_hashed()`` back to 0 (``live_segments()`` is a state)."""
    _atomic_store(&_copied, 0)
    _atomic_store(&_hashed, 0)


# --- free list -----------------------------------------------------------------------------------

def size_class(size):
    """The file size given to a new segment of ``size`` bytes: a page multiple below 1 MiB, a
    MiB multiple below 64 MiB, then a multiple of 1/8 of the power of two at or below
    ``size`` (so at most 12.5 % is wasted and freed segments fit later values of similar size).
    """
    cdef size_t n = policy.check_size(size, "size")
    return _class_of(n)


def set_free_list_budget(nbytes):
    """Bound the free list to ``nbytes`` (default: 25 % of physical RAM).  Entries beyond a
    lowered budget are closed, least recently used first."""
    global _budget
    cdef size_t n = policy.check_size(nbytes, "nbytes")
    with nogil:
        pthread_mutex_lock(&_lock)
        _budget = n
        pthread_mutex_unlock(&_lock)
        _free_close(-1.0, n)


def free_list():
    """``(capacity, age in seconds)`` of each free-list entry, oldest first (for tests)."""
    cdef size_t i, n
    cdef double now
    cdef _Entry *copy
    pthread_mutex_lock(&_lock)
    n = _free_len
    copy = <_Entry *>malloc((n + 1) * sizeof(_Entry))
    if copy != NULL:
        memcpy(copy, _free_entries, n * sizeof(_Entry))
    pthread_mutex_unlock(&_lock)
    if copy == NULL:
        raise MemoryError("free_list(): no memory for a copy of the free list")
    now = _now()
    try:
        entries = [(copy[i].capacity, now - copy[i].last_used) for i in range(n)]
    finally:
        free(copy)
    return sorted(entries, key=lambda entry: -entry[1])


def trim_idle(max_age_s):
    """Close the free-list entries unused for more than ``max_age_s`` seconds; return how many."""
    cdef double before = _now() - float(max_age_s)
    cdef size_t n
    with nogil:
        n = _free_close(before, SIZE_MAX)
    return n


def recycle(fd):
    """Adopt a descriptor handed back (a result segment returned by the parent) into the free
    list.  Takes ownership: it is closed instead (False) when over budget or not a memfd."""
    policy.check_fd(fd)
    cdef int c_fd = fd
    cdef stat st
    cdef bint kept
    with nogil:
        if (fstat(c_fd, &st) < 0 or not S_ISREG(st.st_mode)
                or fcntl(c_fd, F_GET_SEALS, 0) < 0):   # F_GET_SEALS: EINVAL unless a memfd
            close(c_fd)
            kept = False
        else:
            kept = _free_put(c_fd, <size_t>st.st_size)
    return kept


def prewarm(nbytes):
    """Create one segment of ``nbytes``, touch every page, and put it on the free list, so the
    first value of that size gets memory already faulted in.  SharedMemoryError when short."""
    cdef Segment seg = Segment.create(nbytes, "a prewarmed segment", recycle=False)
    cdef char *base
    cdef size_t n = seg._size
    cdef int fd = seg._fd
    if n:
        with nogil:
            base = <char *>mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if base == <char *>MAP_FAILED:
            seg.close()
            raise policy.allocation_error(
                n, "a prewarmed segment",
                policy.os_reason("mmap", OSError(errno, os.strerror(errno))), None)
        with nogil:
            memset(base, 0, n)
            munmap(base, n)
    seg._fd = -1
    _atomic_add(&_live, -1)
    with nogil:
        _free_put(fd, <size_t>seg._capacity)


# --- trim ----------------------------------------------------------------------------------------

_trim_hooks = policy.TrimHooks()


def register_trim_hook(fn):
    """Have ``trim()`` call ``fn()`` (once per registration; registering again is a no-op)."""
    _trim_hooks.register(fn)


def unregister_trim_hook(fn):
    """Stop calling ``fn`` from ``trim()``; a hook that is not registered is ignored."""
    _trim_hooks.unregister(fn)


def trim():
    """Close every free-list entry, then run every registered hook.

    Every hook runs even if an earlier one raises; the first exception is re-raised afterwards.
    """
    with nogil:
        _free_close(1e300, SIZE_MAX)
    _trim_hooks.run()


# --- test hook -------------------------------------------------------------------------------

def _fail_next_create(error=None, *, count=1):
    """Test hook: the next ``count`` creations of a new memfd (``Segment.create``, ``prewarm``,
    the numpy allocator, which then falls back to numpy's own memory) fail as if ``ftruncate``
    raised ``error`` (default ``ENOSPC``; only its errno is kept), through the real error path.
    ``count=0`` clears the hook.
    """
    global _inject_count, _inject_errno
    cdef int c_errno, c_count
    c_errno, c_count = policy.injection(error, count)
    pthread_mutex_lock(&_lock)
    _inject_count = c_count
    _inject_errno = c_errno
    pthread_mutex_unlock(&_lock)


# --- segments --------------------------------------------------------------------------------

cdef Segment _adopt(int fd, Py_ssize_t size, stat *st, Py_ssize_t offset, bint recycle,
                    object on_release):
    """A Segment owning ``fd`` (counted live from here on)."""
    cdef Segment self = Segment.__new__(Segment)
    self._fd = fd
    self._size = size
    self._capacity = st.st_size
    self._offset = offset
    self._dev = st.st_dev
    self._ino = st.st_ino
    self._recycle = recycle
    self._pid = getpid()
    self._on_release = on_release
    _atomic_add(&_live, 1)
    return self


@cython.no_gc_clear  # __dealloc__ needs _on_release, which a gc clear would drop first
cdef class Segment:
    """One anonymous memfd whose bytes ``[offset, offset + size)`` hold one buffer.

    Build with ``Segment.create(size)`` or ``Segment.from_fd(fd, size)``.  Only the logical
    bytes are ever exposed, whatever the file's size (``capacity``).
    """

    def __cinit__(self):
        self._fd = -1

    def __init__(self, *args, **kwargs):
        raise TypeError("build a Segment with Segment.create(size) or Segment.from_fd(fd, size)")

    def __dealloc__(self):
        cdef int fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        _atomic_add(&_live, -1)
        if self._pid != getpid():
            close(fd)
        elif self._on_release is not None:
            self._on_release(fd)  # an exception is reported as unraisable; it owns fd anyway
        elif self._recycle:
            _free_put(fd, <size_t>self._capacity)
        else:
            close(fd)

    @classmethod
    def create(cls, size, what="", *, name=None, margin=SAFETY_MARGIN, recycle=True):
        """A segment of ``size`` bytes, its pages allocated up front.

        With ``recycle`` a free-list entry is taken when one fits (the smallest with
        ``size <= capacity <= 2 * size``, or of exactly ``size_class(size)``): its contents are
        then unspecified (callers fill the whole size), and the segment returns to the free
        list when it is garbage.  Otherwise a new memfd of ``size_class(size)`` bytes, zero
        filled.  ``what`` names the value in the error message ("argument 'arr' of
        transformation f"); ``name``, the transformer's name, adds the hint ``{name}.local =
        True``.  Raises ``SharedMemoryError`` when ``size`` plus ``margin`` exceeds the
        available memory or the cgroup's headroom, or when ``memfd_create``/``ftruncate``/
        ``fallocate`` fail; no descriptor is left open then.
        """
        size = policy.check_size(size, "size")
        margin = policy.check_size(margin, "margin")
        cdef size_t n = size, capacity = 0
        cdef int fd = -1, err = 0, call = 0
        cdef stat st
        cdef bint _from_free_list = False
        if recycle:
            with nogil:
                fd = _free_take(n, &capacity)
            _from_free_list = fd >= 0
        if fd < 0:
            if n:
                policy.check_memory(size, margin, what, name)
            capacity = _class_of(n)
            with nogil:
                fd = _new_memfd(n, capacity, &err, &call)
            if fd < 0:
                exc = OSError(err, os.strerror(err))
                raise policy.allocation_error(
                    size, what, policy.os_reason(_CALL_NAMES[call], exc), name) from exc
        if fstat(fd, &st) < 0:
            exc = OSError(errno, os.strerror(errno))
            close(fd)
            raise policy.allocation_error(size, what, policy.os_reason("fstat", exc),
                                          name) from exc
        seg = _adopt(fd, n, &st, 0, recycle, None)
        seg._reused = _from_free_list
        return seg

    @classmethod
    def from_fd(cls, fd, size, *, offset=0, on_release=None):
        """Take ownership of a received descriptor whose bytes ``[offset, offset + size)`` are
        the logical buffer.

        ``on_release(fd)``, if given, is called instead of closing when this Segment and its
        last mapping are garbage (from any thread; it takes the descriptor over and must be
        cheap); ``close()`` still closes.  Ownership passes even when this raises (the
        descriptor is then closed): ValueError when it is not a regular file or is too small.
        Only a ``fd`` that is not a descriptor at all (not an int, or negative) is refused
        without closing anything.
        """
        policy.check_fd(fd)
        cdef int c_fd = fd
        cdef stat st
        try:
            size = policy.check_size(size, "size")
            offset = policy.check_size(offset, "offset")
            policy.check_on_release(on_release)
            if fstat(c_fd, &st) < 0:
                raise OSError(errno, os.strerror(errno))
            policy.check_received(fd, st.st_mode, st.st_size, size, offset)
        except BaseException:
            close(c_fd)
            raise
        return _adopt(c_fd, size, &st, offset, False, on_release)

    @property
    def fd(self):
        """The owned descriptor (ValueError once closed); send it, never close it yourself."""
        if self._fd < 0:
            raise policy.closed_segment((self._dev, self._ino))
        return self._fd

    @property
    def size(self):
        """The logical size in bytes: what mappings expose."""
        return self._size

    @property
    def reused(self):
        """Whether ``create`` took this segment from the free list: its pages are touched
        already, so mapping it with ``populate=True`` is cheap."""
        return self._reused

    @property
    def capacity(self):
        """The file's size in bytes when this Segment took it (>= offset + size)."""
        return self._capacity

    @property
    def offset(self):
        """Where the logical bytes start in the file (a header may sit in front)."""
        return self._offset

    @property
    def closed(self):
        """Whether this Segment's descriptor is closed (mappings made before stay valid)."""
        return self._fd < 0

    def segment_id(self):
        """``(st_dev, st_ino)`` of the memfd: equal for every descriptor and mapping of it."""
        return (self._dev, self._ino)

    def close(self):
        """Close the descriptor now (never recycled, no ``on_release``); mappings already made
        stay valid.  Idempotent."""
        cdef int fd = self._fd
        if fd >= 0:
            self._fd = -1
            _atomic_add(&_live, -1)
            close(fd)

    cdef object _map(self, int prot, bint populate):
        """A memoryview over a new mapping of the logical bytes."""
        cdef int fd = self.fd
        cdef off_t start = self._offset // <Py_ssize_t>_page * <Py_ssize_t>_page
        cdef size_t length = <size_t>(self._offset - start + self._size)
        cdef int flags = MAP_SHARED | (MAP_POPULATE if populate else 0)
        cdef void *base
        with nogil:
            base = mmap(NULL, length, prot, flags, fd, start)
        if base == MAP_FAILED:
            raise OSError(errno, f"mmap of segment {self._dev}:{self._ino} failed: "
                                 f"{os.strerror(errno)}")
        cdef _Mapping mapping = _Mapping.__new__(_Mapping)
        mapping._base = <char *>base
        mapping._length = length
        mapping._start = self._offset - start
        mapping._size = self._size
        mapping._one = 1
        mapping._readonly = not (prot & PROT_WRITE)
        mapping.segment = self
        return memoryview(mapping)

    def readonly(self, populate=False):
        """A new ``PROT_READ``/``MAP_SHARED`` mapping of the logical bytes, as a read-only view.

        Arrays built on it are ``writeable=False`` and cannot be made writeable; it keeps this
        Segment alive.  ``populate`` faults every page in up front (``MAP_POPULATE``: much
        cheaper than faulting page by page for a large segment read whole).  Size 0: an empty
        view, no mapping.
        """
        if self._size == 0:
            return memoryview(b"")
        return self._map(PROT_READ, populate)

    def writable(self, populate=False):
        """A new read-write ``MAP_SHARED`` mapping of the logical bytes, for filling.

        The caller drops it (and anything built on it) before the segment is shared: that is
        what makes a shared segment immutable.  Size 0: an empty writable view, no mapping.
        """
        if self._size == 0:
            return memoryview(bytearray())
        return self._map(PROT_READ | PROT_WRITE, populate)

    def fill(self, src, hasher=None):
        """Copy the C-contiguous buffer ``src`` (exactly ``size`` bytes) into the segment.

        One pass; with ``hasher`` each chunk is hashed as it is copied (``copy_and_hash``).
        Counts ``bytes_copied`` (and ``bytes_hashed``); the writable mapping used is unmapped
        before returning.
        """
        cdef _HeldBuffer s = _hold(src, "src")
        cdef Py_ssize_t n = s.view.len
        if n != self._size:
            raise policy.fill_size_mismatch(n, self._size)
        cdef int fd
        cdef off_t start
        cdef size_t length
        cdef char *base
        cdef const unsigned char *sp = <const unsigned char *>s.view.buf
        if n:
            fd = self.fd
            update = None if hasher is None else hasher.update
            start = self._offset // <Py_ssize_t>_page * <Py_ssize_t>_page
            length = <size_t>(self._offset - start + n)
            with nogil:
                base = <char *>mmap(NULL, length, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_POPULATE, fd, start)
            if base == <char *>MAP_FAILED:
                raise OSError(errno, f"mmap of segment {self._dev}:{self._ino} failed: "
                                     f"{os.strerror(errno)}")
            try:
                if update is None:
                    with nogil:
                        memcpy(base + (self._offset - start), sp, <size_t>n)
                else:
                    _copy_feed(<unsigned char *>base + (self._offset - start), sp, n, update,
                               memoryview(s))
            finally:
                munmap(base, length)
        _atomic_add(&_copied, n)
        if hasher is not None:
            _atomic_add(&_hashed, n)

    def __repr__(self):
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<Segment {self._dev}:{self._ino} size={self._size} {state}>"


@cython.no_gc_clear
cdef class _Mapping:
    """One mapping of a Segment, exporting its logical bytes; unmapped when garbage."""

    def __init__(self, *args, **kwargs):
        raise TypeError("mappings come from Segment.readonly() and Segment.writable()")

    def __dealloc__(self):
        if self._base != NULL:
            munmap(self._base, self._length)
            self._base = NULL

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if (flags & PyBUF_WRITABLE) and self._readonly:
            raise BufferError("this segment mapping is read-only (PROT_READ)")
        buffer.buf = self._base + self._start
        buffer.obj = self
        buffer.len = self._size
        buffer.readonly = self._readonly
        buffer.itemsize = 1
        buffer.format = <char *>"B" if flags & PyBUF_FORMAT else NULL
        buffer.ndim = 1
        buffer.shape = &self._size if flags & PyBUF_ND else NULL
        buffer.strides = &self._one if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __repr__(self):
        return f"<segment mapping of {self._size} bytes of {self.segment!r}>"


cdef _Mapping _mapping_of(object obj):
    """The segment mapping under a memoryview / numpy array (following .obj / .base), or None."""
    for _ in range(256):
        if type(obj) is _Mapping:
            return obj
        if isinstance(obj, memoryview):
            try:
                obj = obj.obj
            except ValueError:  # a released view refers to nothing any more
                return None
        elif isinstance(obj, numpy.ndarray):
            obj = obj.base
        else:
            return None
    return None


def segment_of(obj):
    """The ``Segment`` whose mapping holds the memory of a numpy array / memoryview, or None."""
    mapping = _mapping_of(obj)
    return None if mapping is None else mapping.segment


def segment_id(obj):
    """``(st_dev, st_ino)`` of the segment holding obj's memory, or None (not a segment)."""
    mapping = _mapping_of(obj)
    return None if mapping is None else mapping.segment.segment_id()


def as_array(Segment segment, dtype, shape):
    """A read-only numpy array of ``dtype`` and ``shape`` over ``segment.readonly()``.

    ``writeable=False`` and cannot be made writeable; its ``.base`` chain ends at the mapping,
    which keeps the Segment alive, so ``segment_of`` finds it from the array and any view.
    ValueError when dtype and shape do not cover exactly the segment's size.
    """
    dtype = numpy.dtype(dtype)
    shape, count = policy.array_count(dtype, shape, segment.size)
    return numpy.frombuffer(segment.readonly(), dtype=dtype, count=count).reshape(shape)


# --- numpy data-memory handler -------------------------------------------------------------------

cdef struct _Handler:
    # One installed handler; numpy's capsule owns it (freed by _handler_destructor once no
    # array allocated through it is left).  ``data`` must come first: numpy sees a
    # PyDataMem_Handler; ``ctx`` points back at this struct.
    _DataHandler data
    _DataAllocator *prev        # the handler it replaced, for everything not served here
    PyObject *prev_capsule      # a reference keeping ``prev`` alive
    size_t threshold
    size_t headroom
    size_t margin
    char *meminfo
    size_t nlimits
    char **limits               # 2 * nlimits paths: limit file, usage file


cdef bint _table_add(_Alloc *record) noexcept nogil:
    global _allocs, _allocs_cap
    cdef _Alloc *grown
    cdef size_t new_cap
    cdef bint ok = True
    pthread_mutex_lock(&_lock)
    if _allocs_len == _allocs_cap:
        new_cap = 16 if _allocs_cap == 0 else 2 * _allocs_cap
        grown = <_Alloc *>realloc(_allocs, new_cap * sizeof(_Alloc))
        if grown == NULL:
            ok = False
        else:
            _allocs = grown
            _allocs_cap = new_cap
    if ok:
        _allocs[_allocs_len] = record[0]
        _store_size(&_allocs_len, _allocs_len + 1)
    pthread_mutex_unlock(&_lock)
    return ok


cdef Py_ssize_t _table_index(void *data) noexcept nogil:
    """Index of the record of ``data`` (caller holds _lock), or -1."""
    cdef size_t i
    for i in range(_allocs_len):
        if _allocs[i].data == <char *>data:
            return <Py_ssize_t>i
    return -1


cdef bint _table_find(void *data, _Alloc *out, bint remove) noexcept nogil:
    """Copy the record of ``data`` to *out (and remove it); False when it is not ours."""
    cdef Py_ssize_t i
    if _load_size(&_allocs_len) == 0:
        return False
    pthread_mutex_lock(&_lock)
    i = _table_index(data)
    if i >= 0:
        out[0] = _allocs[i]
        if remove:
            _allocs[i] = _allocs[_allocs_len - 1]
            _store_size(&_allocs_len, _allocs_len - 1)
    pthread_mutex_unlock(&_lock)
    return i >= 0


cdef bint _read_small_file(const char *path, char *buf, size_t cap) noexcept nogil:
    """Read up to cap-1 bytes of path, NUL-terminated; False when it cannot be read."""
    cdef int fd = open(path, O_RDONLY | O_CLOEXEC)
    cdef ssize_t got
    cdef size_t total = 0
    if fd < 0:
        return False
    while total < cap - 1:
        got = read(fd, buf + total, cap - 1 - total)
        if got <= 0:
            break
        total += <size_t>got
    close(fd)
    buf[total] = 0
    return total > 0


cdef bint _read_number(const char *path, unsigned long long *value) noexcept nogil:
    cdef char buf[64]
    cdef char *end
    if not _read_small_file(path, buf, sizeof(buf)) or buf[0] < 48 or buf[0] > 57:
        return False    # missing, or not a number ("max" means no limit)
    value[0] = strtoull(buf, &end, 10)
    return True


cdef bint _memory_allows(_Handler *h, size_t n) noexcept nogil:
    """The C twin of policy.check_memory(): n + margin fits MemAvailable and every cgroup's headroom
    (unknown counts as room)."""
    cdef char buf[8192]
    cdef char *line
    cdef unsigned long long available = <unsigned long long>-1, limit, usage, headroom
    cdef size_t i
    if h.meminfo != NULL and _read_small_file(h.meminfo, buf, sizeof(buf)):
        line = strstr(buf, b"MemAvailable:")
        if line != NULL:
            available = strtoull(line + 13, NULL, 10) * 1024
    for i in range(h.nlimits):
        if _read_number(h.limits[2 * i], &limit) and limit < _C_UNLIMITED:
            usage = 0
            _read_number(h.limits[2 * i + 1], &usage)
            headroom = limit - usage if limit > usage else 0
            if headroom < available:
                available = headroom
    return available == <unsigned long long>-1 or n + h.margin <= available


cdef void *_segment_alloc(_Handler *h, size_t n, bint zero) noexcept nogil:
    """n bytes at base + headroom of a MAP_SHARED read-write mapping of a segment (recycled
    when one fits, populated then); NULL when that cannot be done (the caller falls back)."""
    cdef size_t need, capacity = 0, map_len
    cdef int fd, err, call
    cdef bint recycled
    cdef char *base
    cdef _Alloc record
    if n > SIZE_MAX - h.headroom - _page:
        return NULL
    need = h.headroom + n
    fd = _free_take(need, &capacity)
    recycled = fd >= 0
    if not recycled:
        if not _memory_allows(h, need):
            return NULL
        capacity = _class_of(need)
        fd = _new_memfd(need, capacity, &err, &call)
        if fd < 0:
            return NULL
    map_len = _page_round(need)
    base = <char *>mmap(NULL, map_len, PROT_READ | PROT_WRITE,
                        MAP_SHARED | (MAP_POPULATE if recycled else 0), fd, 0)
    if base == <char *>MAP_FAILED:
        if recycled:
            _free_put(fd, capacity)
        else:
            close(fd)
        return NULL
    if zero and recycled:
        memset(base + h.headroom, 0, n)
    record.data = base + h.headroom
    record.base = base
    record.map_len = map_len
    record.size = n
    record.capacity = capacity
    record.headroom = h.headroom
    record.fd = fd
    record.exported = False
    if not _table_add(&record):
        munmap(base, map_len)
        _free_put(fd, capacity)
        return NULL
    return record.data


cdef void _segment_free(_Alloc *record) noexcept nogil:
    munmap(record.base, record.map_len)
    if record.exported:
        close(record.fd)
    else:
        _free_put(record.fd, record.capacity)


cdef void *_h_malloc(void *ctx, size_t n) noexcept nogil:
    cdef _Handler *h = <_Handler *>ctx
    cdef void *p
    if n >= h.threshold:
        p = _segment_alloc(h, n, False)
        if p != NULL:
            return p
    return h.prev.malloc(h.prev.ctx, n)


cdef void *_h_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef _Handler *h = <_Handler *>ctx
    cdef void *p
    if elsize and nelem > SIZE_MAX // elsize:
        return NULL
    if nelem * elsize >= h.threshold:
        p = _segment_alloc(h, nelem * elsize, True)
        if p != NULL:
            return p
    return h.prev.calloc(h.prev.ctx, nelem, elsize)


cdef void _h_free(void *ctx, void *p, size_t size) noexcept nogil:
    cdef _Handler *h = <_Handler *>ctx
    cdef _Alloc record
    if p != NULL and _table_find(p, &record, True):
        _segment_free(&record)
    else:
        h.prev.free(h.prev.ctx, p, size)


cdef void *_h_realloc(void *ctx, void *p, size_t n) noexcept nogil:
    """Not ours: the previous handler's realloc.  Ours: in place while it stays above the
    threshold within the mapping (and is not exported), else allocate + memcpy + free."""
    cdef _Handler *h = <_Handler *>ctx
    cdef _Alloc record
    cdef Py_ssize_t i
    cdef void *q
    if p == NULL or not _table_find(p, &record, False):
        return h.prev.realloc(h.prev.ctx, p, n)
    if not record.exported and h.threshold <= n <= record.map_len - record.headroom:
        pthread_mutex_lock(&_lock)
        i = _table_index(p)
        if i >= 0:
            _allocs[i].size = n
        pthread_mutex_unlock(&_lock)
        return p
    q = _h_malloc(ctx, n if n else 1)
    if q == NULL:
        return NULL
    memcpy(q, p, n if n < record.size else record.size)
    _h_free(ctx, p, record.size)
    return q


cdef void _handler_destructor(object capsule) noexcept:
    cdef _Handler *h = <_Handler *>PyCapsule_GetPointer(capsule, b"mem_handler")
    cdef size_t i
    if h == NULL:
        return
    for i in range(2 * h.nlimits):
        free(h.limits[i])
    free(h.limits)
    free(h.meminfo)
    Py_DECREF(<object>h.prev_capsule)
    free(h)


cdef _Handler *_handler_of(object capsule) except? NULL:
    return <_Handler *>PyCapsule_GetPointer(capsule, b"mem_handler")


# The handler this context had before install_allocator() (restored by uninstall_allocator()).
_previous_handler = contextvars.ContextVar("seamless_previous_numpy_handler", default=None)


def install_allocator(threshold=1 << 20, headroom=4096):
    """Serve numpy allocations of ``threshold`` bytes and more from segments, in this thread's
    context only (numpy's handler is context-local: other threads keep theirs).

    Each such allocation gets a read-write ``MAP_SHARED`` mapping of a segment (a fitting
    free-list entry, populated, or a new memfd of class size) and its data starts ``headroom``
    bytes in (a multiple of 64), so ``claim`` can put a header in front without a copy.
    Smaller allocations, and any that cannot be served (memory short, memfd failure), go to the
    previous handler: the handler never fails where numpy's would not.  Returns True.
    """
    threshold = policy.check_size(threshold, "threshold")
    headroom = policy.check_size(headroom, "headroom")
    if headroom % 64:
        raise ValueError(f"headroom must be a multiple of 64 (data alignment), got {headroom}")
    current = _get_handler()
    cdef _Handler *cur = _handler_of(current)
    if cur.data.allocator.malloc == _h_malloc:
        current = <object>cur.prev_capsule    # replace ours, never stack on it
    limits = [(limit, usage) for limit, usage, _ in machine.memory_limit_files()
              if os.path.exists(limit)]
    cdef _Handler *h = <_Handler *>calloc(1, sizeof(_Handler))
    if h == NULL:
        raise MemoryError("install_allocator(): no memory for the handler")
    h.limits = <char **>calloc(2 * len(limits) + 1, sizeof(char *))
    if h.limits == NULL:
        free(h)
        raise MemoryError("install_allocator(): no memory for the handler")
    for i, pair in enumerate(limits):
        for j in range(2):
            h.limits[2 * i + j] = strdup(os.fsencode(pair[j]))
    h.nlimits = len(limits)
    h.meminfo = strdup(os.fsencode(machine.MEMINFO))
    h.threshold = threshold
    h.headroom = headroom
    h.margin = SAFETY_MARGIN
    h.prev = &_handler_of(current).data.allocator
    h.prev_capsule = <PyObject *>current
    Py_INCREF(current)
    memcpy(h.data.name, b"seamless_segments", 18)
    h.data.version = 1
    h.data.allocator.ctx = h
    h.data.allocator.malloc = _h_malloc
    h.data.allocator.calloc = _h_calloc
    h.data.allocator.realloc = _h_realloc
    h.data.allocator.free = _h_free
    capsule = PyCapsule_New(h, b"mem_handler", _handler_destructor)
    previous = _set_handler(capsule)
    if _previous_handler.get() is None:
        _previous_handler.set(previous)
    return True


def uninstall_allocator():
    """Restore the handler this context had before ``install_allocator``; arrays allocated
    meanwhile keep theirs (numpy frees each through the handler that made it)."""
    previous = _previous_handler.get()
    if previous is not None:
        _set_handler(previous)
        _previous_handler.set(None)


def allocator_installed():
    """Whether this context's numpy handler is the segment allocator."""
    return _handler_of(_get_handler()).data.allocator.malloc == _h_malloc


def claim(array, prefix):
    """The segment under ``array`` as a Segment whose logical bytes are ``prefix`` + the array's
    data, written in place (no copy), or None.

    ``array`` qualifies when it is a C-contiguous numpy array whose data is exactly one live
    allocation of the handler (same start, same nbytes; it owns its data or its base chain
    ends at an array that does), not claimed before, and ``prefix`` fits in the headroom.
    The allocation is then exported: when numpy frees it the descriptor is closed, never
    recycled here.  The Segment owns a duplicate of the descriptor and closes it when garbage.
    """
    cdef const unsigned char[::1] head = prefix
    if not isinstance(array, numpy.ndarray):
        return None
    cdef cnp.ndarray arr = array
    owner = arr
    while isinstance(owner.base, numpy.ndarray):
        owner = owner.base
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not owner.flags.owndata:
        return None
    cdef char *data = <char *>cnp.PyArray_DATA(arr)
    cdef size_t nbytes = <size_t>cnp.PyArray_NBYTES(arr)
    cdef size_t plen = head.shape[0]
    cdef Py_ssize_t i
    cdef int fd = -1
    cdef _Alloc record
    cdef stat st
    with nogil:
        if _load_size(&_allocs_len):
            pthread_mutex_lock(&_lock)
            i = _table_index(data)
            if (i >= 0 and not _allocs[i].exported and _allocs[i].size == nbytes
                    and plen <= _allocs[i].headroom):
                fd = fcntl(_allocs[i].fd, F_DUPFD_CLOEXEC, 0)
                if fd >= 0:
                    if plen:
                        memcpy(data - plen, &head[0], plen)
                    _allocs[i].exported = True
                    record = _allocs[i]
            pthread_mutex_unlock(&_lock)
    if fd < 0:
        return None
    if fstat(fd, &st) < 0:
        close(fd)
        raise OSError(errno, f"claim(): fstat of a segment failed: {os.strerror(errno)}")
    return _adopt(fd, plen + nbytes, &st, record.headroom - plen, False, None)


# --- fused copy-and-hash ------------------------------------------------------------------------

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
        raise policy.not_a_buffer(name, obj)
    cdef _HeldBuffer held = _HeldBuffer.__new__(_HeldBuffer)
    held.one = 1
    PyObject_GetBuffer(obj, &held.view, PyBUF_STRIDES)
    held.held = True
    if not PyBuffer_IsContiguous(&held.view, b'C'):
        shape = tuple([held.view.shape[i] for i in range(held.view.ndim)])
        strides = tuple([held.view.strides[i] for i in range(held.view.ndim)])
        raise policy.not_contiguous(name, obj, shape, strides)
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
    if d.view.readonly or d.view.len != s.view.len:
        policy.check_copy(dst, d.view.readonly, d.view.len, s.view.len)
    cdef const unsigned char *sp = <const unsigned char *>s.view.buf
    cdef unsigned char *dp = <unsigned char *>d.view.buf
    cdef Py_ssize_t n = s.view.len
    if n > 0 and sp < dp + n and dp < sp + n:
        raise ValueError(policy.OVERLAP)
    update = hasher.update
    _copy_feed(dp, sp, n, update, memoryview(s))


def hash_into(src, hasher):
    """Feed the bytes of the C-contiguous buffer ``src`` to ``hasher.update`` in 1 MiB chunks.

    Chunked like copy_and_hash so both give a hasher the same calls.
    """
    cdef _HeldBuffer s = _hold(src, "src")
    update = hasher.update
    _feed(update, memoryview(s), s.view.len)
