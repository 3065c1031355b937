"""Completion words behind Transformation handles (seamless.completion), on the chosen backend.

Covers: cancel racing the outcome (exactly one wins, everything consistent), clear_exception
and rerun on a reset word, no word for a never-started handle, words reused after handles die,
slabs made and dropped, 10,000 handles awaited with asyncio.gather on one eventfd per slab and
no extra thread, .task() finishing on another thread, cancelled waits, several loops on one
slab.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import pytest

from seamless import completion
from seamless._ipc import flags
from seamless.errors import TransformationCancelledError, TransformationError
from seamless.transformer import delayed


@delayed
def inc(x):
    return x + 1


@delayed
def fail_if_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


@delayed
def wait_for_file(path, n):
    """Runs until ``path`` exists: keeps a transformation running as long as a test needs."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.005)
    return n


def eventfds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]"
        except OSError:  # the listing's own descriptor, already closed
            pass
    return count


def words_in_use() -> int:
    gc.collect()
    return completion._slabs.counts()[1]


def check_consistent(h, expected_value, cancelled: bool):
    if cancelled:
        assert h.status == "cancelled"
        assert "was cancelled" in h.exception
        with pytest.raises(TransformationCancelledError):
            h.value
    elif isinstance(expected_value, type):
        assert h.status == "failed"
        assert "ValueError" in h.exception
        with pytest.raises(TransformationError):
            h.value
    else:
        assert h.status == "done"
        assert h.exception is None
        assert h.value == expected_value
    state = h._slab.state(h._slot)
    assert flags.__dict__[h.status.upper()] == state  # the word mirrors the status


@pytest.mark.parametrize("transformer", [inc, fail_if_odd], ids=["done", "failed"])
def test_cancel_racing_the_outcome_has_one_winner(transformer):
    rounds = 400
    for i in range(rounds):
        if transformer is inc:
            h, value = inc(1_000_000 + i), 1_000_001 + i
        else:
            h, value = fail_if_odd(i), ValueError if i % 2 else i
        calls = []
        h._add_done_callback(calls.append)
        barrier = threading.Barrier(3)
        results = {}

        def cancel():
            barrier.wait()
            for _ in range(10 * i):  # sweep the cancel across the handle's short life
                pass
            results["cancel"] = h.cancel()

        def wait():
            barrier.wait()
            try:
                results["run"] = h.run()
            except TransformationError as exc:
                results["run"] = exc

        threads = [threading.Thread(target=cancel), threading.Thread(target=wait)]
        for t in threads:
            t.start()
        h.start()
        barrier.wait()
        for t in threads:
            t.join()
        cancelled = results["cancel"]
        check_consistent(h, value, cancelled)
        assert calls == [h]  # callbacks ran exactly once
        if cancelled:
            assert isinstance(results["run"], TransformationCancelledError)
        elif value is ValueError:
            assert isinstance(results["run"], TransformationError)
            assert not isinstance(results["run"], TransformationCancelledError)
        else:
            assert results["run"] == value
        assert h.cancel() is False  # terminal: a late cancel changes nothing
        check_consistent(h, value, cancelled)


def test_clear_exception_resets_the_word_then_reruns(tmp_path):
    marker = tmp_path / "fail"
    marker.write_text("")

    @delayed
    def flaky(path):
        import os

        if os.path.exists(path):
            raise RuntimeError("once")
        return 7

    h = flaky(str(marker))
    with pytest.raises(TransformationError, match="once"):
        h.run()
    slab, slot, generation = h._slab, h._slot, h._generation
    assert slab.state(slot) == flags.FAILED
    marker.unlink()
    h.clear_exception()
    assert h.status == "pending"
    assert (h._slab, h._slot) == (slab, slot)  # same word, next generation
    assert h._generation != generation and slab.state(slot) == flags.PENDING
    assert slab.finish(slot, generation, flags.DONE) is False  # stale writers are refused
    assert h.run() == 7
    assert slab.state(slot) == flags.DONE
    h.clear_exception()  # not failed: nothing happens
    assert h.status == "done"


def test_clear_exception_then_task():
    h = fail_if_odd(1)
    with pytest.raises(TransformationError):
        h.run()
    h.clear_exception()

    async def main():
        return await h.task()

    with pytest.raises(TransformationError, match="odd 1"):
        asyncio.run(main())
    assert h.status == "failed"


def test_never_started_handles_hold_no_word():
    before = words_in_use()
    handles = [inc(i) for i in range(5000)]
    assert all(h._slab is None for h in handles)
    assert words_in_use() == before
    assert handles[0].cancel() is True  # cancelling a pending handle needs no word either
    assert handles[0]._slab is None and handles[0].status == "cancelled"
    handles[1].start()
    assert words_in_use() == before + 1
    handles[1].run()


def test_words_are_reused_after_handles_die():
    handles = [inc(10_000 + i).start() for i in range(200)]
    for h in handles:
        h.run()
    before = words_in_use()
    words = {(id(h._slab), h._slot) for h in handles}
    del h, handles
    assert words_in_use() == before - 200
    again = [inc(20_000 + i).start() for i in range(200)]
    assert {(id(h._slab), h._slot) for h in again} == words
    assert [h.run() for h in again] == [20_001 + i for i in range(200)]


def test_slabs_are_made_when_full_and_dropped_when_empty():
    slabs = completion.Slabs(nslots=4)
    words = [slabs.acquire() for _ in range(9)]
    assert slabs.counts() == (3, 9)
    assert len({w[0] for w in words}) == 3
    first = words[0]
    for slab, slot, _ in words:
        slabs.release(slab, slot)
    assert slabs.counts() == (1, 0)  # one slab without an eventfd stays for the next owners
    slab, slot, generation = slabs.acquire()
    if slab is first[0] and slot == first[1]:
        assert generation != first[2]
    slabs.release(slab, slot)


def test_release_inside_a_held_lock_is_given_back_by_the_holder():
    slabs = completion.Slabs(nslots=4)
    slab, slot, _ = slabs.acquire()
    with slabs._lock:  # what the garbage collector may do inside acquire()
        slabs.release(slab, slot)
        assert slabs._dead
    slabs.acquire()
    assert not slabs._dead and slabs.counts() == (1, 1)


def test_gather_of_10000_tasks_uses_one_eventfd_per_slab_and_no_thread():
    fds_before = eventfds()
    samples = []
    started = {}

    async def sample(stop):
        while not stop.is_set():
            samples.append((eventfds(), threading.active_count(),
                            len(completion._slabs._watches)))
            await asyncio.sleep(0.001)

    async def main():
        handles = [inc(30_000 + i) for i in range(10_000)]
        waiting = asyncio.gather(*(h.task() for h in handles))  # starts every handle
        started["threads"] = threading.active_count()  # the executor's, made by start()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        values = await waiting
        stop.set()
        await sampler
        return handles, values

    handles, values = asyncio.run(main())
    assert values == [30_001 + i for i in range(10_000)]
    slabs = len({id(h._slab) for h in handles})
    assert slabs == 3  # 10,000 words in slabs of 4096
    assert samples
    assert max(s[0] for s in samples) <= fds_before + slabs
    assert {s[1] for s in samples} == {started["threads"]}
    assert max(s[2] for s in samples) <= slabs
    assert completion._slabs._watches == {}  # every reader removed after the wait
    del handles
    gc.collect()
    assert eventfds() == fds_before  # watched slabs go with their last handle


def test_task_finished_on_another_thread(tmp_path):
    gate = tmp_path / "gate"

    async def main():
        h = wait_for_file(str(gate), 5)
        task = h.task()
        while not completion._slabs._watches:  # the task waits on the word's eventfd
            await asyncio.sleep(0.001)
        assert h.status == "running"
        opener = threading.Thread(target=gate.write_text, args=("go",))
        opener.start()
        value = await task
        opener.join()
        return value

    assert asyncio.run(main()) == 5


def test_wait_async_for_a_word_finished_by_a_plain_thread():
    slabs = completion.Slabs(nslots=8)
    slab, slot, generation = slabs.acquire()

    async def main():
        waiter = asyncio.ensure_future(slabs.wait_async(slab, slot, generation))
        await asyncio.sleep(0)
        assert not waiter.done() and slabs._watches
        finisher = threading.Thread(target=slab.finish, args=(slot, generation, flags.DONE))
        finisher.start()
        await waiter
        finisher.join()

    asyncio.run(main())
    assert slabs._watches == {}
    slabs.release(slab, slot)
    assert slabs.counts() == (0, 0)  # it had an eventfd: dropped, descriptor closed


def test_cancelled_wait_removes_the_reader(tmp_path):
    gate = tmp_path / "gate"
    h = wait_for_file(str(gate), 1)

    async def main():
        task = h.task()
        while not completion._slabs._watches:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert completion._slabs._watches == {}  # cancelling the task stops the waiting...

    asyncio.run(main())
    assert h.status == "cancelled"  # ...and cancels the handle (asyncio's convention)
    gate.write_text("go")


def test_two_loops_on_one_slab(tmp_path):
    gates = [tmp_path / "a", tmp_path / "b"]
    handles = [wait_for_file(str(g), i) for i, g in enumerate(gates)]
    for h in handles:
        h.start()
    assert handles[0]._slab is handles[1]._slab
    waiting = threading.Barrier(3)
    results = {}

    def in_own_loop(h):
        async def main():
            task = h.task()
            await asyncio.sleep(0)
            waiting.wait()
            return await task
        results[id(h)] = asyncio.run(main())

    threads = [threading.Thread(target=in_own_loop, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    waiting.wait()
    for gate in gates:
        gate.write_text("go")
    for t in threads:
        t.join()
    assert results == {id(handles[0]): 0, id(handles[1]): 1}
    assert completion._slabs._watches == {}


def test_states_match_the_flags_module():
    assert (completion.DONE, completion.FAILED, completion.CANCELLED) == \
        (flags.DONE, flags.FAILED, flags.CANCELLED)
