"""On the worker pool, cancelling the asyncio task of ``.task()`` stops the body: its worker
is stopped and replaced, and the pool goes on."""

from __future__ import annotations

import asyncio
import time

from seamless.transformer import delayed, spawn


@delayed
def sleeper(pidfile):
    import os
    import time

    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return "woke"


@delayed
def inc(x):
    return x + 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cancelling_the_task_stops_the_worker(tmp_path):
    spawn(1)
    pidfile = tmp_path / "pid"
    h = sleeper(str(pidfile))

    async def main():
        task = h.task()
        for _ in range(3000):  # the body has started once it wrote its pid
            if pidfile.exists() and pidfile.read_text():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled"
    assert h.status == "cancelled"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the worker running the cancelled body was not stopped"
    assert inc(1).run(timeout=60) == 2
