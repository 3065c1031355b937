"""seamless._ipc.flags: completion words, generations, races, waits, eventfds, shared slabs.

Each test runs once per available backend (the compiled module and its pure twin,
imported by their own module names); under SEAMLESS_PUREPYTHON=1 only the twin runs.
Tests that wait also run over a slab in a shared memfd mapping (``kind``), which the
compiled module serves with a shared futex.  An autouse fixture fails a test that
leaves a descriptor open.  One test starts a child process, to finish a word in
shared memory from another process.
"""

from __future__ import annotations

import gc
import importlib
import mmap
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading

import pytest
from ipc_twins import backend_params, eventfd_count, until_asleep

import seamless._ipc

PROJECT_ROOT = pathlib.Path(importlib.import_module("seamless.errors").__file__).parents[1]
GENERATION_MASK = (1 << 29) - 1
MODULES = {"python": "seamless._ipc._pure.flags", "cython": "seamless._ipc.flags"}


@pytest.fixture(params=backend_params("flags"))
def flags(request):
    """The flags module of one backend, by its own module name."""
    missing = object()
    chosen = getattr(seamless._ipc, "flags", missing)
    try:
        return importlib.import_module(MODULES[request.param])
    finally:
        if chosen is not missing:
            seamless._ipc.flags = chosen  # importing the submodule rebinds the attribute


pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


class _SharedWords:
    """A memfd mapped MAP_SHARED: the memory a slab shares with another process."""

    def __init__(self, nslots: int):
        self.size = 4 * nslots
        self.fd = os.memfd_create("seamless-flags-test", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self.map = mmap.mmap(self.fd, self.size)

    def close(self):
        self.map.close()  # BufferError if a slab over it is still alive
        os.close(self.fd)


@pytest.fixture(params=["private", "shared"])
def make_slab(flags, request):
    """Build slabs of one kind: private memory, or a memfd mapping (shared futex)."""
    made = []

    def make(nslots=64):
        if request.param == "private":
            slab = flags.Slab(nslots)
        else:
            words = _SharedWords(nslots)
            slab = flags.Slab(nslots, buffer=words.map)
            made.append(words)
        return slab

    yield make
    gc.collect()
    for words in made:
        words.close()


class _Waiter(threading.Thread):
    """Runs slab.wait(...) on a thread; .result holds the state it returned (an exception
    fails the test through pytest's unhandled-thread-exception warning)."""

    def __init__(self, slab, slot, generation, timeout=60.0):
        super().__init__(daemon=True)
        self.args_ = (slot, generation, timeout)
        self.slab = slab
        self.result = None

    def run(self):
        self.result = self.slab.wait(*self.args_)


# --- bookkeeping -------------------------------------------------------------------------------

def test_constants_and_defaults(flags):
    assert (flags.EMPTY, flags.PENDING, flags.RUNNING, flags.DONE, flags.FAILED,
            flags.CANCELLED) == (0, 1, 2, 3, 4, 5)
    assert set(flags.__all__) == {"EMPTY", "PENDING", "RUNNING", "DONE", "FAILED",
                                  "CANCELLED", "Slab"}
    assert flags.Slab().nslots == 4096
    with flags.Slab(3) as slab:
        assert slab.nslots == 3
        assert [slab.word(i) for i in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="nslots must be in 1.."):
        flags.Slab(0)


def test_acquire_reset_release_bump_the_generation(flags):
    slab = flags.Slab(4)
    assert slab.acquire() == (0, 0)
    assert slab.state(0) == flags.PENDING and slab.word(0) == flags.PENDING
    assert slab.reset(0) == 1
    assert (slab.generation(0), slab.state(0), slab.word(0)) == (1, flags.PENDING, 1 << 3 | 1)
    assert slab.acquire() == (1, 0)
    slab.release(0)
    assert (slab.generation(0), slab.state(0)) == (2, flags.EMPTY)
    assert slab.acquire() == (0, 2)  # the released slot, in its new generation
    assert slab.acquire() == (2, 0)


def test_generation_wraps_and_words_use_the_shared_layout(flags):
    buffer = bytearray(16)
    struct.pack_into("=I", buffer, 0, GENERATION_MASK << 3 | flags.DONE)
    slab = flags.Slab(4, buffer=buffer)
    assert slab.generation(0) == GENERATION_MASK and slab.state(0) == flags.DONE
    # A word left non-EMPTY is handed out in a fresh generation, here wrapping to 0.
    assert slab.acquire() == (0, 0)
    assert struct.unpack_from("=I", buffer, 0)[0] == flags.PENDING
    assert slab.start(0, 0) and slab.finish(0, 0, flags.FAILED)
    assert struct.unpack_from("=I", buffer, 0)[0] == flags.FAILED
    assert slab.reset(0) == 1
    assert struct.unpack_from("=I", buffer, 0)[0] == 1 << 3 | flags.PENDING
    del slab
    buffer.extend(b"x")  # the slab released its export


def test_start_then_finish(flags):
    slab = flags.Slab(2)
    slot, gen = slab.acquire()
    assert slab.start(slot, gen) is True
    assert slab.state(slot) == flags.RUNNING
    assert slab.finish(slot, gen, flags.DONE) is True
    assert slab.state(slot) == flags.DONE
    assert slab.finish(slot, gen, flags.FAILED) is False  # first writer won
    assert slab.start(slot, gen) is False  # terminal already
    assert slab.state(slot) == flags.DONE


def test_cancel_before_start_makes_start_fail(flags):
    slab = flags.Slab(2)
    slot, gen = slab.acquire()
    assert slab.finish(slot, gen, flags.CANCELLED) is True
    assert slab.start(slot, gen) is False
    assert slab.finish(slot, gen, flags.DONE) is False
    assert slab.state(slot) == flags.CANCELLED


def test_stale_generation_writes_fail(flags):
    slab = flags.Slab(2)
    slot, old = slab.acquire()
    new = slab.reset(slot)
    assert new == old + 1
    assert slab.start(slot, old) is False
    assert slab.finish(slot, old, flags.DONE) is False
    assert (slab.generation(slot), slab.state(slot)) == (new, flags.PENDING)
    slab.release(slot)
    assert slab.finish(slot, new, flags.DONE) is False  # released: its generation is gone
    assert (slab.generation(slot), slab.state(slot)) == (new + 1, flags.EMPTY)


def test_illegal_moves_raise_naming_slot_generation_state(flags):
    slab = flags.Slab(2)
    slot, gen = slab.acquire()
    slab.start(slot, gen)
    with pytest.raises(ValueError, match=r"start\(slot=0, generation=0\).*RUNNING"):
        slab.start(slot, gen)
    slab.release(slot)
    empty_gen = slab.generation(slot)
    with pytest.raises(ValueError, match=r"start\(slot=0, generation=1\).*EMPTY"):
        slab.start(slot, empty_gen)
    with pytest.raises(ValueError, match=r"finish\(slot=0, generation=1\).*EMPTY"):
        slab.finish(slot, empty_gen, flags.DONE)
    with pytest.raises(ValueError, match="terminal state.*got 2"):
        slab.finish(slot, empty_gen, flags.RUNNING)
    with pytest.raises(ValueError, match="slot 0 of this flag slab is not acquired"):
        slab.release(slot)
    with pytest.raises(ValueError, match=r"reset\(slot=0\).*not acquired"):
        slab.reset(slot)
    with pytest.raises(IndexError, match="slot 2 out of range for a flag slab of 2 slots"):
        slab.state(2)
    with pytest.raises(IndexError, match="slot -1 out of range"):
        slab.finish(-1, 0, flags.DONE)
    with pytest.raises(ValueError, match="generation must be in 0..536870911, got 536870912"):
        slab.start(0, 1 << 29)
    with pytest.raises(ValueError, match="timeout must be None or >= 0 seconds, got -1"):
        slab.wait(0, 0, timeout=-1)


def test_full_slab_names_its_size_and_the_fix(flags):
    slab = flags.Slab(2)
    slab.acquire()
    slab.acquire()
    with pytest.raises(IndexError, match=r"flag slab full: all 2 slots are acquired \(release\(\)"):
        slab.acquire()
    slab.release(1)
    assert slab.acquire() == (1, 1)


def test_buffer_must_be_writable_big_enough_and_aligned(flags):
    with pytest.raises(ValueError, match="writable contiguous buffer"):
        flags.Slab(4, buffer=bytes(16))
    with pytest.raises(ValueError, match="buffer holds 15 bytes, a slab of 4 slots needs 16"):
        flags.Slab(4, buffer=bytearray(15))
    with pytest.raises(ValueError, match="4-byte aligned"):
        flags.Slab(4, buffer=memoryview(bytearray(20))[1:])


# --- races -------------------------------------------------------------------------------------

@pytest.mark.parametrize("states, started", [
    (("DONE", "DONE"), True),
    (("DONE", "FAILED"), False),
    (("CANCELLED", "DONE"), True),
    (("CANCELLED", "DONE"), False),
], ids=["finish-vs-finish", "done-vs-failed-pending", "cancel-vs-done-running",
        "cancel-vs-done-pending"])
def test_racing_terminal_writers_have_exactly_one_winner(flags, states, started):
    rounds = 300
    slab = flags.Slab(1)
    slot, gen = slab.acquire()
    barrier = threading.Barrier(3, timeout=60)
    current = [gen]
    won = [[None] * rounds, [None] * rounds]

    def writer(index, state):
        for r in range(rounds):
            barrier.wait()
            won[index][r] = slab.finish(slot, current[0], state)
            barrier.wait()

    threads = [threading.Thread(target=writer, args=(i, getattr(flags, name)))
               for i, name in enumerate(states)]
    for thread in threads:
        thread.start()
    final = []
    try:
        for r in range(rounds):
            if started:
                assert slab.start(slot, current[0])
            barrier.wait()
            barrier.wait()
            final.append(slab.state(slot))
            current[0] = slab.reset(slot)
    except BaseException:
        barrier.abort()  # frees the writers
        raise
    finally:
        for thread in threads:
            thread.join()
    codes = [getattr(flags, name) for name in states]
    for r in range(rounds):
        assert won[0][r] != won[1][r], f"round {r}: {won[0][r]}, {won[1][r]}"
        assert final[r] == codes[0 if won[0][r] else 1]


# --- waiting -----------------------------------------------------------------------------------

def test_wait_wakes_on_finish_from_another_thread(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()
    waiter = _Waiter(slab, slot, gen)
    waiter.start()
    until_asleep(waiter)
    slab.start(slot, gen)
    assert slab.finish(slot, gen, flags.FAILED)
    waiter.join()
    assert waiter.result == flags.FAILED


def test_wait_on_a_terminal_word_returns_at_once(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()
    slab.finish(slot, gen, flags.DONE)
    assert slab.wait(slot, gen) == flags.DONE
    assert slab.wait(slot, gen, timeout=0) == flags.DONE


def test_wait_timeout_returns_the_nonterminal_state(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()
    assert slab.wait(slot, gen, timeout=0.02) == flags.PENDING
    slab.start(slot, gen)
    assert slab.wait(slot, gen, timeout=0) == flags.RUNNING


def test_wait_returns_when_the_owner_moves_the_generation_on(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()
    waiter = _Waiter(slab, slot, gen)
    waiter.start()
    until_asleep(waiter)
    new = slab.reset(slot)
    waiter.join()
    assert waiter.result == flags.PENDING
    waiter = _Waiter(slab, slot, new)
    waiter.start()
    until_asleep(waiter)
    slab.release(slot)
    waiter.join()
    assert waiter.result == flags.EMPTY


def test_signal_interrupts_a_wait(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            slab.wait(slot, gen, timeout=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert slab.state(slot) == flags.PENDING


def test_a_signal_whose_handler_returns_does_not_end_a_wait(flags, make_slab):
    slab = make_slab()
    slot, gen = slab.acquire()
    seen = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
        assert slab.wait(slot, gen, timeout=0.1) == flags.PENDING
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- eventfd -----------------------------------------------------------------------------------

def test_eventfd_is_readable_after_each_won_transition(flags):
    slab = flags.Slab(4)
    a, gen_a = slab.acquire()
    b, gen_b = slab.acquire()
    slab.finish(a, gen_a, flags.DONE)  # before fileno(): nobody watches, nothing counted
    assert slab.drain() == 0
    fd = slab.fileno()
    assert slab.fileno() == fd
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(0) == []
    assert slab.finish(b, gen_b, flags.CANCELLED)
    assert poller.poll(0) == [(fd, select.POLLIN)]
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert slab.drain() == 1
    assert poller.poll(0) == [] and slab.drain() == 0
    assert slab.finish(b, gen_b, flags.DONE) is False  # a loser writes nothing
    assert poller.poll(0) == []
    gen_a = slab.reset(a)
    gen_b = slab.reset(b)
    slab.finish(a, gen_a, flags.DONE)
    slab.finish(b, gen_b, flags.FAILED)
    assert slab.drain() == 2
    slab.close()
    slab.close()  # idempotent
    with pytest.raises(ValueError, match="flag slab is closed"):
        slab.fileno()
    assert slab.drain() == 0
    assert slab.finish(a, slab.reset(a), flags.DONE)  # words outlive the eventfd


def test_eventfd_is_closed_by_close_context_and_collection(flags):
    before = eventfd_count()
    with flags.Slab(2) as slab:
        slab.fileno()
        assert eventfd_count() == before + 1
    assert eventfd_count() == before
    slab = flags.Slab(2)
    slab.fileno()
    del slab
    gc.collect()
    assert eventfd_count() == before


def test_fan_out_of_10000_words_uses_one_eventfd_per_slab(flags):
    before = eventfd_count()
    slabs = [flags.Slab() for _ in range(3)]
    words = []
    for i in range(10_000):
        slab = slabs[i // 4096]
        words.append((slab, *slab.acquire()))
    assert eventfd_count() == before  # lazily: no eventfd until someone watches
    for slab, slot, gen in words:
        slab.fileno()  # each waiter asks for its word's slab's eventfd
        assert slab.finish(slot, gen, flags.DONE)
    assert eventfd_count() == before + 3
    assert [slab.drain() for slab in slabs] == [4096, 4096, 10_000 - 2 * 4096]
    for slab in slabs:
        slab.close()
    assert eventfd_count() == before


# --- another process ---------------------------------------------------------------------------

CHILD = """
    import importlib, mmap, os, sys
    flags = importlib.import_module(sys.argv[1])
    fd, nslots, slot, gen = map(int, sys.argv[2:])
    words = mmap.mmap(fd, 4 * nslots)
    os.close(fd)
    slab = flags.Slab(nslots, buffer=words)
    sys.stdin.readline()  # the parent is waiting now
    print(slab.start(slot, gen), slab.finish(slot, gen, flags.DONE), flush=True)
    del slab
    words.close()
"""


def test_child_process_finishes_a_word_the_parent_waits_on(flags, tmp_path):
    nslots = 64
    words = _SharedWords(nslots)
    slab = flags.Slab(nslots, buffer=words.map)
    slab.acquire()
    slot, gen = slab.acquire()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), flags.__name__, str(words.fd),
         str(nslots), str(slot), str(gen)],
        pass_fds=(words.fd,), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # Outside the source tree: with -c the cwd comes first on sys.path, and a checkout's
        # seamless/ (no built extension in it) would shadow the installed package.
        cwd=tmp_path)
    waiter = _Waiter(slab, slot, gen)
    try:
        waiter.start()
        until_asleep(waiter)
        out, err = child.communicate("go\n", timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        waiter.join()
    assert child.returncode == 0, err
    assert out.split() == ["True", "True"]
    assert waiter.result == flags.DONE
    assert slab.state(slot) == flags.DONE and slab.state(0) == flags.PENDING
    del slab, waiter
    gc.collect()
    words.close()
