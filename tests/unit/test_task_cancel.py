"""Cancelling the asyncio task of ``.task()`` cancels the handle (asyncio's convention)."""

from __future__ import annotations

import asyncio

import pytest

from seamless.errors import TransformationCancelledError
from seamless.transformer import delayed


@delayed
def wait_for_file(path):
    import os
    import time

    for _ in range(6000):
        if os.path.exists(path):
            return "released"
        time.sleep(0.01)
    return "gave up"


def test_cancelling_the_task_cancels_the_handle(tmp_path):
    h = wait_for_file(str(tmp_path / "gate"))

    async def main():
        task = h.task()
        await asyncio.sleep(0)  # the task is waiting on the handle now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert h.status == "cancelled"
    with pytest.raises(TransformationCancelledError):
        h.run()
    (tmp_path / "gate").touch()


def test_a_task_cancelled_before_it_ran_cancels_the_handle(tmp_path):
    h = wait_for_file(str(tmp_path / "gate"))

    async def main():
        task = h.task()
        task.cancel()  # before its first step: the coroutine never starts
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert h.status == "cancelled"
    (tmp_path / "gate").touch()


def test_a_finished_handle_is_not_touched_by_its_task(tmp_path):
    (tmp_path / "gate").touch()
    h = wait_for_file(str(tmp_path / "gate"))

    async def main():
        return await h.task()

    assert asyncio.run(main()) == "released"
    assert h.status == "done"
