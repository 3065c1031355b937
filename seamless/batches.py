"""Batches: ``parallel()``, ``parallel_async()`` and ``TransformationList`` (docs/parallel.md).

Data flow of one batch (``_Batch``):

    tfs ──pull one (only while window.held < nparallel)──► check type ─► start() unless the
    caller had ─► reserve (seq, slot) ─► slots[slot] = entry ─► done-callback: complete(seq)
                                                                         (any thread: the pool's
    caller ◄── yield handle ◄── slots[slot] cleared ◄── next_ready()/try_next()   I/O thread,
                                                         (head finished)           an executor)

Ownership
- The compiled ``Window`` (seamless/_ipc/window) holds only integers and completion flags: the
  bound (``nparallel`` items pulled but not yet yielded) and the ordering rule (item N is
  released when 0..N are finished) live there, and waiting on it never polls.
- The iterator owns ``slots``, the handles of the items it holds, indexed by ring slot, and
  drops each reference when the item is yielded: memory is O(nparallel).  A done-callback
  holds the window and a sequence number, never the batch; a late callback after the batch
  closed is a no-op (the window refuses stale or closed completions).
- ``ordered=False`` swaps the window for ``_Arrivals`` (same calls, pure Python), which
  releases items in the order they finish; the bound and everything else stay as they are.
- Early exit (``break``, ``close()``, garbage collection, an exception in the loop body,
  Ctrl-C) cancels the handles this batch started that are not finished, then closes the
  window.  Handles the caller had started are waited for, never cancelled.

``TransformationList`` is an ordered, materialised list of handles that ``parallel()`` reports
progress (a tqdm.auto bar), errors and a summary on; it observes every item as it finishes
(``_Observer``), not as it is yielded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

from . import config
from .transformation import Transformation

__all__ = ["parallel", "parallel_async", "TransformationList"]

_log = logging.getLogger("seamless.batch")

_DONE, _FAILED, _CANCELLED = "done", "failed", "cancelled"
# With the default nparallel, the inputs of the items held may take at most this share of the
# memory_cache setting, once ``workers`` items are held (docs/parallel.md).
_BYTES_SHARE = 4


def _window_module():
    from seamless._ipc import window

    return window


def _flag_state(window_module, status: str) -> int:
    if status == _DONE:
        return window_module.DONE
    if status == _FAILED:
        return window_module.FAILED
    return window_module.CANCELLED


def _ordered(ordered) -> bool:
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, got {ordered!r} (parallel(tfs, "
                        f"ordered=False) yields the handles as they finish)")
    return ordered


def _nparallel(nparallel) -> tuple:
    """(bound, adaptive): the argument, validated, or the setting in force (read when the
    batch starts).  ``adaptive`` is None for a chosen value; for the default it is
    ``(workers, byte budget)``: the bound (8 x workers) holds while the inputs of the items
    held stay under the budget, and at least ``workers`` items are held whatever their size."""
    if nparallel is not None:
        return config._py_positive_int("nparallel", nparallel,
                                       "parallel(tfs, nparallel={})"), None
    setting = config.get_setting("nparallel")
    if setting.source != "default":
        return setting.value, None
    from .execution import dispatch

    bound = dispatch.default_nparallel()  # a cluster: its worker threads now
    if bound is not None:
        return bound, None
    workers = min(config.get("workers"), setting.value)
    return setting.value, (workers, config.get("memory_cache") // _BYTES_SHARE)


def _input_bytes(handle) -> int:
    """The bytes of the argument buffers a handle holds (dependencies are their own)."""
    total = 0
    for arg in handle._arguments.values():
        if type(arg) is Transformation:
            continue
        buffer = arg.buffer
        if type(buffer) is bytes:
            total += len(buffer)
        else:
            try:
                total += memoryview(buffer).nbytes
            except TypeError:
                continue
    return total


def _not_a_transformation(index: int, item) -> TypeError:
    kind = type(item).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return TypeError(f"parallel(): item {index} is {article} {kind}, not a Transformation; "
                     f"build items with a @delayed function")


def _source(tfs):
    """(iterator over the items, observer or None).  Finite sequences are checked at once."""
    if isinstance(tfs, TransformationList):
        return iter(tfs._items), _Observer(tfs)
    if isinstance(tfs, (list, tuple)):
        for index, item in enumerate(tfs):
            if not isinstance(item, Transformation):
                raise _not_a_transformation(index, item)
        return iter(tfs), None
    if isinstance(tfs, (str, bytes, dict)) or not hasattr(tfs, "__iter__"):
        raise TypeError(f"parallel() needs a list, tuple, TransformationList or other iterable "
                        f"of Transformation handles, got {type(tfs).__name__}")
    return iter(tfs), None


class _Arrivals:
    """``ordered=False``: the compiled ``Window``'s calls, releasing items as they finish.

    A ``seq`` is the item's slot, reused only after its item was released, so the batch's
    ``slots[seq % capacity]`` holds.  The owner thread reserves and releases; ``complete``
    comes from any thread and wakes the owner (a condition, or the eventfd an event loop
    watches).  A completion of a closed batch, or a second one of the same item, is ignored.
    """

    def __init__(self, capacity: int):
        self._free = list(range(capacity - 1, -1, -1))
        self._waiting: set = set()           # reserved, not finished
        self._ready: collections.deque = collections.deque()  # (seq, state), as they finished
        self._held = 0
        self._cond = threading.Condition(threading.Lock())
        self._fd: int | None = None
        self._closed = False

    @property
    def held(self) -> int:
        return self._held

    def reserve(self) -> tuple:
        with self._cond:
            seq = self._free.pop()
            self._waiting.add(seq)
            self._held += 1
        return seq, seq

    def complete(self, seq: int, state: int) -> bool:
        with self._cond:
            if self._closed or seq not in self._waiting:
                return False
            self._waiting.discard(seq)
            self._ready.append((seq, state))
            self._cond.notify()
            if self._fd is not None:
                os.eventfd_write(self._fd, 1)
        return True

    def next_ready(self) -> tuple:
        with self._cond:
            while not self._ready:
                self._cond.wait()  # a signal (Ctrl-C) interrupts the wait
            return self._release()

    def try_next(self):
        with self._cond:
            return self._release() if self._ready else None

    def _release(self) -> tuple:
        seq, state = self._ready.popleft()
        self._free.append(seq)
        self._held -= 1
        return seq, state

    def fileno(self) -> int:
        with self._cond:
            if self._fd is None:
                self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            return self._fd

    def drain(self) -> None:
        if self._fd is None:
            return
        # non-blocking: an eventfd already at zero raises, and there is simply nothing to drain
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class _Entry:
    """One held item: its handle, its input index, whether this batch started it, and the
    input bytes it counts against the default depth's budget."""

    __slots__ = ("handle", "index", "started_here", "nbytes")

    def __init__(self, handle, index, started_here, nbytes=0):
        self.handle = handle
        self.index = index
        self.started_here = started_here
        self.nbytes = nbytes


class _Batch:
    """The state of one iteration; driven by ``_iterate`` (sync) or ``_iterate_async``."""

    def __init__(self, source, nparallel: int, observer, adaptive=None, ordered=True):
        self.source = source
        self.ordered = ordered
        self.observer = observer
        self.capacity = nparallel
        self.adaptive = adaptive  # None, or (workers, byte budget): see _nparallel
        self.held_bytes = 0
        # made at the first pull (an empty input starts nothing): the compiled Window or
        # _Arrivals, which answer the same calls
        self.window: Any = None
        self.slots: list = [None] * nparallel
        self.pulled = 0
        self.exhausted = False
        self.source_error: BaseException | None = None

    def fill(self) -> None:
        """Pull and start items while the window has room and the input has items."""
        while not self.exhausted and (self.window is None or self._room()):
            try:
                item = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            except Exception as exc:  # the caller's iterable failed: theirs to see, later
                self.source_error = exc
                self.exhausted = True
                return
            index = self.pulled
            if not isinstance(item, Transformation):
                raise _not_a_transformation(index, item)
            self.pulled += 1
            self._hold(index, item)

    def _room(self) -> bool:
        """Whether one more item may be pulled: below the bound, and with the default depth
        either fewer than ``workers`` held or their inputs within the byte budget."""
        held = self.window.held
        if held >= self.capacity:
            return False
        if self.adaptive is None:
            return True
        workers, budget = self.adaptive
        return held < workers or self.held_bytes < budget

    def _hold(self, index: int, handle: Transformation) -> None:
        window_module = _window_module()
        if self.window is None:
            self.window = window_module.Window(self.capacity) if self.ordered \
                else _Arrivals(self.capacity)
        started_here = handle.status == "pending"
        if started_here:
            handle.start()
        seq, slot = self.window.reserve()
        nbytes = 0 if self.adaptive is None else _input_bytes(handle)
        self.held_bytes += nbytes
        self.slots[slot] = _Entry(handle, index, started_here, nbytes)
        window = self.window
        observer = self.observer

        def finished(h, seq=seq, index=index):
            if observer is not None:
                observer.finished(index, h)
            window.complete(seq, _flag_state(window_module, h.status))

        handle._add_done_callback(finished)

    @property
    def held(self) -> int:
        return 0 if self.window is None else self.window.held

    def release(self, seq: int) -> _Entry:
        slot = seq % self.capacity
        entry, self.slots[slot] = self.slots[slot], None
        self.held_bytes -= entry.nbytes
        if self.observer is not None:
            self.observer.yielded(entry.index, entry.handle)
        return entry

    def close(self) -> None:
        """Cancel what this batch started and is unfinished; drop every reference."""
        for entry in self.slots:
            if entry is not None and entry.started_here:
                entry.handle.cancel()
        self.slots = [None] * self.capacity
        if self.window is not None:
            self.window.close()
        if self.observer is not None:
            self.observer.close()


def _iterate(batch: _Batch):
    try:
        while True:
            batch.fill()
            if batch.held == 0:
                break
            seq, _state = batch.window.next_ready()
            entry = batch.release(seq)
            yield entry.handle
            del entry
        if batch.source_error is not None:
            raise batch.source_error
    finally:
        batch.close()


async def _iterate_async(batch: _Batch):
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    watched = None
    try:
        while True:
            batch.fill()
            if batch.held == 0:
                break
            if watched is None:
                watched = batch.window.fileno()
                loop.add_reader(watched, ready.set)
            got = batch.window.try_next()
            if got is None:
                ready.clear()
                batch.window.drain()
                got = batch.window.try_next()  # a completion between the two is not lost
                if got is None:
                    await ready.wait()
                    continue
            entry = batch.release(got[0])
            yield entry.handle
            del entry
        if batch.source_error is not None:
            raise batch.source_error
    finally:
        if watched is not None:
            loop.remove_reader(watched)
        batch.close()


def parallel(tfs, nparallel=None, ordered=True):
    """Run ``tfs`` at most ``nparallel`` at a time; yield each handle in input order as soon as
    it and every earlier one are finished, or with ``ordered=False`` as soon as it finishes.

    ``tfs``: a list, tuple, ``TransformationList`` or any iterable (pulled lazily) of handles.
    A failed item is yielded in its place (``.exception`` set); breaking out cancels what this
    call started.  Inside a running event loop (Jupyter) it blocks the loop like ``.run()``
    does, which is safe: the batch never needs that loop.  Raises at the call:
    ``TypeError``/``ValueError`` for a bad ``nparallel`` or ``ordered``, or a non-handle item
    of a sequence.
    """
    ordered = _ordered(ordered)
    n, adaptive = _nparallel(nparallel)
    source, observer = _source(tfs)
    return _iterate(_Batch(source, n, observer, adaptive, ordered))


def parallel_async(tfs, nparallel=None, ordered=True):
    """``parallel()`` for ``async for``: the same rules, and it never blocks the event loop."""
    ordered = _ordered(ordered)
    n, adaptive = _nparallel(nparallel)
    source, observer = _source(tfs)
    return _iterate_async(_Batch(source, n, observer, adaptive, ordered))


class TransformationList:
    """An ordered, finite list of handles that ``parallel()`` reports progress and errors on.

    ``show_progress``: False (nothing drawn), ``"auto"`` (a bar when stderr is a terminal or in
    Jupyter) or True (always a bar on stderr).  ``on_error``: ``"continue"`` records failures in
    ``.errors``; ``"raise"`` raises the failed item's own exception, with ``.index`` set, when
    its turn comes in output order, cancelling what is still running.
    """

    def __init__(self, tfs, show_progress=False, on_error="continue"):
        if show_progress not in (False, True, "auto"):
            raise ValueError(f"show_progress must be False, True or 'auto', got "
                             f"{show_progress!r}")
        if on_error not in ("continue", "raise"):
            raise ValueError(f"on_error must be 'continue' or 'raise', got {on_error!r}")
        items = list(tfs)
        for index, item in enumerate(items):
            if not isinstance(item, Transformation):
                raise _not_a_transformation(index, item)
        self._items = items
        self.show_progress = show_progress
        self.on_error = on_error
        self._failed: dict = {}    # index -> handle, for items seen failing
        self._cached: set = set()  # indices whose result came from a cache
        self._counted: set = set()  # indices already counted as finished (once per item)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        """A handle, or a plain list for a slice."""
        return self._items[index]

    def __iter__(self):
        return iter(self._items)

    def __repr__(self):
        return f"<TransformationList of {len(self._items)} transformations>"

    @property
    def errors(self) -> list:
        """``(index, transformation)`` of the items that failed so far, ascending index."""
        return sorted(self._failed.items())

    def values(self) -> list:
        """Run what is unfinished (through ``parallel()``); the values in order.  With
        ``on_error="continue"`` a failed position holds None (see ``.errors``)."""
        out = []
        for handle in parallel(self):
            out.append(handle.value if handle.status == _DONE else None)
        return out

    def summary(self) -> dict:
        """Counts: total, done, failed, cached, cancelled."""
        statuses = [h.status for h in self._items]
        return {"total": len(self._items), "done": statuses.count(_DONE),
                "failed": statuses.count(_FAILED), "cached": len(self._cached),
                "cancelled": statuses.count(_CANCELLED)}


class _Observer:
    """What a ``TransformationList`` sees of one iteration: finishes (progress, failures,
    cache hits), yields (``on_error="raise"``) and the end (bar closed, summary logged)."""

    def __init__(self, tl: TransformationList):
        self.tl = tl
        self.started = time.perf_counter()
        self.bar = _progress_bar(tl)
        self.closed = False

    def finished(self, index: int, handle) -> None:
        """Called on the completing thread (pool I/O, executor, or here for a cache hit)."""
        tl = self.tl
        if index in tl._counted:
            return
        tl._counted.add(index)
        if handle.status == _FAILED:
            tl._failed[index] = handle
        if handle.cached:
            tl._cached.add(index)
        if self.bar is not None:
            self.bar.set_postfix(failed=len(tl._failed), cached=len(tl._cached), refresh=False)
            self.bar.update(1)

    def yielded(self, index: int, handle) -> None:
        if self.tl.on_error == "raise" and handle.status in (_FAILED, _CANCELLED):
            err = handle._error()
            err.index = index
            err.args = (f"item {index} of the TransformationList failed: {err.args[0]}",) \
                + err.args[1:]
            raise err

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        s = self.tl.summary()
        _log.info("TransformationList: %d done, %d failed, %d cached in %.1f s",
                  s["done"], s["failed"], s["cached"], time.perf_counter() - self.started)


def _progress_bar(tl: TransformationList):
    """A tqdm.auto bar on stderr, or None: ``"auto"`` draws only on a terminal or in Jupyter."""
    if tl.show_progress is False:
        return None
    if tl.show_progress == "auto" and not (_stderr_is_terminal() or _in_jupyter()):
        return None
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        monitor_interval = 0  # no monitor thread: nothing of ours outlives the batch

    already = sum(1 for h in tl._items if h.status in (_DONE, _FAILED, _CANCELLED))
    tl._counted.update(i for i, h in enumerate(tl._items)
                       if h.status in (_DONE, _FAILED, _CANCELLED))
    interactive = _stderr_is_terminal() or _in_jupyter()
    # Forced onto a file or pipe: redraw at most every 10 s; close() writes the final n/n.
    return _Bar(total=len(tl), initial=already, file=sys.stderr, unit="tf",
                mininterval=0.1 if interactive else 10.0, dynamic_ncols=interactive)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"

