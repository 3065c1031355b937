"""How failures surface on the cluster: crashes, and a scheduler that is not there."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from daskcluster import own_cluster

import seamless.config
from seamless.errors import WorkerCrashedError
from seamless.transformer import delayed, parallel


@delayed
def fragile(x):
    import os

    if x == 1:
        raise ValueError("bad one")
    if x == 2:
        os._exit(3)  # the worker process dies mid-task
    return x * 10


def test_a_failing_and_a_crashing_item_in_a_batch():
    """The crash kills a worker of a cluster of its own (allowed-failures 0: no retry); the
    batch goes on, in order, each failure in its place."""
    with own_cluster(**{"distributed.scheduler.allowed-failures": 0}) as client:
        seamless.config.init(dask_client=client)
        items = list(parallel([fragile(i) for i in range(5)], nparallel=2))
        assert [h.status for h in items] == ["done", "failed", "failed", "done", "done"]
        assert [items[i].value for i in (0, 3, 4)] == [0, 30, 40]
        assert "ValueError: bad one" in items[1].exception
        try:
            items[2].value
        except WorkerCrashedError as err:
            message = str(err)
        else:
            raise AssertionError("the crash did not raise WorkerCrashedError")
        assert "transformation fragile" in message
        assert "allowed-failures is 0" in message and "tried on 1 worker" in message
        assert "tcp://127.0.0.1:" in message  # the worker's address
        seamless.close()


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_fails_within_the_connect_timeout(tmp_path):
    """A loopback port with nothing listening, a 2 s connect timeout: a clear error, no hang
    (the child process has a hard deadline)."""
    address = f"tcp://127.0.0.1:{_closed_loopback_port()}"
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(f"""
        import time
        import dask
        import seamless.config
        from seamless.errors import SeamlessError
        from seamless.transformer import delayed

        @delayed
        def f(x):
            return x

        dask.config.set({{"distributed.comm.timeouts.connect": "2s"}})
        seamless.config.init(execution="remote", scheduler={address!r})
        t0 = time.monotonic()
        try:
            f(1).run()
        except SeamlessError as exc:
            print("ERROR", type(exc).__name__, exc)
        print("ELAPSED", time.monotonic() - t0)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"cannot reach the Dask scheduler at {address} within 2 s" in out.stdout, out.stdout
    elapsed = float(out.stdout.split("ELAPSED")[1])
    assert elapsed < 60, f"took {elapsed:.1f} s for a 2 s connect timeout"  # hang detector


@delayed
def hog(megabytes):
    import time

    import numpy as np

    block = np.ones(megabytes * 2**20 // 8)  # touched: resident
    time.sleep(30)  # the nanny kills the worker long before this ends
    return float(block.sum())


def test_a_worker_killed_for_memory_names_the_nanny_report():
    settings = {"distributed.scheduler.allowed-failures": 0,
                "distributed.worker.memory.monitor-interval": "50ms"}
    with own_cluster(memory_limit="300MB", **settings) as client:
        seamless.config.init(dask_client=client)
        handle = hog(600)
        try:
            handle.run(timeout=60)
        except WorkerCrashedError as err:
            message = str(err)
        else:
            raise AssertionError("the memory hog did not fail")
        assert "its nanny restarted it because its memory" in message, message
        assert "distributed.worker.memory.terminate" in message
        seamless.close()


def test_a_worker_with_another_seamless_version_is_refused(monkeypatch):
    """The client pretends to be another version: every worker is then a mismatch, named."""
    from seamless.errors import ConfigurationError

    with own_cluster() as client:
        monkeypatch.setattr(seamless, "__version__", "0.0.0-test")
        seamless.config.init(dask_client=client)
        try:
            fragile(0).run(timeout=60)
        except ConfigurationError as err:
            message = str(err)
        else:
            raise AssertionError("the version mismatch was not refused")
        assert "runs seamless" in message and "the client 0.0.0-test" in message
        assert "Dask worker tcp://127.0.0.1:" in message
        seamless.close()


@delayed
def sleeps(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_losing_the_scheduler_fails_the_work_in_flight():
    """The cluster goes away under a running task: the handle fails, naming the scheduler,
    once the client gave up reconnecting (2 s here); it does not wait for the task."""
    import time

    import dask

    from seamless.errors import TransformationError

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), own_cluster() as client:
        address = client.scheduler.address
        seamless.config.init(dask_client=client)
        handle = sleeps(30).start()

        def processing(dask_scheduler):
            return sum(len(ws.processing) for ws in dask_scheduler.workers.values())

        deadline = time.monotonic() + 60  # hang detector
        while client.run_on_scheduler(processing) == 0:
            assert handle.status == "running" and time.monotonic() < deadline
            time.sleep(0.05)
        client.cluster.close()
        try:
            handle.run(timeout=60)  # hang detector: the task itself would take 30 s
        except TimeoutError:
            raise AssertionError("the handle waited after the scheduler was gone") from None
        except TransformationError as err:
            assert address in str(err), str(err)
        else:
            raise AssertionError("the handle succeeded without its scheduler")
        seamless.close()
