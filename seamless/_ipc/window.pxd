# cython: language_level=3
"""C-level declarations of seamless._ipc.window, for other Cython code to cimport."""

from libc.stdint cimport uint32_t

from seamless._ipc.flags cimport Slab


cdef class Window:
    # slab: one private flag word per ring slot (slot = seq % cap), and the window's eventfd.
    # head_seq: the next seq to release; tail_seq: the next seq to reserve;
    # held = tail_seq - head_seq.  These and closed change only on the owning thread, and
    # every method touches them with the GIL held: complete()'s range check and its
    # compare-and-swap run with no owner operation in between.
    cdef Slab slab
    cdef long long cap
    cdef long long head_seq
    cdef long long tail_seq
    cdef bint closed

    cdef uint32_t _generation(self, long long seq) noexcept nogil
    cdef uint32_t _slot(self, long long seq) noexcept nogil
    cdef long long _reserve(self) except -2
    cdef bint _complete(self, long long seq, long long state) except -1
    cdef object _take(self)
