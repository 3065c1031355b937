# cython: language_level=3, embedsignature=True
"""Lock-free completion flags (compiled core; twin: seamless/_ipc/_pure/flags.py).

A ``Slab`` holds ``nslots`` 32-bit words, each ``generation << 3 | state``
(generations wrap modulo 2**29), and at most one eventfd.

Data flow and ownership:

- Words: a private slab ``calloc``s them and frees them when it dies; a slab given
  ``buffer=`` (e.g. a shared ``mmap`` of a memfd) holds one writable export of it
  until it dies, so the memory cannot be unmapped under a waiter.  The caller owns
  the buffer object; several slabs, in one or several processes, may view it.
- Owner side (``acquire``, ``release``, ``reset``): one process hands slots out; the
  free list and in-use marks are process-local and touched only with the GIL held,
  which serialises them between threads.  ``release`` and ``reset`` bump the
  generation, so a late writer holding the old one is refused.
- Progress (``start``: PENDING -> RUNNING) has one writer; the terminal transition
  (``finish``) is a compare-and-swap from PENDING or RUNNING of the same generation:
  the first writer wins.  Both are acq_rel, readers load with acquire, so a result
  published before ``finish`` is seen by whoever sees the terminal state
  (orders in seamless_atomics.h).
- Waking: after a won terminal transition (and after ``reset``/``release``, which
  move the generation on) every waiter on the word gets ``FUTEX_WAKE`` (a shared
  futex for a slab over ``buffer``, a private one otherwise), then, if ``fileno()``
  created the eventfd, 1 is added to it.  ``wait`` blocks in ``FUTEX_WAIT`` on the
  word without the GIL, in slices of at most 100 ms between which it runs signal
  handlers (Ctrl-C), and never spins.
- The eventfd is created by the first ``fileno()``, owned by the slab, emptied by
  ``drain()`` and closed by ``close()`` (idempotent, also when the slab dies).

The word layout, state names, limits and error texts are seamless/_ipc/policy/flags.py's
(the layout's C enum in flags.pxd is generated from it).

Mechanism only: no configuration, logging or retry; callers pass sizes and timeouts.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, errno
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from posix.unistd cimport close as _close, read as _read, write as _write

import os

from seamless._ipc.policy import flags as policy
from seamless._ipc.policy.flags import CANCELLED, DONE, EMPTY, FAILED, PENDING, RUNNING

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

__all__ = ["CANCELLED", "DONE", "EMPTY", "FAILED", "PENDING", "RUNNING", "Slab"]

cdef long long _SLICE_NS = policy.WAIT_SLICE_NS


cdef inline uint32_t _gen(uint32_t word) noexcept nogil:
    return word >> _STATE_BITS


cdef inline uint32_t _state(uint32_t word) noexcept nogil:
    return word & _STATE_MASK


cdef inline uint32_t _word(uint32_t generation, uint32_t state) noexcept nogil:
    return (generation << _STATE_BITS) | state


cdef uint32_t _generation_arg(object generation) except? 0xFFFFFFFF:
    cdef long long g = generation
    if g < 0 or g > _GENERATION_MASK:
        raise policy.generation_out_of_range(g)
    return <uint32_t>g


cdef class Slab:
    """Completion words with generations, futex waits and one lazily created eventfd."""

    def __cinit__(self, nslots=4096, *, buffer=None):
        self.efd = -1
        cdef long long n = nslots
        if n < 1 or n > policy.MAX_SLOTS:
            raise policy.nslots_out_of_range(n)
        self.n = <uint32_t>n
        if buffer is None:
            self.words = <uint32_t *>calloc(self.n, sizeof(uint32_t))
            if self.words == NULL:
                raise MemoryError(f"cannot allocate a flag slab of {n} slots")
        else:
            try:
                PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE)
            except BufferError as exc:
                raise policy.buffer_not_writable(buffer, exc) from None
            self.has_view = True
            if self.view.len < 4 * n:
                raise policy.buffer_too_small(self.view.len, n)
            if (<uintptr_t>self.view.buf) % 4:
                raise ValueError(policy.BUFFER_MISALIGNED)
            self.words = <uint32_t *>self.view.buf
            self.shared = True
        self.free = <uint32_t *>malloc(self.n * sizeof(uint32_t))
        self.in_use = <unsigned char *>calloc(self.n, 1)
        if self.free == NULL or self.in_use == NULL:
            raise MemoryError(f"cannot allocate the free list of a flag slab of {n} slots")
        cdef uint32_t i
        for i in range(self.n):
            self.free[i] = self.n - 1 - i  # acquire() hands out 0, 1, 2, ... first
        self.nfree = self.n

    def __dealloc__(self):
        if self.efd >= 0:
            _close(self.efd)
            self.efd = -1
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        elif self.words != NULL:
            free(self.words)
        self.words = NULL
        free(self.free)
        free(self.in_use)

    @property
    def nslots(self):
        """Number of words in the slab."""
        return self.n

    cdef uint32_t _slot(self, object slot) except? 0xFFFFFFFF:
        cdef long long i = slot
        if i < 0 or i >= self.n:
            raise policy.slot_out_of_range(i, self.n)
        return <uint32_t>i

    cdef int _wake(self, uint32_t slot) except -1:
        """Wake every waiter on the word (its state or generation changed).  A private slab
        nobody waits on skips the system call: a waiter counts itself (with the GIL, which
        the waker holds too) before FUTEX_WAIT, and FUTEX_WAIT returns at once when the word
        changed after the waiter read it, so no wake-up is lost."""
        if not self.shared and self.nwaiters == 0:
            return 0
        cdef int rc = seamless_futex_wake_all(&self.words[slot], self.shared)
        if rc:
            raise policy.futex_failed("FUTEX_WAKE", slot, rc)
        return 0

    cdef int _signal(self, uint32_t slot) except -1:
        """After a won terminal transition: wake the word's waiters, then the eventfd's
        watcher (called with the GIL, so close() cannot close the eventfd between the
        check and the write)."""
        cdef uint64_t one = 1
        self._wake(slot)
        if self.efd >= 0 and _write(self.efd, &one, 8) < 0 and errno != EAGAIN:
            # EAGAIN: the counter is saturated, so the eventfd is readable anyway.
            raise OSError(errno, f"writing the flag slab's eventfd failed: {os.strerror(errno)}")
        return 0

    def acquire(self):
        """Take a free slot, set it PENDING and return (slot, generation).

        A word found non-EMPTY (a shared buffer written before) gets a fresh
        generation, so a holder of the old one is stale."""
        if self.nfree == 0:
            raise policy.slab_full(self.n)
        self.nfree -= 1
        cdef uint32_t slot = self.free[self.nfree]
        cdef uint32_t word = seamless_load_acquire(&self.words[slot])
        cdef uint32_t generation = _gen(word)
        if _state(word) != _EMPTY:
            generation = (generation + 1) & _GENERATION_MASK
        self.in_use[slot] = 1
        word = seamless_exchange(&self.words[slot], _word(generation, _PENDING))
        if _gen(word) != generation:
            self._wake(slot)
        return slot, generation

    def release(self, slot):
        """Give an acquired slot back: its word becomes EMPTY with the next generation."""
        cdef uint32_t s = self._slot(slot)
        if not self.in_use[s]:
            raise policy.not_acquired(s)
        cdef uint32_t generation = (_gen(seamless_load_acquire(&self.words[s])) + 1) & _GENERATION_MASK
        seamless_exchange(&self.words[s], _word(generation, _EMPTY))
        self.in_use[s] = 0
        self.free[self.nfree] = s
        self.nfree += 1
        self._wake(s)

    def state(self, slot):
        """The word's state (acquire load)."""
        return _state(seamless_load_acquire(&self.words[self._slot(slot)]))

    def generation(self, slot):
        """The word's generation (acquire load)."""
        return _gen(seamless_load_acquire(&self.words[self._slot(slot)]))

    def word(self, slot):
        """The whole word, generation << 3 | state (acquire load)."""
        return seamless_load_acquire(&self.words[self._slot(slot)])

    cdef bint _start(self, uint32_t slot, uint32_t generation) except -1:
        cdef uint32_t *p = &self.words[slot]
        cdef uint32_t word = seamless_load_acquire(p)
        while True:
            if _gen(word) != generation or _state(word) >= _DONE:
                return False
            if _state(word) == _PENDING:
                if seamless_cas(p, &word, _word(generation, _RUNNING)):
                    return True
                continue  # a terminal transition raced us; word holds it now
            raise policy.start_refused(slot, generation, _state(word))

    def start(self, slot, generation):
        """PENDING -> RUNNING (one writer); False if the generation is stale or the word
        is already terminal (e.g. cancelled), ValueError if RUNNING already or EMPTY."""
        return self._start(self._slot(slot), _generation_arg(generation))

    cdef bint _finish(self, uint32_t slot, uint32_t generation, uint32_t state) except -1:
        cdef uint32_t *p = &self.words[slot]
        cdef uint32_t word = seamless_load_acquire(p)
        while True:
            if _gen(word) != generation or _state(word) >= _DONE:
                return False
            if _state(word) == _EMPTY:
                raise policy.finish_on_empty(slot, generation)
            # Release on success: what the caller published before is visible to readers.
            if seamless_cas(p, &word, _word(generation, state)):
                self._signal(slot)
                return True

    def finish(self, slot, generation, state):
        """Terminal transition by compare-and-swap: True if this call won, False if the
        word was already terminal in `generation` or the generation is stale."""
        if state not in (_DONE, _FAILED, _CANCELLED):
            raise policy.not_terminal("finish", state)
        return self._finish(self._slot(slot), _generation_arg(generation), state)

    cdef uint32_t _reset(self, uint32_t slot) except? 0xFFFFFFFF:
        if not self.in_use[slot]:
            raise policy.reset_not_owner(slot)
        cdef uint32_t generation = (_gen(seamless_load_acquire(&self.words[slot])) + 1) & _GENERATION_MASK
        seamless_exchange(&self.words[slot], _word(generation, _PENDING))
        self._wake(slot)
        return generation

    def reset(self, slot):
        """Owner only: bump the generation, set PENDING, return the new generation."""
        return self._reset(self._slot(slot))

    cdef uint32_t _wait(self, uint32_t slot, uint32_t generation,
                        long long timeout_ns) except? 0xFFFFFFFF:
        cdef uint32_t *p = &self.words[slot]
        cdef int shared = self.shared
        cdef long long deadline = seamless_monotonic_ns() + timeout_ns if timeout_ns >= 0 else 0
        cdef long long pause
        cdef int rc
        cdef uint32_t word = seamless_load_acquire(p)
        while _gen(word) == generation and _state(word) < _DONE:
            pause = _SLICE_NS
            if timeout_ns >= 0:
                pause = deadline - seamless_monotonic_ns()
                if pause <= 0:
                    break
                if pause > _SLICE_NS:
                    pause = _SLICE_NS
            self.nwaiters += 1
            with nogil:
                rc = seamless_futex_wait(p, word, pause, shared)
            self.nwaiters -= 1
            if rc and rc != EAGAIN and rc != ETIMEDOUT and rc != EINTR:
                raise policy.futex_failed("FUTEX_WAIT", slot, rc)
            PyErr_CheckSignals()
            word = seamless_load_acquire(p)
        return _state(word)

    def wait(self, slot, generation, timeout=None):
        """Block until the word is terminal in `generation` or its generation moved on;
        return the state seen (the non-terminal one on timeout).  Signal handlers run
        at least every 100 ms, so Ctrl-C interrupts the wait."""
        cdef long long timeout_ns = -1
        if timeout is not None:
            timeout_ns = policy.timeout_ns(timeout)
        return self._wait(self._slot(slot), _generation_arg(generation), timeout_ns)

    def fileno(self):
        """The slab's eventfd (created on first call): readable after a terminal transition."""
        if self.closed:
            raise policy.closed_eventfd("this flag slab")
        if self.efd < 0:
            self.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.efd < 0:
                raise OSError(errno, f"cannot create the flag slab's eventfd: {os.strerror(errno)}")
        return self.efd

    def drain(self):
        """Read and clear the eventfd: the number of terminal transitions since the last
        drain (0 if none, or if fileno() was never called)."""
        cdef uint64_t count = 0
        if self.efd < 0:
            return 0
        if _read(self.efd, &count, 8) < 0:
            if errno == EAGAIN:
                return 0
            raise OSError(errno, f"reading the flag slab's eventfd failed: {os.strerror(errno)}")
        return count

    def close(self):
        """Close the eventfd (idempotent); the words stay usable."""
        if self.efd >= 0:
            _close(self.efd)
            self.efd = -1
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
