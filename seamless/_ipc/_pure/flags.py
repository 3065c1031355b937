"""Pure-Python twin of seamless/_ipc/flags.pyx: completion flags, the executable spec.

A ``Slab`` holds ``nslots`` 32-bit words, each ``generation << 3 | state``
(generations wrap modulo 2**29), and at most one eventfd.  Same API, semantics
and error texts as the compiled module; one ``threading.Condition`` per slab
stands in for its atomics.

Data flow and ownership:

- Words: a private slab keeps them in a Python list.  A slab given ``buffer=``
  keeps them in that buffer (native uint32, the compiled layout) through a
  ctypes array, which holds one export of the buffer while the slab lives; the
  caller owns the buffer object.
- Every read-modify-write of a word (``start``, ``finish``, ``reset``,
  ``acquire``, ``release``) and the owner's free list and in-use marks are
  guarded by the slab's Condition lock.  That lock is process-local: over a
  shared buffer, compare-and-swap is atomic only between threads of one
  process.  Racing terminal writers in several processes need the compiled core
  (the pool's completions all come from the parent's I/O thread).
- Waking: a won terminal transition, ``reset`` and ``release`` notify the
  Condition (in-process waiters of a private slab block on it) and, for a slab
  over ``buffer``, issue a shared ``FUTEX_WAKE`` through ctypes, since only a
  futex reaches waiters in other processes without polling; ``wait`` on such a
  slab blocks in ``FUTEX_WAIT`` (ctypes releases the GIL) in slices of at most
  100 ms, as the compiled module does, so Ctrl-C is seen.  A won terminal
  transition then adds 1 to the eventfd, if ``fileno()`` created it.
- The eventfd (``os.eventfd``) is created by the first ``fileno()``, owned by
  the slab, emptied by ``drain()`` and closed by ``close()`` (idempotent, also
  when the slab is collected).

The word layout, state names, limits and error texts are seamless/_ipc/policy/flags.py's.

Mechanism only: no configuration, logging or retry; callers pass sizes and timeouts.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import threading
import time

from seamless._ipc.policy import flags as policy
from seamless._ipc.policy.flags import (
    CANCELLED,
    DONE,
    EMPTY,
    FAILED,
    GENERATION_MASK,
    PENDING,
    RUNNING,
    STATE_BITS,
    STATE_MASK,
)

__all__ = ["CANCELLED", "DONE", "EMPTY", "FAILED", "PENDING", "RUNNING", "Slab"]

_SLICE = policy.WAIT_SLICE_NS / 1e9

# linux/futex.h
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = (1 << 31) - 1
# SYS_futex per machine (os.uname().machine); glibc has no futex() wrapper.
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "riscv64": 98, "ppc64le": 221, "ppc64": 221,
              "s390x": 238, "i686": 240, "i386": 240, "armv7l": 240, "armv6l": 240}


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscall():
    """libc's syscall() and the futex number of this machine, for slabs over a buffer."""
    machine = os.uname().machine
    if machine not in _SYS_FUTEX:
        raise OSError(errno.ENOSYS, f"the pure-Python flags twin knows no futex syscall number "
                                    f"for {machine!r}; a slab over a shared buffer needs the "
                                    f"compiled core there (pip install --force-reinstall .)")
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function, ctypes.c_long(_SYS_FUTEX[machine])


def _gen(word: int) -> int:
    return word >> STATE_BITS


def _state(word: int) -> int:
    return word & STATE_MASK


def _word(generation: int, state: int) -> int:
    return (generation << STATE_BITS) | state


def _generation_arg(generation) -> int:
    g = operator.index(generation)
    if not 0 <= g <= GENERATION_MASK:
        raise policy.generation_out_of_range(g)
    return g


class _LazyEventfd:
    """The eventfd of a slab or window, made on the first ``fileno()``: an event loop watches
    it.  Users hold ``_cond`` (a Condition), ``_efd`` (-1 until made) and ``_closed``, and name
    themselves in ``_WHAT`` for messages."""

    _WHAT = "this object"

    def fileno(self) -> int:
        """The eventfd (created on first call), readable after each terminal transition."""
        with self._cond:
            if self._closed:
                raise policy.closed_eventfd(self._WHAT)
            if self._efd < 0:
                self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._efd

    def drain(self) -> int:
        """Read and clear the eventfd: terminal transitions since the last drain (0 if none,
        or if fileno() was never called)."""
        with self._cond:
            if self._efd < 0:
                return 0
            try:
                return os.eventfd_read(self._efd)
            except BlockingIOError:
                return 0

    def close(self) -> None:
        """Close the eventfd (idempotent); after it, fileno() refuses."""
        with self._cond:
            if self._efd >= 0:
                os.close(self._efd)
                self._efd = -1
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Slab(_LazyEventfd):
    """Completion words with generations, blocking waits and one lazily created eventfd."""

    _WHAT = "this flag slab"

    def __init__(self, nslots=4096, *, buffer=None):
        self._cond = threading.Condition()  # first: close() in __del__ needs it
        self._efd = -1
        self._closed = False
        n = operator.index(nslots)
        if not 1 <= n <= policy.MAX_SLOTS:
            raise policy.nslots_out_of_range(n)
        self._n = n
        self._futex = None
        if buffer is None:
            self._words = [0] * n
        else:
            with memoryview(buffer) as view:
                if view.readonly or not view.c_contiguous:
                    raise policy.buffer_not_writable(
                        buffer, "read-only" if view.readonly else "not contiguous")
                if view.nbytes < 4 * n:
                    raise policy.buffer_too_small(view.nbytes, n)
            self._words = (ctypes.c_uint32 * n).from_buffer(buffer)
            self._address = ctypes.addressof(self._words)
            if self._address % 4:
                raise ValueError(policy.BUFFER_MISALIGNED)
            self._futex = _syscall()
        self._free = list(range(n - 1, -1, -1))  # acquire() hands out 0, 1, 2, ... first
        self._in_use = bytearray(n)

    def __del__(self):
        self.close()

    @property
    def nslots(self) -> int:
        """Number of words in the slab."""
        return self._n

    def _slot(self, slot) -> int:
        i = operator.index(slot)
        if not 0 <= i < self._n:
            raise policy.slot_out_of_range(i, self._n)
        return i

    def _futex_call(self, slot: int, op: int, value: int, timeout) -> int:
        function, number = self._futex
        rc = function(number, ctypes.c_void_p(self._address + 4 * slot), ctypes.c_int(op),
                      ctypes.c_uint32(value), timeout, None, ctypes.c_int(0))
        return 0 if rc >= 0 else ctypes.get_errno()

    def _wake(self, slot: int) -> None:
        """Wake every waiter on the word (its state or generation changed); lock held."""
        self._cond.notify_all()
        if self._futex is not None:
            rc = self._futex_call(slot, _FUTEX_WAKE, _INT_MAX, None)
            if rc:
                raise policy.futex_failed("FUTEX_WAKE", slot, rc)

    def _signal(self, slot: int) -> None:
        """After a won terminal transition: wake the word's waiters, then the eventfd's
        watcher (lock held, so close() cannot close the eventfd under the write)."""
        self._wake(slot)
        if self._efd >= 0:
            try:
                os.eventfd_write(self._efd, 1)
            except BlockingIOError:  # the counter is saturated, so it is readable anyway
                pass

    def acquire(self):
        """Take a free slot, set it PENDING and return (slot, generation).

        A word found non-EMPTY (a shared buffer written before) gets a fresh
        generation, so a holder of the old one is stale."""
        with self._cond:
            if not self._free:
                raise policy.slab_full(self._n)
            slot = self._free.pop()
            word = self._words[slot]
            generation = _gen(word)
            if _state(word) != EMPTY:
                generation = (generation + 1) & GENERATION_MASK
            self._in_use[slot] = 1
            self._words[slot] = _word(generation, PENDING)
            if _gen(word) != generation:
                self._wake(slot)
            return slot, generation

    def release(self, slot) -> None:
        """Give an acquired slot back: its word becomes EMPTY with the next generation."""
        s = self._slot(slot)
        with self._cond:
            self._next_generation(s, EMPTY, policy.not_acquired)
            self._in_use[s] = 0
            self._free.append(s)
            self._wake(s)

    def _next_generation(self, slot: int, state: int, refusal) -> int:
        """Owner only, lock held: move an acquired slot's word to the next generation in
        ``state`` (its holders become stale); ``refusal(slot)`` is raised if not acquired."""
        if not self._in_use[slot]:
            raise refusal(slot)
        generation = (_gen(self._words[slot]) + 1) & GENERATION_MASK
        self._words[slot] = _word(generation, state)
        return generation

    def state(self, slot) -> int:
        """The word's state."""
        return _state(self._words[self._slot(slot)])

    def generation(self, slot) -> int:
        """The word's generation."""
        return _gen(self._words[self._slot(slot)])

    def word(self, slot) -> int:
        """The whole word, generation << 3 | state."""
        return self._words[self._slot(slot)]

    def start(self, slot, generation) -> bool:
        """PENDING -> RUNNING (one writer); False if the generation is stale or the word
        is already terminal (e.g. cancelled), ValueError if RUNNING already or EMPTY."""
        s = self._slot(slot)
        g = _generation_arg(generation)
        with self._cond:
            word = self._words[s]
            if _gen(word) != g or _state(word) >= DONE:
                return False
            if _state(word) == PENDING:
                self._words[s] = _word(g, RUNNING)
                return True
        raise policy.start_refused(s, g, _state(word))

    def finish(self, slot, generation, state) -> bool:
        """Terminal transition by compare-and-swap: True if this call won, False if the
        word was already terminal in `generation` or the generation is stale."""
        if state not in policy.TERMINAL:
            raise policy.not_terminal("finish", state)
        s = self._slot(slot)
        g = _generation_arg(generation)
        with self._cond:
            word = self._words[s]
            if _gen(word) != g or _state(word) >= DONE:
                return False
            if _state(word) == EMPTY:
                raise policy.finish_on_empty(s, g)
            self._words[s] = _word(g, operator.index(state))
            self._signal(s)
            return True

    def reset(self, slot) -> int:
        """Owner only: bump the generation, set PENDING, return the new generation."""
        s = self._slot(slot)
        with self._cond:
            generation = self._next_generation(s, PENDING, policy.reset_not_owner)
            self._wake(s)
            return generation

    def wait(self, slot, generation, timeout=None) -> int:
        """Block until the word is terminal in `generation` or its generation moved on;
        return the state seen (the non-terminal one on timeout).  Signal handlers run
        while waiting, so Ctrl-C interrupts the wait."""
        pause_ns = None if timeout is None else policy.timeout_ns(timeout)
        s = self._slot(slot)
        g = _generation_arg(generation)
        deadline = None if pause_ns is None else time.monotonic() + pause_ns / 1e9
        if self._futex is not None:
            return self._wait_futex(s, g, deadline)
        with self._cond:
            while True:
                word = self._words[s]
                if _gen(word) != g or _state(word) >= DONE:
                    return _state(word)
                pause = None
                if deadline is not None:
                    pause = deadline - time.monotonic()
                    if pause <= 0:
                        return _state(word)
                self._cond.wait(pause)  # lock acquisition is interruptible by signals

    def _wait_futex(self, slot: int, generation: int, deadline) -> int:
        word = self._words[slot]
        pause = _Timespec()
        while _gen(word) == generation and _state(word) < DONE:
            seconds = _SLICE
            if deadline is not None:
                seconds = min(deadline - time.monotonic(), _SLICE)
                if seconds <= 0:
                    break
            pause.tv_sec, pause.tv_nsec = 0, int(seconds * 1e9)
            rc = self._futex_call(slot, _FUTEX_WAIT, word, ctypes.byref(pause))
            if rc not in (0, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
                raise policy.futex_failed("FUTEX_WAIT", slot, rc)
            word = self._words[slot]  # pending signal handlers run on return to Python
        return _state(word)

