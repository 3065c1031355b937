"""``execution: remote`` on a LocalCluster: the seed example, what travels, caching, nesting."""

from __future__ import annotations

import os

import numpy as np
import pytest

from seamless.errors import TransformationError
from seamless.transformer import delayed, parallel

from .conftest import worker_pids


@delayed
def compute(x):
    import os
    import time

    time.sleep(0.1)
    return x * 2, os.getpid()


def test_seed_example_runs_on_the_workers(remote):
    """The spawn example of the seed, unchanged but for the setting: 20 handles started, then
    collected; every body ran in a worker process, none in the client."""
    handles = [compute(i) for i in range(20)]
    for h in handles:
        h.start()
    results = [h.run() for h in handles]
    assert [r[0] for r in results] == [2 * i for i in range(20)]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids
    assert pids <= worker_pids(remote)


@delayed
def logged(path, x):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x + 1


def test_a_cache_hit_submits_nothing(remote, tmp_path):
    log = str(tmp_path / "runs.log")
    assert logged(log, 1).run() == 2
    again = logged(log, 1)
    assert again.run() == 2
    assert again.cached
    with open(log) as f:
        assert f.read().split() == ["1"]


@delayed
def double(a):
    return a * 2


def test_a_100MB_array_in_chained_and_out(remote):
    """In (scattered once), into a second task through Dask (the first result never reaches
    the client: its handle's buffer is still on the cluster), and out."""
    a = np.arange(100 * 2**20 // 8, dtype=np.float64)
    first = double(a)
    second = double(first)
    checksum = second.compute()
    assert checksum is not None and second.status == "done"
    buffer = first._outcome.result.buffer
    assert getattr(buffer, "_seamless_remote", False) and not buffer.fetched(), \
        "the intermediate result was fetched by the client"
    out = second.run()
    assert out.shape == a.shape and out[-1] == a[-1] * 4 and out[12345] == 12345 * 4


def test_compute_moves_no_result_bytes(remote):
    a = np.ones(2 * 2**20 // 8)
    handle = double(a)
    handle.compute()
    buffer = handle._outcome.result.buffer
    assert getattr(buffer, "_seamless_remote", False) and not buffer.fetched()
    assert handle.result_checksum == handle._outcome.result.checksum
    assert handle.run().sum() == 2 * a.size
    assert buffer.fetched()


@delayed
def fail_on(x):
    if x == 2:
        raise ValueError(f"no {x}")
    return x


def test_failure_carries_the_remote_traceback(remote):
    with pytest.raises(ValueError) as info:
        fail_on(2).run()
    err = info.value
    assert isinstance(err, TransformationError)
    assert "ValueError: no 2" in err.traceback and "raise ValueError" in err.traceback
    assert err.checksum == fail_on(2).checksum


def test_failures_in_a_batch_stay_in_place(remote):
    items = list(parallel([fail_on(i) for i in range(5)]))
    assert [h.status for h in items] == ["done", "done", "failed", "done", "done"]
    assert [h.value for h in items if h.status == "done"] == [0, 1, 3, 4]
    assert "ValueError: no 2" in items[2].exception


def test_erred_keys_are_released(remote):
    with pytest.raises(ValueError):
        fail_on(2).run()
    key = f"seamless-tf-{fail_on(2).checksum}"

    def scheduler_keys(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks]

    import time

    deadline = time.monotonic() + 30  # hang detector: released within moments
    while key in remote.run_on_scheduler(scheduler_keys):
        assert time.monotonic() < deadline, f"{key} still on the scheduler"
        time.sleep(0.05)


@delayed
def outer(n):
    from seamless.transformer import delayed, parallel

    @delayed
    def inner(i):
        return i * i

    children = [inner(i) for i in range(n)]
    return sum(h.value for h in parallel(children))


def test_nested_transformations_do_not_deadlock(remote):
    """Two outer bodies occupy both one-thread workers and wait for their children."""
    drivers = [outer(n).start() for n in (3, 4)]
    assert [d.run(timeout=60) for d in drivers] == [5, 14]


def test_default_nparallel_is_the_cluster_threads(remote):
    from seamless import batches

    assert batches._nparallel(None)[0] == sum(remote.nthreads().values())


def _helper(v):
    return v * 10


@delayed
def uses_globals(x):
    # names that only .globals and .modules provide, on the worker
    return localmod_dask.twice(_helper(x) + offset) + math.floor(0.5)  # noqa: F821


def test_globals_and_modules_travel_as_data(remote, tmp_path, monkeypatch):
    """A helper by source, a value, a standard module by name and a local module embedded by
    source: all reach the worker, which has the local module nowhere on its path."""
    import math

    (tmp_path / "localmod_dask.py").write_text("def twice(v):\n    return 2 * v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import localmod_dask

    uses_globals.globals._helper = _helper
    uses_globals.globals.offset = 1
    uses_globals.modules.math = math
    uses_globals.modules.localmod_dask = localmod_dask
    assert uses_globals(2).run() == 42


def test_task_awaits_in_the_event_loop(remote):
    import asyncio

    async def main():
        return await asyncio.gather(compute(100).task(), compute(101).task())

    assert [value for value, _pid in asyncio.run(main())] == [200, 202]

