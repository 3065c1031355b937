"""seamless._ipc.window: bound, release order, racing and stale completions, waits, eventfd.

Each test runs once per available backend (the compiled module and its pure twin, imported
by their own module names); under SEAMLESS_PUREPYTHON=1 only the twin runs.  An autouse
fixture fails a test that leaves a descriptor open; every thread a test starts is joined.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import select
import signal
import threading

import pytest
from ipc_twins import backend_params, eventfd_count, until_asleep

import seamless._ipc

GENERATION_MASK = (1 << 29) - 1
MODULES = {"python": "seamless._ipc._pure.window", "cython": "seamless._ipc.window"}


@pytest.fixture(params=backend_params("window"))
def window(request):
    """The window module of one backend, by its own module name.

    Importing the compiled window binds ``seamless._ipc.window`` and, through its cimport,
    ``seamless._ipc.flags``; the package's choice of backend is put back afterwards."""
    names = ("window", "flags")
    bound = vars(seamless._ipc)
    saved = {name: bound[name] for name in names if name in bound}
    try:
        return importlib.import_module(MODULES[request.param])
    finally:
        for name in names:
            if name in saved:
                bound[name] = saved[name]
            elif name not in seamless._ipc._BACKENDS:
                bound.pop(name, None)  # still unchosen: loaded lazily on first use


pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


class _Waiter(threading.Thread):
    """Runs win.next_ready(timeout) on a thread, which owns the window meanwhile; .result
    holds what it returned (an exception fails the test through pytest's
    unhandled-thread-exception warning)."""

    def __init__(self, win, timeout=60.0):
        super().__init__(daemon=True)
        self.win = win
        self.timeout = timeout
        self.result = None

    def run(self):
        self.result = self.win.next_ready(self.timeout)


# --- bookkeeping -------------------------------------------------------------------------------

def test_constants_and_properties(window):
    assert (window.EMPTY, window.PENDING, window.RUNNING, window.DONE, window.FAILED,
            window.CANCELLED) == (0, 1, 2, 3, 4, 5)
    assert set(window.__all__) == {"EMPTY", "PENDING", "RUNNING", "DONE", "FAILED",
                                   "CANCELLED", "Window"}
    with window.Window(3) as win:
        assert (win.capacity, win.held, win.head) == (3, 0, 0)
        assert repr(win) == "<Window capacity=3 head=0 held=0>"
        assert [win.slot_of(seq) for seq in (0, 2, 3, 7)] == [0, 2, 0, 1]
    assert repr(win) == "<Window capacity=3 head=0 held=0 closed>"


def test_reserve_up_to_capacity_then_none(window):
    win = window.Window(3)
    assert [win.reserve() for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    assert win.reserve() is None
    assert (win.held, win.head) == (3, 0)
    assert [win.state(seq) for seq in range(3)] == [window.PENDING] * 3
    assert win.complete(1, window.DONE)
    assert win.reserve() is None  # a finished item holds its position until released
    assert win.complete(0, window.DONE)
    assert win.next_ready() == (0, window.DONE)
    assert win.reserve() == (3, 0)  # the released slot, for the next sequence number
    assert win.reserve() is None
    assert (win.held, win.head) == (3, 1)


def test_out_of_order_completions_are_released_in_order(window):
    win = window.Window(4)
    for _ in range(3):
        win.reserve()
    assert win.complete(2, window.FAILED)
    assert win.complete(1, window.DONE)
    assert win.try_next() is None
    assert win.complete(0, window.CANCELLED)
    assert win.next_ready() == (0, window.CANCELLED)
    assert win.next_ready() == (1, window.DONE)
    assert win.next_ready() == (2, window.FAILED)
    assert (win.held, win.head) == (0, 3)


def test_try_next_is_none_while_the_head_is_unfinished(window):
    win = window.Window(3)
    for _ in range(3):
        win.reserve()
    win.complete(1, window.DONE)
    win.complete(2, window.DONE)
    win.start(0)
    for _ in range(3):
        assert win.try_next() is None
    assert [win.state(seq) for seq in range(3)] == [window.RUNNING, window.DONE, window.DONE]
    assert win.held == 3
    win.complete(0, window.FAILED)
    assert [win.try_next() for _ in range(4)] == [
        (0, window.FAILED), (1, window.DONE), (2, window.DONE), None]  # then nothing is held


def test_start_moves_pending_to_running_once(window):
    win = window.Window(2)
    win.reserve()
    win.reserve()
    assert win.start(0) is True
    assert win.state(0) == window.RUNNING
    with pytest.raises(ValueError, match=r"start\(0\): item 0 is RUNNING already"):
        win.start(0)
    assert win.complete(0, window.DONE) is True
    assert win.start(0) is False  # terminal already
    assert win.complete(1, window.CANCELLED) is True  # cancelled before it started
    assert win.start(1) is False
    assert win.state(1) == window.CANCELLED
    assert win.start(2) is False  # never reserved


def test_stale_complete_cannot_touch_a_reused_slot(window):
    win = window.Window(2)
    win.reserve()
    win.reserve()
    assert win.complete(0, window.DONE)
    assert win.complete(0, window.FAILED) is False  # the first writer won
    assert win.next_ready() == (0, window.DONE)
    assert win.complete(0, window.FAILED) is False  # released, slot not reused yet
    assert win.reserve() == (2, 0)
    assert win.complete(0, window.FAILED) is False  # released, slot reused by seq 2
    assert win.start(0) is False
    assert (win.state(0), win.state(2)) == (window.EMPTY, window.PENDING)
    assert win.complete(4, window.DONE) is False  # never reserved (slot 0 again)
    assert win.complete(-1, window.DONE) is False
    assert win.state(2) == window.PENDING and win.held == 2
    assert win.complete(2, window.DONE)
    win.complete(1, window.DONE)
    assert [win.next_ready(), win.next_ready()] == [(1, window.DONE), (2, window.DONE)]


def test_errors_name_the_value_and_the_fix(window):
    with pytest.raises(ValueError, match=r"Window capacity must be in 1\.\.2147483647, got 0"):
        window.Window(0)
    with pytest.raises(ValueError, match=r"first_seq must be in 0\.\.\d+, got -1"):
        window.Window(2, first_seq=-1)
    with pytest.raises(TypeError):
        window.Window(2.0)
    win = window.Window(2)
    with pytest.raises(RuntimeError, match=r"the window holds nothing.*reserve\(\) an item"):
        win.next_ready()
    with pytest.raises(RuntimeError, match="the window holds nothing"):
        win.next_ready(timeout=0)
    assert win.try_next() is None
    win.reserve()
    with pytest.raises(ValueError, match="terminal state.*got 2"):
        win.complete(0, window.RUNNING)
    with pytest.raises(ValueError, match="timeout must be None or >= 0 seconds, got -1"):
        win.next_ready(timeout=-1)
    with pytest.raises(ValueError, match="seq must be >= 0, got -1"):
        win.slot_of(-1)
    assert win.state(0) == window.PENDING


# --- threads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("states, started", [
    (("DONE", "DONE"), True),
    (("DONE", "FAILED"), False),
    (("CANCELLED", "DONE"), True),
    (("CANCELLED", "FAILED"), False),
], ids=["complete-vs-complete", "done-vs-failed-pending", "cancel-vs-done-running",
        "cancel-vs-failed-pending"])
def test_racing_completions_have_exactly_one_winner(window, states, started):
    rounds = 300
    win = window.Window(1)
    barrier = threading.Barrier(3, timeout=60)
    current = [None]
    won = [[None] * rounds, [None] * rounds]

    def completer(index, state):
        for r in range(rounds):
            barrier.wait()
            won[index][r] = win.complete(current[0], state)
            barrier.wait()

    threads = [threading.Thread(target=completer, args=(i, getattr(window, name)))
               for i, name in enumerate(states)]
    for thread in threads:
        thread.start()
    released = []
    try:
        for r in range(rounds):
            current[0], _slot = win.reserve()
            if started:
                assert win.start(current[0])
            barrier.wait()
            barrier.wait()
            released.append(win.try_next())
    except BaseException:
        barrier.abort()  # frees the completers
        raise
    finally:
        for thread in threads:
            thread.join()
    codes = [getattr(window, name) for name in states]
    for r in range(rounds):
        assert won[0][r] != won[1][r], f"round {r}: {won[0][r]}, {won[1][r]}"
        assert released[r] == (r, codes[0 if won[0][r] else 1])


def test_next_ready_wakes_on_a_complete_from_another_thread(window):
    win = window.Window(2)
    win.reserve()
    win.reserve()
    waiter = _Waiter(win)
    waiter.start()
    try:
        until_asleep(waiter)
        assert win.complete(1, window.DONE)  # not the head: the waiter keeps waiting
        until_asleep(waiter)
        assert waiter.is_alive() and waiter.result is None
        assert win.complete(0, window.CANCELLED)
    finally:
        win.complete(0, window.CANCELLED)  # frees the waiter if an assertion failed
        waiter.join()
    assert waiter.result == (0, window.CANCELLED)
    assert win.try_next() == (1, window.DONE)


def test_next_ready_timeout_returns_none_and_releases_nothing(window):
    win = window.Window(2)
    win.reserve()
    assert win.next_ready(timeout=0.02) is None
    assert win.next_ready(timeout=0) is None
    assert (win.held, win.head, win.state(0)) == (1, 0, window.PENDING)
    win.complete(0, window.DONE)
    assert win.next_ready(timeout=0) == (0, window.DONE)


def test_ctrl_c_interrupts_next_ready(window):
    win = window.Window(2)
    win.reserve()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            win.next_ready(timeout=60)  # a wait that ran out would return None instead
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (win.held, win.head, win.state(0)) == (1, 0, window.PENDING)
    win.complete(0, window.CANCELLED)
    assert win.next_ready() == (0, window.CANCELLED)


def test_a_signal_whose_handler_returns_does_not_end_next_ready(window):
    win = window.Window(2)
    win.reserve()
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
        assert win.next_ready(timeout=0.1) is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert win.held == 1


# --- eventfd and close -------------------------------------------------------------------------

def test_eventfd_is_readable_after_each_completion(window):
    win = window.Window(4)
    for _ in range(4):
        win.reserve()
    win.complete(0, window.DONE)  # before fileno(): nobody watches, nothing counted
    assert win.drain() == 0
    fd = win.fileno()
    assert win.fileno() == fd
    assert select.select([fd], [], [], 0)[0] == []
    assert win.complete(2, window.FAILED)
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert win.drain() == 1
    assert select.select([fd], [], [], 0)[0] == [] and win.drain() == 0
    assert win.complete(2, window.DONE) is False  # a loser signals nothing
    assert select.select([fd], [], [], 0)[0] == []
    win.complete(1, window.DONE)
    win.complete(3, window.CANCELLED)
    assert win.drain() == 2
    assert [win.try_next() for _ in range(4)] == [
        (0, window.DONE), (1, window.DONE), (2, window.FAILED), (3, window.CANCELLED)]
    win.close()
    win.close()  # idempotent
    with pytest.raises(ValueError, match="this Window is closed, it has no eventfd"):
        win.fileno()
    assert win.drain() == 0


def test_an_event_loop_waits_on_the_eventfd(window):
    """The parallel_async() pattern: add_reader on fileno(), drain, then try_next()."""
    win = window.Window(8)
    seqs = [win.reserve()[0] for _ in range(8)]
    go = threading.Event()

    def complete_in_reverse():  # an I/O thread finishing the items, last one first
        go.wait(60)
        for seq in reversed(seqs):
            win.complete(seq, window.DONE)

    async def consume():
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(win.fileno(), ready.set)
        out = []
        try:
            go.set()
            while win.held:
                got = win.try_next()
                if got is None:
                    ready.clear()
                    win.drain()
                    got = win.try_next()  # a completion between the two is not lost
                    if got is None:
                        await ready.wait()
                        continue
                out.append(got)
        finally:
            loop.remove_reader(win.fileno())
        return out

    completer = threading.Thread(target=complete_in_reverse)
    completer.start()
    try:
        out = asyncio.run(consume())
    finally:
        go.set()
        completer.join()
        win.close()
    assert out == [(seq, window.DONE) for seq in seqs]


def test_close_refuses_late_completions_and_owner_calls(window):
    win = window.Window(2)
    win.reserve()
    win.reserve()
    win.fileno()
    win.close()
    late = []
    thread = threading.Thread(target=lambda: late.append(win.complete(0, window.DONE)))
    thread.start()
    thread.join()
    assert late == [False]  # a late completion callback: refused, no exception
    assert win.start(1) is False
    assert win.state(0) == window.PENDING and win.held == 2
    for call in (win.reserve, win.next_ready, win.try_next):
        with pytest.raises(ValueError, match=r"this Window is closed; \w+\(\) needs an open one"):
            call()


def test_eventfd_is_closed_by_close_context_and_collection(window):
    before = eventfd_count()
    with window.Window(2) as win:
        win.fileno()
        assert eventfd_count() == before + 1
    assert eventfd_count() == before
    win = window.Window(2)
    win.fileno()
    del win
    gc.collect()
    assert eventfd_count() == before


# --- many cycles -------------------------------------------------------------------------------

@pytest.mark.parametrize("first_seq", [0, (GENERATION_MASK - 4) * 8], ids=["from-0", "wrapping"])
def test_many_cycles_through_the_ring(window, first_seq):
    """100,000 items through 8 slots, completed last first and released a few at a time; from
    a first_seq where each slot's generation wraps modulo 2**29 after a few uses too."""
    capacity, items = 8, 100_000
    win = window.Window(capacity, first_seq=first_seq)
    states = (window.DONE, window.FAILED, window.CANCELLED)
    next_seq = first_seq
    released = []
    rounds = 0
    while len(released) < items:
        fresh = next_seq
        while (got := win.reserve()) is not None:
            assert got == (next_seq, next_seq % capacity)
            next_seq += 1
        assert win.held == capacity
        for seq in reversed(range(fresh, next_seq)):
            assert win.complete(seq, states[seq % 3])
        if released:
            assert win.complete(released[-1], window.DONE) is False  # stale: not held any more
        for _ in range(1 + rounds % capacity):
            got = win.try_next() if rounds % 2 else win.next_ready()
            assert got == (first_seq + len(released), states[got[0] % 3])
            released.append(got[0])
        rounds += 1
    assert win.head == first_seq + len(released)
    if first_seq:
        assert win.head // capacity + 1 > GENERATION_MASK  # the generations did wrap
