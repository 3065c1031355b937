# cython: language_level=3, embedsignature=True
"""The ordered result window (compiled core; twin: seamless/_ipc/_pure/window.py).

A ``Window(capacity)`` hands out sequence numbers 0, 1, 2, ... (``reserve()``), at most
``capacity`` held at once, and releases them strictly in order (``next_ready()``,
``try_next()``): item N is released only when its own word is terminal and N is the head, so
by induction every earlier item was finished and released first.  See docs/parallel.md.

Data flow and ownership:

- Words: the window owns one private ``flags.Slab`` of ``capacity`` words, word ``seq %
  capacity`` for item ``seq``, in generation ``seq // capacity + 1`` (modulo 2**29; a fresh
  word is EMPTY in generation 0).  The slab frees them when the window dies.
- Owner side (``reserve``, ``start``, ``next_ready``, ``try_next``, ``close``): one thread.
  ``reserve`` writes the slot's word PENDING in the item's generation (an exchange; no futex
  wake, because only the owner waits and only on a held item), ``next_ready``/``try_next``
  release the head once its word is terminal and leave the word as it is until the slot's
  next ``reserve``.  A released or never-reserved ``seq`` is not held: ``complete`` and
  ``start`` refuse it, ``state`` reports EMPTY.
- Completing side (``complete``, any thread): the slab's compare-and-swap from PENDING or
  RUNNING of the item's generation (first writer wins; release order publishes what the
  caller stored before), then ``FUTEX_WAKE`` and, if ``fileno()`` made the eventfd, a write
  to it.  All of it runs with the GIL held, like every owner operation, so a completion can
  neither land on a slot reused by a later ``reserve`` (the generation differs) nor write to
  an eventfd that ``close()`` closed.
- Waiting: ``next_ready`` blocks in ``FUTEX_WAIT`` on the head's word without the GIL, in
  slices of at most 100 ms between which signal handlers run (Ctrl-C), never spinning.
- The eventfd (the slab's) is created by the first ``fileno()``, emptied by ``drain()`` and
  closed by ``close()`` (idempotent, also when the window dies).

Limits and error texts are seamless/_ipc/policy/window.py's (the word layout,
policy/flags.py's).

Mechanism only: no configuration, logging or retry; callers pass capacities and timeouts.
The window holds integers and flags only; the caller keeps its objects in a list by slot.
"""

cimport cython
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint32_t

from seamless._ipc.flags cimport (
    Slab, _CANCELLED, _DONE, _EMPTY, _FAILED, _GENERATION_MASK, _PENDING, _RUNNING,
    _STATE_BITS, _STATE_MASK, seamless_exchange, seamless_load_acquire)

from seamless._ipc.policy import flags as flags_policy
from seamless._ipc.policy import window as policy
from seamless._ipc.policy.flags import CANCELLED, DONE, EMPTY, FAILED, PENDING, RUNNING

__all__ = ["CANCELLED", "DONE", "EMPTY", "FAILED", "PENDING", "RUNNING", "Window"]


cdef inline long long _index(object value) except? -1:
    """An integer argument as operator.index() takes it (a float is a TypeError, as in the
    twin; Cython's own conversion would truncate it)."""
    return PyNumber_Index(value)


cdef class Window:
    """A ring of ``capacity`` completion words that releases sequence numbers in order."""

    def __cinit__(self, capacity, *, first_seq=0):
        cdef long long n = _index(capacity)
        cdef long long first = _index(first_seq)
        policy.check_construction(n, first)
        self.slab = Slab(n)
        self.cap = n
        self.head_seq = first
        self.tail_seq = first

    @property
    def capacity(self):
        """Most items held at once."""
        return self.cap

    @property
    def held(self):
        """Items reserved and not yet released."""
        return self.tail_seq - self.head_seq

    @property
    def head(self):
        """The sequence number released next."""
        return self.head_seq

    @cython.cdivision(True)
    cdef uint32_t _generation(self, long long seq) noexcept nogil:
        return <uint32_t>((seq // self.cap + 1) & _GENERATION_MASK)

    @cython.cdivision(True)
    cdef uint32_t _slot(self, long long seq) noexcept nogil:
        return <uint32_t>(seq % self.cap)

    def slot_of(self, seq):
        """The ring slot of ``seq`` (``seq % capacity``): where callers keep its objects."""
        cdef long long s = _index(seq)
        if s < 0:
            raise policy.negative_seq(s)
        return self._slot(s)

    def state(self, seq):
        """The state of a held item (acquire load); EMPTY for a seq not held (released, or
        never reserved)."""
        cdef long long s = _index(seq)
        if s < self.head_seq or s >= self.tail_seq:
            return _EMPTY
        return seamless_load_acquire(&self.slab.words[self._slot(s)]) & _STATE_MASK

    cdef long long _reserve(self) except -2:
        if self.closed:
            raise policy.closed("reserve")
        cdef long long seq = self.tail_seq
        if seq - self.head_seq >= self.cap:
            return -1
        seamless_exchange(&self.slab.words[self._slot(seq)],
                          (self._generation(seq) << _STATE_BITS) | _PENDING)
        self.tail_seq = seq + 1
        return seq

    def reserve(self):
        """The next item, set PENDING: ``(seq, slot)`` with ``slot == seq % capacity``, or
        None while ``capacity`` items are held (owner thread only)."""
        cdef long long seq = self._reserve()
        if seq < 0:
            return None
        return seq, self._slot(seq)

    def start(self, seq):
        """PENDING -> RUNNING (one writer); False if ``seq`` is not held, already terminal
        (e.g. cancelled) or the window is closed."""
        cdef long long s = _index(seq)
        if self.closed or s < self.head_seq or s >= self.tail_seq:
            return False
        cdef uint32_t slot = self._slot(s)
        if (seamless_load_acquire(&self.slab.words[slot]) & _STATE_MASK) == _RUNNING:
            raise policy.started_twice(s)
        return self.slab._start(slot, self._generation(s))

    cdef bint _complete(self, long long seq, long long state) except -1:
        if state != _DONE and state != _FAILED and state != _CANCELLED:
            raise flags_policy.not_terminal("complete", state)
        if self.closed or seq < self.head_seq or seq >= self.tail_seq:
            return False
        return self.slab._finish(self._slot(seq), self._generation(seq), <uint32_t>state)

    def complete(self, seq, state):
        """Move item ``seq`` to DONE, FAILED or CANCELLED by compare-and-swap (any thread);
        False if another terminal state won, ``seq`` is not held (released, its slot maybe
        reused, or never reserved) or the window is closed (a late callback is harmless)."""
        return self._complete(_index(seq), _index(state))

    cdef object _take(self):
        """Release the head if its word is terminal: ``(seq, state)``, else None.  The head's
        word is in the head's generation: only the owner's reserve() changes generations."""
        cdef long long seq = self.head_seq
        cdef uint32_t state = seamless_load_acquire(&self.slab.words[self._slot(seq)]) & _STATE_MASK
        if state < _DONE:
            return None
        self.head_seq = seq + 1
        return seq, state

    def next_ready(self, timeout=None):
        """Block (without the GIL) until the head item is finished, release it and return
        ``(seq, state)``; None after ``timeout`` seconds.  Signal handlers run at least every
        100 ms, so Ctrl-C interrupts the wait; nothing is released then."""
        cdef long long timeout_ns = -1
        if self.closed:
            raise policy.closed("next_ready")
        if self.tail_seq == self.head_seq:
            raise RuntimeError(policy.NOTHING_HELD)
        if timeout is not None:
            timeout_ns = flags_policy.timeout_ns(timeout)
        cdef long long seq = self.head_seq
        self.slab._wait(self._slot(seq), self._generation(seq), timeout_ns)
        return self._take()

    def try_next(self):
        """``next_ready()`` without blocking: ``(seq, state)`` if the head is finished (it is
        released), None if it is not or nothing is held."""
        if self.closed:
            raise policy.closed("try_next")
        if self.tail_seq == self.head_seq:
            return None
        return self._take()

    def fileno(self):
        """The eventfd (created on first call), readable after each completion: an event loop
        watches it, then calls drain() and try_next()."""
        if self.closed:
            raise flags_policy.closed_eventfd("this Window")
        return self.slab.fileno()

    def drain(self):
        """Read and clear the eventfd: completions since the last drain (0 if none, or if
        fileno() was never called)."""
        return self.slab.drain()

    def close(self):
        """Close the eventfd and refuse further completions (idempotent)."""
        self.closed = True
        self.slab.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"<Window capacity={self.cap} head={self.head_seq} "
                f"held={self.tail_seq - self.head_seq}{' closed' if self.closed else ''}>")
