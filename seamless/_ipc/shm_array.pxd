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


cdef _HeldBuffer _hold(object obj, str name)
cdef int _feed(object update, object chunks, Py_ssize_t nbytes) except -1
cdef int _copy_feed(unsigned char *dst, const unsigned char *src, Py_ssize_t nbytes,
                    object update, object chunks) except -1
