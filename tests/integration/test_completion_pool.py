"""Completion words with the worker pool: a 10,000-handle fan-out awaited with asyncio.gather
on a few descriptors (never one per handle), and cancel of handles queued behind a running one."""

from __future__ import annotations

import asyncio
import collections
import os

import pytest
from leaks import fd_links

from seamless import completion
from seamless.errors import TransformationCancelledError
from seamless.transformer import delayed, spawn

pytestmark = pytest.mark.integration


@delayed
def inc(x):
    return x + 1


@delayed
def logged_wait(log, gate, n):
    """Appends ``n`` to ``log``, then runs until ``gate`` exists."""
    import os
    import time

    with open(log, "a") as f:
        f.write(f"{n}\n")
    while not os.path.exists(gate):
        time.sleep(0.005)
    return n


def kinds(links: dict) -> collections.Counter:
    return collections.Counter(link.split(":")[0] if not link.startswith("anon_inode:")
                               else link for link in links.values())


def test_fan_out_of_10000_tasks_on_a_few_fd_links():
    workers = 2
    before = fd_links()
    spawn(workers)
    assert inc(0).run() == 1  # the workers are up
    peak = {}

    async def sample(stop):
        while not stop.is_set():
            now = fd_links()
            if len(now) > len(peak):
                peak.clear()
                peak.update(now)
            await asyncio.sleep(0.002)

    async def main():
        handles = [inc(i) for i in range(1, 10_001)]
        waiting = asyncio.gather(*(h.task() for h in handles))
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        values = await waiting
        stop.set()
        await sampler
        return handles, values

    handles, values = asyncio.run(main())
    assert values == list(range(2, 10_002))
    slabs = len({id(h._slab) for h in handles})
    assert slabs == 3
    new = {fd: link for fd, link in peak.items() if before.get(fd) != link}
    # Per worker: channel, pidfd, stderr pipe, the memfd naming its running body; the pool's
    # eventfd and epoll; the loop's epoll and self-pipe; one eventfd per slab; no segment for
    # inline arguments.
    assert len(new) <= 4 * workers + 2 + 3 + slabs, kinds(new)
    assert kinds(new)["anon_inode:[eventfd]"] <= 1 + slabs, kinds(new)
    assert completion._slabs._watches == {}


def test_cancel_handles_queued_behind_a_running_one(tmp_path):
    spawn(1)
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    running = logged_wait(log, gate, 0).start()
    queued = [logged_wait(log, gate, n).start() for n in range(1, 6)]
    while not os.path.exists(log):  # the first one runs on the only worker
        pass
    # 1 (perhaps 2) may be staged on the worker; 3 and 5 wait in the parent's queue.
    assert all(h.cancel() for h in queued[2::2])
    assert all(h.status == "cancelled" for h in queued[2::2])

    async def main():
        return await asyncio.gather(*(h.task() for h in queued), return_exceptions=True)

    with open(gate, "w"):
        pass
    outcomes = asyncio.run(main())
    for n, (h, outcome) in enumerate(zip(queued, outcomes), start=1):
        if n in (3, 5):
            assert isinstance(outcome, TransformationCancelledError)
            with pytest.raises(TransformationCancelledError):
                h.run()
        else:
            assert outcome == n and h.status == "done"
    assert running.run() == 0
    with open(log) as f:
        assert sorted(int(line) for line in f) == [0, 1, 2, 4]  # cancelled ones never ran
