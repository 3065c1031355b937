# cython: language_level=3
"""C-level declarations of seamless._ipc.flags, for sibling modules (window) to cimport."""

from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint32_t


cdef extern from "seamless_atomics.h" nogil:
    uint32_t seamless_load_acquire(uint32_t *p)
    uint32_t seamless_exchange(uint32_t *p, uint32_t value)
    int seamless_cas(uint32_t *p, uint32_t *expected, uint32_t desired)
    int seamless_futex_wait(uint32_t *p, uint32_t expected, long long timeout_ns, int shared)
    int seamless_futex_wake_all(uint32_t *p, int shared)
    long long seamless_monotonic_ns()


cdef enum:
    _EMPTY = 0
    _PENDING = 1
    _RUNNING = 2
    _DONE = 3
    _FAILED = 4
    _CANCELLED = 5
    _STATE_BITS = 3
    _STATE_MASK = 7
    _GENERATION_MASK = 0x1FFFFFFF  # generations wrap modulo 2**29


cdef class Slab:
    # words: nslots completion words, calloc'ed (private) or inside `view` (shared).
    # free/nfree: stack of slots not acquired; in_use[slot] = 1 while acquired.
    # All three bookkeeping fields are touched only with the GIL held.
    cdef uint32_t *words
    cdef uint32_t n
    cdef bint shared
    cdef Py_buffer view
    cdef bint has_view
    cdef uint32_t *free
    cdef uint32_t nfree
    cdef unsigned char *in_use
    cdef int efd            # the lazily created eventfd, -1 if none
    cdef Py_ssize_t nwaiters  # threads of this process in FUTEX_WAIT on a word (GIL held)
    cdef bint closed

    cdef uint32_t _slot(self, object slot) except? 0xFFFFFFFF
    cdef int _wake(self, uint32_t slot) except -1
    cdef int _signal(self, uint32_t slot) except -1
    cdef bint _start(self, uint32_t slot, uint32_t generation) except -1
    cdef bint _finish(self, uint32_t slot, uint32_t generation, uint32_t state) except -1
    cdef uint32_t _reset(self, uint32_t slot) except? 0xFFFFFFFF
    cdef uint32_t _wait(self, uint32_t slot, uint32_t generation, long long timeout_ns) except? 0xFFFFFFFF
