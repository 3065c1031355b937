# cython: language_level=3
"""C-level declarations of seamless._ipc.shm_array, for sibling modules to cimport."""

from cpython.buffer cimport Py_buffer


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_attr_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start_routine)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)


cdef struct _CopyJob:
    # Shared by the calling thread and the helper thread of one copy_and_hash call.
    # src/dst/nbytes are written before pthread_create and only read afterwards;
    # stop is written by the caller and read by the helper with relaxed atomics.
    const unsigned char *src
    unsigned char *dst
    Py_ssize_t nbytes
    int stop


cdef class _HeldBuffer:
    # One buffer export of `obj`, held until this object dies; re-exported as flat
    # read-only bytes so chunk memoryviews given to a hasher keep the memory alive.
    cdef Py_buffer view
    cdef bint held
    cdef Py_ssize_t one


cdef class Segment:
    # One memfd; the logical bytes are [_offset, _offset + _size) of a file of _capacity bytes.
    # _fd is -1 once closed or released (handed to the free list or to _on_release).
    cdef int _fd
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _offset
    cdef unsigned long long _dev
    cdef unsigned long long _ino
    cdef bint _recycle          # released to this process's free list (created here)
    cdef bint _reused           # taken from the free list: its pages are already touched
    cdef long _pid              # the process that owns _fd (a forked child only closes it)
    cdef object _on_release     # callable(fd) taking the descriptor over, or None
    cdef object __weakref__

    cdef object _map(self, int prot, bint populate)


cdef class _Mapping:
    # One mmap of a Segment: [_base, _base + _length) mapped, [_base + _start, + _size)
    # exported through the buffer protocol; munmap in __dealloc__.
    cdef char *_base
    cdef size_t _length
    cdef Py_ssize_t _start
    cdef Py_ssize_t _size
    cdef Py_ssize_t _one
    cdef bint _readonly
    cdef readonly Segment segment


cdef _HeldBuffer _hold(object obj, str name)
cdef int _feed(object update, object chunks, Py_ssize_t nbytes) except -1
cdef int _copy_feed(unsigned char *dst, const unsigned char *src, Py_ssize_t nbytes,
                    object update, object chunks) except -1
