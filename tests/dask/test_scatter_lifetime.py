"""How long a job's bytes stay on the cluster.  A scattered input (seamless/dask/ship.py): while
a job that needs it is in flight, not longer.  Two jobs in flight together share one scatter;
once both are done the scheduler forgets the key; a later job with the same input scatters it
again.  A large result: while a handle holds it, not until the next job completes."""

from __future__ import annotations

import gc
import time

import numpy as np

from seamless.encoding import checksum_of
from seamless.transformer import delayed

_RELEASE_DEADLINE_S = 10


@delayed
def sum_when_open(gate, a, tag):
    """Waits (bounded) until the test creates ``gate``, so the jobs are in flight together."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never created {gate}")
        time.sleep(0.01)
    return float(a.sum()) + tag


def _held_on_cluster(dask_scheduler, key):
    task = dask_scheduler.tasks.get(key)
    return task is not None and bool(task.who_has)


def _held(client, key) -> bool:
    return client.run_on_scheduler(_held_on_cluster, key=key)


def _wait_released(client, key) -> bool:
    deadline = time.monotonic() + _RELEASE_DEADLINE_S
    while _held(client, key):
        if time.monotonic() > deadline:
            return False
        gc.collect()
        time.sleep(0.05)
    return True


def _scatters_of(a, scattered) -> list:
    """The keys under which ``a`` was scattered (``seamless-buf-<checksum>-<n>``)."""
    prefix = f"seamless-buf-{checksum_of(a)}-"
    return [key for key in scattered if key.startswith(prefix)]


def _two_jobs_in_flight(gate, a) -> list:
    return [sum_when_open(gate, a, tag).start() for tag in (1, 2)]


def test_jobs_in_flight_together_share_one_scatter(remote, scattered, tmp_path):
    gate = str(tmp_path / "gate")
    a = np.ones(2 * 2**20 // 8)
    first, second = _two_jobs_in_flight(gate, a)
    try:
        assert first.checksum != second.checksum
        deadline = time.monotonic() + _RELEASE_DEADLINE_S
        while not scattered and time.monotonic() < deadline:  # start() ships on a thread
            time.sleep(0.01)
        [key] = _scatters_of(a, scattered)
        assert _held(remote, key), "the input is not on the cluster while its jobs run"
    finally:
        open(gate, "w").close()
    assert [first.run(), second.run()] == [a.sum() + 1, a.sum() + 2]
    assert _scatters_of(a, scattered) == scattered == [key]


def test_an_input_nobody_needs_is_released_and_scattered_again(remote, scattered, tmp_path):
    gate = str(tmp_path / "gate")
    open(gate, "w").close()
    a = np.full(2 * 2**20 // 8, 3.0)
    first, second = _two_jobs_in_flight(gate, a)
    assert [first.run(), second.run()] == [a.sum() + 1, a.sum() + 2]
    [key] = _scatters_of(a, scattered)
    del first, second
    assert _wait_released(remote, key), \
        f"{key} still held by a worker {_RELEASE_DEADLINE_S} s after its jobs finished"
    assert sum_when_open(gate, a, 3).run() == a.sum() + 3
    # Rescattered under a new key: a late release of the old one cannot drop it.
    assert len(set(_scatters_of(a, scattered))) == len(scattered) == 2


@delayed
def doubled(a):
    return a * 2


def test_a_large_result_leaves_the_cluster_with_its_last_handle(remote):
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    handle = doubled(a)
    assert handle.run()[-1] == a[-1] * 2
    key = f"seamless-tf-{handle.checksum}"
    assert _held(remote, key)
    del handle
    assert _wait_released(remote, key), \
        f"{key} still held by a worker {_RELEASE_DEADLINE_S} s after its last handle went"


def test_an_abandoned_jobs_input_is_released(remote, scattered, tmp_path):
    """The only handle of a running job is cancelled: so is the task, and its input leaves the
    cluster without waiting for the body (which the test then lets finish)."""
    gate = str(tmp_path / "gate")
    a = np.full(2 * 2**20 // 8, 5.0)
    handle = sum_when_open(gate, a, 4).start()
    try:
        deadline = time.monotonic() + _RELEASE_DEADLINE_S
        while not scattered and time.monotonic() < deadline:  # start() ships on a thread
            time.sleep(0.01)
        [key] = _scatters_of(a, scattered)
        assert handle.cancel()
        assert _wait_released(remote, key), \
            f"{key} still held by a worker {_RELEASE_DEADLINE_S} s after its job was cancelled"
    finally:
        open(gate, "w").close()
