"""Pure-Python twin of seamless/_ipc/window.pyx: the ordered result window, the executable spec.

A ``Window(capacity)`` hands out sequence numbers 0, 1, 2, ... (``reserve()``), at most
``capacity`` held at once, and releases them strictly in order (``next_ready()``,
``try_next()``): item N is released only when its own word is terminal and N is the head, so
by induction every earlier item was finished and released first.  Same API, semantics and
error texts as the compiled module; one ``threading.Condition`` stands in for its atomics and
futex.  See docs/parallel.md.

Data flow and ownership:

- Words: a Python list of ``capacity`` words, ``generation << 3 | state``, word ``seq %
  capacity`` for item ``seq``, in generation ``seq // capacity + 1`` (modulo 2**29; a fresh
  word is EMPTY in generation 0).
- Owner side (``reserve``, ``start``, ``next_ready``, ``try_next``, ``close``): one thread.
  ``reserve`` writes the slot's word PENDING in the item's generation; ``next_ready`` and
  ``try_next`` release the head once its word is terminal and leave the word as it is until
  the slot's next ``reserve``.  A released or never-reserved ``seq`` is not held:
  ``complete`` and ``start`` refuse it, ``state`` reports EMPTY.
- Completing side (``complete``, any thread): under the Condition's lock, a word that is
  PENDING or RUNNING becomes terminal (first writer wins), waiters are notified and, if
  ``fileno()`` made the eventfd, 1 is added to it.  Every read-modify-write of a word, of the
  head and tail, and the eventfd's life happen under that lock, so a completion can neither
  land on a slot reused by a later ``reserve`` nor write to an eventfd ``close()`` closed.
- Waiting: ``next_ready`` blocks in ``Condition.wait`` (no GIL held while blocked); its lock
  acquisition is interruptible by signals, so Ctrl-C raises at once.
- The eventfd (``os.eventfd``) is created by the first ``fileno()``, emptied by ``drain()``
  and closed by ``close()`` (idempotent, also when the window is collected).

Limits and error texts are seamless/_ipc/policy/window.py's (the word layout,
policy/flags.py's).

Mechanism only: no configuration, logging or retry; callers pass capacities and timeouts.
The window holds integers and flags only; the caller keeps its objects in a list by slot.
"""

from __future__ import annotations

import operator
import os
import threading
import time

from seamless._ipc._pure.flags import _LazyEventfd
from seamless._ipc.policy import flags as flags_policy
from seamless._ipc.policy import window as policy
from seamless._ipc.policy.flags import (  # the word layout is the flag slab's
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

__all__ = ["CANCELLED", "DONE", "EMPTY", "FAILED", "PENDING", "RUNNING", "Window"]


class Window(_LazyEventfd):
    """A ring of ``capacity`` completion words that releases sequence numbers in order."""

    _WHAT = "this Window"

    def __init__(self, capacity, *, first_seq=0):
        self._cond = threading.Condition(threading.Lock())  # first: close() in __del__ needs it
        self._efd = -1
        self._closed = False
        n = operator.index(capacity)
        first = operator.index(first_seq)
        policy.check_construction(n, first)
        self._words = [0] * n
        self._cap = n
        self._head = first
        self._tail = first

    def __del__(self):
        self.close()

    @property
    def capacity(self) -> int:
        """Most items held at once."""
        return self._cap

    @property
    def held(self) -> int:
        """Items reserved and not yet released."""
        return self._tail - self._head

    @property
    def head(self) -> int:
        """The sequence number released next."""
        return self._head

    def slot_of(self, seq) -> int:
        """The ring slot of ``seq`` (``seq % capacity``): where callers keep its objects."""
        seq = operator.index(seq)
        if seq < 0:
            raise policy.negative_seq(seq)
        return seq % self._cap

    def state(self, seq) -> int:
        """The state of a held item; EMPTY for a seq not held (released, or never reserved)."""
        seq = operator.index(seq)
        with self._cond:
            if not self._head <= seq < self._tail:
                return EMPTY
            return self._words[seq % self._cap] & STATE_MASK

    def reserve(self):
        """The next item, set PENDING: ``(seq, slot)`` with ``slot == seq % capacity``, or
        None while ``capacity`` items are held (owner thread only)."""
        with self._cond:
            if self._closed:
                raise policy.closed("reserve")
            seq = self._tail
            if seq - self._head >= self._cap:
                return None
            slot = seq % self._cap
            generation = (seq // self._cap + 1) & GENERATION_MASK
            self._words[slot] = (generation << STATE_BITS) | PENDING
            self._tail = seq + 1
            return seq, slot

    def start(self, seq) -> bool:
        """PENDING -> RUNNING (one writer); False if ``seq`` is not held, already terminal
        (e.g. cancelled) or the window is closed."""
        seq = operator.index(seq)
        with self._cond:
            if self._closed or not self._head <= seq < self._tail:
                return False
            slot = seq % self._cap
            word = self._words[slot]
            state = word & STATE_MASK
            if state == PENDING:
                self._words[slot] = (word & ~STATE_MASK) | RUNNING
                return True
            if state != RUNNING:
                return False
        raise policy.started_twice(seq)

    def complete(self, seq, state) -> bool:
        """Move item ``seq`` to DONE, FAILED or CANCELLED, first writer wins (any thread);
        False if another terminal state won, ``seq`` is not held (released, its slot maybe
        reused, or never reserved) or the window is closed (a late callback is harmless)."""
        seq = operator.index(seq)
        state = operator.index(state)
        if state not in flags_policy.TERMINAL:
            raise flags_policy.not_terminal("complete", state)
        with self._cond:
            if self._closed or not self._head <= seq < self._tail:
                return False
            slot = seq % self._cap
            word = self._words[slot]
            if word & STATE_MASK >= DONE:
                return False
            self._words[slot] = (word & ~STATE_MASK) | state
            self._cond.notify_all()
            if self._efd >= 0:
                try:
                    os.eventfd_write(self._efd, 1)
                except BlockingIOError:  # the counter is saturated, so it is readable anyway
                    pass
            return True

    def _take(self):
        """Release the head if its word is terminal: ``(seq, state)``, else None (lock held)."""
        seq = self._head
        state = self._words[seq % self._cap] & STATE_MASK
        if state < DONE:
            return None
        self._head = seq + 1
        return seq, state

    def next_ready(self, timeout=None):
        """Block (without the GIL) until the head item is finished, release it and return
        ``(seq, state)``; None after ``timeout`` seconds.  Signal handlers run while waiting,
        so Ctrl-C interrupts the wait; nothing is released then."""
        with self._cond:
            if self._closed:
                raise policy.closed("next_ready")
            if self._tail == self._head:
                raise RuntimeError(policy.NOTHING_HELD)
            deadline = None if timeout is None else \
                time.monotonic() + flags_policy.timeout_ns(timeout) / 1e9
            slot = self._head % self._cap
            while self._words[slot] & STATE_MASK < DONE:
                pause = None
                if deadline is not None:
                    pause = deadline - time.monotonic()
                    if pause <= 0:
                        return None
                self._cond.wait(pause)  # lock acquisition is interruptible by signals
            return self._take()

    def try_next(self):
        """``next_ready()`` without blocking: ``(seq, state)`` if the head is finished (it is
        released), None if it is not or nothing is held."""
        with self._cond:
            if self._closed:
                raise policy.closed("try_next")
            if self._tail == self._head:
                return None
            return self._take()


    def __repr__(self):
        return (f"<Window capacity={self._cap} head={self._head} "
                f"held={self._tail - self._head}{' closed' if self._closed else ''}>")
