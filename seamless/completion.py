"""Completion words for ``Transformation`` handles (docs/design/scheduling.md, "Handle states").

Every started handle owns one 32-bit word of a ``seamless._ipc.flags.Slab``; the word mirrors
its status, its terminal move is a compare-and-swap, and waiters block on it: threads in
``slab.wait()`` (futex, no GIL), coroutines through the slab's eventfd in their running loop.

Data flow and ownership:

- Slabs: process-wide, ``nslots`` words each, made when every slab is full.  ``Slabs`` owns
  them and counts the acquired words of each; ``acquire()`` hands out ``(slab, slot,
  generation)`` and the handle owns that word until it is garbage.
- Release: ``release(slab, slot)`` may run anywhere, inside the garbage collector included,
  so it only appends to ``_dead`` and then tries the lock; whoever holds the lock gives the
  dead words back before letting go.  A slab whose words are all free is dropped (and its
  eventfd closed) when a loop watched it or another slab exists, so descriptors do not outlive
  the handles that needed them.
- Watches: ``wait_async()`` puts a future in the ``_Watch`` of (running loop, slab), which
  registers the slab's eventfd (created by the slab on the first ``fileno()``) with
  ``loop.add_reader`` once, and removes the reader when no future waits any more.  A watch
  and its futures are touched only on its loop's thread.  The reader drains the eventfd and
  resolves the futures of waiting slots that became terminal or moved to another generation,
  scanning waiting slots in the order they started waiting and stopping once it found as many
  terminal moves as the eventfd counted.  When several loops watch one slab, the one that
  drains tells the others to scan (``call_soon_threadsafe``): a drain empties the eventfd
  for everybody.  No thread is parked per waiting handle.

Mechanism only: no configuration, logging or retry.
"""

from __future__ import annotations

import asyncio
import collections
import threading

__all__ = ["DONE", "FAILED", "CANCELLED", "Slabs", "acquire", "release", "wait_async"]

# Terminal states and word layout of seamless._ipc.flags (generation << 3 | state), spelled out
# here so that importing this module loads neither the compiled core nor numpy: the core is
# imported with the first slab, i.e. by the first start().
DONE, FAILED, CANCELLED = 3, 4, 5  # the terminal states: every state >= DONE
_STATE_BITS = 3
_STATE_MASK = 7


class _Watch:
    """One running loop watching one slab's eventfd for the futures waiting on its words."""

    __slots__ = ("slabs", "slab", "loop", "waiting", "closed")

    def __init__(self, slabs: "Slabs", slab, loop):
        self.slabs = slabs
        self.slab = slab
        self.loop = loop
        self.waiting: dict = {}  # slot -> [(generation, future), ...], in order of waiting
        self.closed = False
        loop.add_reader(slab.fileno(), self._readable)

    def add(self, slot, generation, future):
        waiters = self.waiting.get(slot)
        if waiters is None:
            self.waiting[slot] = [(generation, future)]
        else:
            waiters.append((generation, future))

    def discard(self, slot, future):
        """A waiting coroutine was cancelled: forget its future."""
        waiters = self.waiting.get(slot)
        if waiters is not None:
            waiters[:] = [w for w in waiters if w[1] is not future]
            if not waiters:
                del self.waiting[slot]
        self.close_if_idle()

    def _readable(self):
        count = self.slab.drain()
        watches = self.slabs._watching.get(self.slab, ())
        if len(watches) > 1:
            for watch in watches:
                if watch is not self:
                    try:
                        watch.loop.call_soon_threadsafe(watch.scan, None)
                    except RuntimeError:  # that loop is closed; nobody awaits there any more
                        pass
        self.scan(count)

    def scan(self, count):
        """Resolve the futures of waiting slots that finished or moved on; after ``count``
        terminal slots (the eventfd's count, None: unknown) the rest cannot have moved."""
        if self.closed:
            return
        word = self.slab.word
        ready = []
        for slot, waiters in self.waiting.items():
            current = word(slot)
            generation = current >> _STATE_BITS
            if current & _STATE_MASK >= DONE:
                ready.append(slot)
                if count is not None:
                    count -= 1
                    if count <= 0:
                        break
            elif any(g != generation for g, _ in waiters):
                ready.append(slot)
        for slot in ready:
            current = word(slot)
            finished = current & _STATE_MASK >= DONE
            generation = current >> _STATE_BITS
            keep = []
            for g, future in self.waiting.pop(slot):
                if g == generation and not finished:
                    keep.append((g, future))
                elif not future.done():
                    future.set_result(None)
            if keep:
                self.waiting[slot] = keep
        self.close_if_idle()

    def close_if_idle(self):
        if self.waiting or self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self.slab.fileno())
        self.slabs._unwatch(self)


class Slabs:
    """Process-wide completion words: slabs of ``nslots`` words, reused after their handles
    die, and watched by event loops on demand."""

    def __init__(self, nslots: int = 4096):
        self._nslots = nslots
        self._lock = threading.Lock()  # guards everything below but _dead
        self._used: dict = {}          # slab -> number of acquired words
        self._open: list = []          # slabs with a free word; the last one is used first
        self._watched: set = set()     # slabs whose eventfd exists
        self._watching: dict = {}      # slab -> tuple of its _Watches (replaced, never mutated)
        self._watches: dict = {}       # (loop, slab) -> _Watch
        self._dead = collections.deque()  # (slab, slot) released, not yet given back

    def acquire(self):
        """A PENDING word: (slab, slot, generation)."""
        with self._lock:
            if self._open:
                slab = self._open[-1]
            else:
                from seamless._ipc import flags

                slab = flags.Slab(self._nslots)
                self._used[slab] = 0
                self._open.append(slab)
            slot, generation = slab.acquire()
            used = self._used[slab] + 1
            self._used[slab] = used
            if used == self._nslots:
                self._open.pop()
        if self._dead:  # after every hold of the lock: words released meanwhile
            self._give_back()
        return slab, slot, generation

    def release(self, slab, slot):
        """Give a word back (its owner is garbage).  Never blocks: it may run inside the
        garbage collector, on any thread, while this thread holds the lock."""
        self._dead.append((slab, slot))
        self._give_back()

    def _give_back(self):
        """Give the dead words back, unless the lock is held: its holder calls this again
        after letting go (every ``with self._lock`` block is followed by a call)."""
        while self._dead and self._lock.acquire(blocking=False):
            try:
                while self._dead:
                    self._release_locked(*self._dead.popleft())
            finally:
                self._lock.release()

    def _release_locked(self, slab, slot):
        slab.release(slot)
        used = self._used[slab] - 1
        self._used[slab] = used
        if used == self._nslots - 1:
            self._open.append(slab)
        if used == 0:
            self._drop_if_idle(slab)

    def _drop_if_idle(self, slab):
        """Forget an empty slab nobody watches, unless it is the last one and has no eventfd."""
        if self._used.get(slab) != 0 or slab in self._watching:
            return
        if slab not in self._watched and len(self._used) == 1:
            return  # keep one slab without a descriptor for the next handles
        del self._used[slab]
        self._open.remove(slab)
        self._watched.discard(slab)
        slab.close()

    def counts(self) -> tuple:
        """(slabs alive, words held by live owners), for tests and leak checks."""
        with self._lock:
            slabs, words = len(self._used), sum(self._used.values())
        self._give_back()
        return slabs, words - len(self._dead)

    async def wait_async(self, slab, slot, generation):
        """Return once the word is terminal in ``generation`` or has moved to another
        generation, without blocking the running loop or parking a thread."""
        if _settled(slab.word(slot), generation):
            return
        loop = asyncio.get_running_loop()
        watch = self._watches.get((loop, slab))
        if watch is None:
            watch = self._watch(loop, slab)
        future = loop.create_future()
        watch.add(slot, generation, future)
        # The eventfd exists now: a move after this check will make it readable.
        if _settled(slab.word(slot), generation):
            watch.discard(slot, future)
            return
        try:
            await future
        except asyncio.CancelledError:
            watch.discard(slot, future)
            raise

    def _watch(self, loop, slab) -> _Watch:
        with self._lock:
            self._watched.add(slab)
            watch = _Watch(self, slab, loop)
            self._watches[(loop, slab)] = watch
            self._watching[slab] = self._watching.get(slab, ()) + (watch,)
        self._give_back()
        return watch

    def _unwatch(self, watch: _Watch):
        with self._lock:
            slab = watch.slab
            del self._watches[(watch.loop, slab)]
            rest = tuple(w for w in self._watching[slab] if w is not watch)
            if rest:
                self._watching[slab] = rest
            else:
                del self._watching[slab]
                self._drop_if_idle(slab)
        self._give_back()


def _settled(word: int, generation: int) -> bool:
    return word & _STATE_MASK >= DONE or word >> _STATE_BITS != generation


_slabs = Slabs()
# Bound methods: they keep working while the interpreter tears modules down (handles die then).
acquire = _slabs.acquire
release = _slabs.release
wait_async = _slabs.wait_async
