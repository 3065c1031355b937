"""The worker pool for real: spawn(), transport both ways, crashes, cancel, nesting, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import seamless
import seamless._ipc as ipc
from seamless.errors import (
    SeamlessError,
    SharedMemoryError,
    TransformationCancelledError,
    TransformationError,
    WorkerCrashedError,
)
from seamless.transformer import delayed, has_spawned, spawn

pytestmark = pytest.mark.integration


@delayed
def where(x):
    import os

    return [os.getpid(), x]


@delayed
def double(a):
    return a * 2


@delayed
def ident(a):
    return a


def test_spawn_runs_in_other_processes():
    spawn(2)
    assert has_spawned()
    results = [where(i).start() for i in range(6)]
    pids = {h.run()[0] for h in results}
    assert os.getpid() not in pids
    assert [h.value[1] for h in results] == list(range(6))
    assert len(pids) <= 2


def test_spawn_arguments_and_second_call():
    with pytest.raises(ValueError, match=r"^spawn\(\) needs a positive integer number of "
                                         r"workers, got 0; use spawn\(\) for the default"):
        spawn(0)
    with pytest.raises(ValueError, match="got -1"):
        spawn(-1)
    with pytest.raises(TypeError, match="got '4'"):
        spawn("4")
    assert not has_spawned()
    spawn(1)
    with pytest.raises(RuntimeError, match=r"spawn\(\) was already called: a pool of 1 "
                                           r"workers is active"):
        spawn(2)
    assert where(1).run()[1] == 1  # the pool keeps working
    seamless.close()
    assert not has_spawned()
    spawn(1)
    assert where(2).run()[1] == 2


def test_large_arrays_travel_both_ways_read_only():
    spawn(2)

    @delayed
    def inspect_input(a):
        try:
            a[0] = 1
            writable = True
        except ValueError:
            writable = False
        return [writable, float(a.sum())]

    a = np.arange(1_000_000, dtype=float)  # 8 MB: through a segment
    assert inspect_input(a).run() == [False, float(a.sum())]
    r = double(a).run()
    np.testing.assert_array_equal(r, a * 2)
    assert r.flags.writeable is False
    with pytest.raises(ValueError):
        r.setflags(write=True)


def test_chaining_a_result_copies_and_hashes_nothing():
    spawn(1)
    r = double(np.ones(2_000_000)).run()  # 16 MB result in a segment
    copied, hashed = ipc.bytes_copied(), ipc.bytes_hashed()
    h = ident(r)
    assert (ipc.bytes_copied(), ipc.bytes_hashed()) == (copied, hashed)
    out = h.run()
    assert np.shares_memory(out, r)  # the result is the input, sent back by reference
    assert float(out.sum()) == 4_000_000.0


def test_a_view_travels_as_its_own_elements():
    spawn(1)
    big = np.zeros((4000, 1000))
    view = big[:800:4]  # 200 rows of 8 KB, non-contiguous: 1.6 MB travels, not 32 MB
    before = ipc.bytes_copied()
    assert ident(view).run().shape == (200, 1000)
    assert ipc.bytes_copied() - before == view.nbytes


def test_empty_and_zero_d_arrays():
    spawn(1)
    assert ident(np.zeros(0)).run().shape == (0,)
    zero_d = ident(np.array(3.5)).run()
    assert zero_d.shape == () and float(zero_d) == 3.5


# ---------------------------------------------------------------- the crash table


@delayed
def crash_os_exit(x):
    import os

    os._exit(3)


@delayed
def crash_segfault(x):
    import ctypes

    ctypes.string_at(0)


@delayed
def crash_sigkill(x):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@delayed
def raises_unpicklable(x):
    import threading

    class Weird(Exception):
        def __init__(self):
            super().__init__("cannot pickle me")
            self.lock = threading.Lock()

    raise Weird()


@delayed
def calls_sys_exit(x):
    import sys

    sys.exit(4)


@delayed
def returns_lock(x):
    import threading

    return threading.Lock()


@pytest.mark.parametrize("func, error, pattern", [
    (crash_os_exit, WorkerCrashedError, r"exited with code 3 while running it; the code called "
                                        r"os._exit\(\) or a library ended the process; the "
                                        r"worker was replaced"),
    (crash_segfault, WorkerCrashedError, r"killed by signal 11 \(SIGSEGV\) while running it; a "
                                         r"crash in compiled code"),
    (crash_sigkill, WorkerCrashedError, r"killed by signal 9 \(SIGKILL\) while running it; "
                                        r"killed from outside"),
    (raises_unpicklable, TransformationError, r"failed with .*Weird: cannot pickle me"),
    (calls_sys_exit, TransformationError, r"failed with SystemExit: 4"),
    (returns_lock, TransformationError, r"result of returns_lock has unsupported type "
                                        r"_thread.lock"),
])
def test_crash_table(func, error, pattern):
    spawn(2)
    h = func(1)
    with pytest.raises(error, match=pattern) as info:
        h.run()
    if error is WorkerCrashedError:
        assert info.value.pid is not None
        assert str(info.value).startswith(f"transformation {func.__name__} (")
    else:
        assert not isinstance(info.value, WorkerCrashedError)
    # only that transformation failed: the pool goes on
    assert [where(i).run()[1] for i in range(4)] == [0, 1, 2, 3]


def test_segfault_text_has_the_faulthandler_traceback():
    spawn(1)
    h = crash_segfault(2)
    assert h.compute() is None
    assert "Fatal Python error: Segmentation fault" in h.exception


def test_repeated_crashes_never_exhaust_the_pool():
    spawn(2)
    for i in range(6):
        with pytest.raises(WorkerCrashedError):
            crash_os_exit(100 + i).run()
    assert where(7).run()[1] == 7


def test_staged_work_survives_a_crash():
    spawn(1)
    crash = crash_os_exit(50).start()
    after = [where(i).start() for i in range(5)]
    with pytest.raises(WorkerCrashedError):
        crash.run()
    assert [h.run()[1] for h in after] == list(range(5))


def test_cancel_running_kills_and_replaces_the_worker(tmp_path):
    spawn(1)

    @delayed
    def forever(x):
        import time

        while True:
            time.sleep(0.05)

    h = forever(1).start()
    time.sleep(0.5)
    assert h.cancel() is True
    assert h.status == "cancelled"
    with pytest.raises(TransformationCancelledError):
        h.run()
    assert where(3).run()[1] == 3


def test_shared_memory_failure_names_the_size():
    spawn(1)
    ipc.shm_array._fail_next_create(OSError(27, "File too large"))
    with pytest.raises(SharedMemoryError) as info:
        double(np.ones(500_000))
    assert info.value.size is not None and info.value.size >= 4_000_000
    assert "argument 'a' of double" in str(info.value)
    assert double(np.ones(10)).run().sum() == 20.0  # pool unaffected


def test_malformed_frame_from_a_worker():
    spawn(1)

    @delayed
    def scribble(x):
        import os
        import socket

        s = socket.socket(fileno=os.dup(int(os.environ["SEAMLESS_WORKER_FD"])))
        s.sendall(b"\xff\xff\xff\xff garbage that is not a frame")
        import time

        time.sleep(5)

    with pytest.raises(WorkerCrashedError) as info:
        scribble(1).run()
    assert isinstance(info.value.__cause__, SeamlessError)
    assert "malformed" in str(info.value)
    assert where(1).run()[1] == 1


# ---------------------------------------------------------------- nesting


@delayed
def driver(n):
    from seamless.transformer import delayed

    @delayed
    def square(i):
        return i * i

    tfs = [square(i).start() for i in range(n)]
    return sum(tf.run() for tf in tfs)


@pytest.mark.parametrize("workers", [1, 2])
def test_nested_transformations_never_deadlock(workers):
    spawn(workers)
    drivers = [driver(n).start() for n in (5, 6, 7)]
    assert [d.run() for d in drivers] == [sum(i * i for i in range(n)) for n in (5, 6, 7)]


# ---------------------------------------------------------------- whole programs


def run_script(tmp_path, body: str, timeout=120, **kw):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout, **kw)


def test_unguarded_script_runs_once(tmp_path):
    out = run_script(tmp_path, """
        import os
        from seamless.transformer import delayed, spawn
        with open("runs.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        spawn(2)

        @delayed
        def f(x):
            return x + 1

        print([f(i).run() for i in range(4)])
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3, 4]"
    assert len((tmp_path / "runs.log").read_text().split()) == 1


def test_execution_spawn_from_yaml(tmp_path):
    (tmp_path / "seamless.yaml").write_text("- execution: spawn\n- workers: 2\n")
    out = run_script(tmp_path, """
        import os
        from seamless.transformer import delayed, has_spawned

        @delayed
        def pid(x):
            import os
            return os.getpid()

        print(pid(1).run() != os.getpid(), has_spawned())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True"


def test_interpreter_exit_with_jobs_running(tmp_path):
    out = run_script(tmp_path, """
        import os
        from seamless.transformer import delayed, spawn
        spawn(2)

        @delayed
        def sleepy(x):
            import time
            time.sleep(60)

        @delayed
        def pid(x):
            import os
            return os.getpid()

        print(" ".join(str(pid(i).run()) for i in range(2)), flush=True)
        handles = [sleepy(i).start() for i in range(5)]
    """, timeout=30)
    assert out.returncode == 0, out.stderr
    for pid in map(int, out.stdout.split()):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_parent_killed_takes_the_workers_along(tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        from seamless.transformer import delayed, spawn
        spawn(2)

        @delayed
        def sleepy(x):
            import os, time
            os.write(1, f"{os.getpid()}\\n".encode())  # one write: the lines cannot interleave
            time.sleep(60)

        handles = [sleepy(i).start() for i in range(2)]
        handles[0].run()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        pids = [int(proc.stdout.readline()) for _ in range(2)]
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") and not _is_zombie(p) for p in pids) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(not os.path.exists(f"/proc/{p}") or _is_zombie(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_ctrl_c_while_jobs_run(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent("""
        from seamless.transformer import delayed, spawn
        spawn(2)

        @delayed
        def sleepy(x):
            import time
            time.sleep(60)
            return x

        handles = [sleepy(i).start() for i in range(20)]
        print("started", flush=True)
        try:
            [h.run() for h in handles]
        except KeyboardInterrupt:
            print("interrupted", handles[0].status, flush=True)
            raise
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert "interrupted cancelled" in out, err
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_seed_example_on_spawn_4(tmp_path):
    out = run_script(tmp_path, """
        import time
        from seamless.transformer import delayed, spawn
        spawn(4)

        @delayed
        def compute(x):
            import time
            start = time.time()
            time.sleep(0.5)  # long enough that all 4 workers are up while jobs remain
            return [x * 2, start, time.time()]

        handles = [compute(i) for i in range(20)]
        for h in handles:
            h.start()
        print(json.dumps([h.run() for h in handles]))
    """.replace("import time\n", "import json, time\n", 1))
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r[0] for r in results] == [2 * i for i in range(20)]
    # concurrency bound, from timestamps taken inside the jobs: never more than 4 at once,
    # and 4 reached
    events = sorted([(r[1], 1) for r in results] + [(r[2], -1) for r in results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 4


def test_many_tiny_tasks_none_lost():
    """Staging and revoking under load: every one of many tiny tasks completes.

    (A ``revoked`` reply can overtake the result before it; this once lost a job.)"""
    spawn(2)

    @delayed
    def inc(x):
        return x + 1

    for r in range(3):
        start = 10 ** 9 + r * 5000
        handles = [inc(start + i).start() for i in range(5000)]
        assert [h.run() for h in handles] == [start + i + 1 for i in range(5000)]


def test_deferred_result_checksum_is_the_content_checksum(tmp_path):
    """A large result is handed over before the worker hashes it; the checksum that follows
    is the checksum of its canonical bytes, and the cache entry is written with it."""
    from seamless.encoding import encode

    seamless.config.init(cache=str(tmp_path / "cache"))
    spawn(1)
    a = np.arange(300_000, dtype=float)
    h = double(a)
    r = h.run()
    assert h.result_checksum == encode(a * 2).checksum
    assert ident(r).checksum == ident(a * 2).checksum
    seamless.close()  # flushes the cache write that waited for the checksum
    store = seamless.cache.persistent()
    assert store.lookup(h.checksum) == ("array", h.result_checksum)


def test_three_failed_starts_break_the_pool_with_the_stderr_tail(tmp_path, monkeypatch):
    """Workers that die before saying hello: after three in a row the pool reports it, and
    waiting transformations fail with the workers' stderr instead of hanging."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('SEAMLESS_WORKER_FD'):\n"
        "    sys.stderr.write('worker start sabotaged by the test\\n')\n"
        "    sys.exit(1)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    spawn(1)
    with pytest.raises(WorkerCrashedError) as info:
        where(1).run()
    assert "could not start workers (3 failed starts in a row)" in str(info.value)
    assert isinstance(info.value.__cause__, SeamlessError)
    assert "worker start sabotaged by the test" in str(info.value.__cause__)
    with pytest.raises(WorkerCrashedError, match="the worker pool is broken"):
        where(2).run()  # later work fails at once too: nothing hangs


def test_config_init_inside_a_worker_does_nothing(tmp_path):
    spawn(1)

    @delayed
    def try_init(path):
        import seamless.config

        before = seamless.config.get("workers")
        seamless.config.init(cache=path, workers=before + 7)
        return [seamless.config.get("workers") == before, seamless.config.get("cache")]

    assert try_init(str(tmp_path / "worker-cache")).run() == [True, None]
    assert not (tmp_path / "worker-cache").exists()  # the parent owns the cache


@delayed
def wait_for_path(path, x):
    """Block until ``path`` exists (the test creates it), at most 120 s."""
    import os
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


def _warm_tiny(n=400):
    """Run tiny tasks so the pool learns that bodies are short and stages deeper."""
    handles = [where(10 ** 6 + i).start() for i in range(n)]
    for h in handles:
        h.run()


def test_deep_staging_requeues_everything_when_a_worker_crashes():
    spawn(1)
    _warm_tiny()
    crash = crash_os_exit(51).start()
    after = [where(i).start() for i in range(200)]
    with pytest.raises(WorkerCrashedError):
        crash.run()
    assert [h.run()[1] for h in after] == list(range(200))


def test_code_is_sent_again_to_a_replacement_worker():
    """Code crosses a channel once per worker process; a replacement gets it afresh."""
    spawn(1)
    first_pid = where(1).run()[0]
    with pytest.raises(WorkerCrashedError):
        crash_os_exit(52).run()
    pid, x = where(2).run()
    assert (x, pid != first_pid) == (2, True)


def test_a_tiny_result_is_not_held_back_behind_a_long_task(tmp_path):
    """Results are batched while more work waits, but never wait for the next body."""
    spawn(1)
    release = tmp_path / "release"
    tiny = where(3).start()
    long = wait_for_path(str(release), 4).start()
    assert tiny.run()[1] == 3
    assert long.status == "running"
    release.touch()
    assert long.run() == 4


def test_staged_tiny_tasks_move_to_a_worker_that_falls_idle(tmp_path):
    """With deep staging, an idle worker takes over the staged work of a busy one: all the
    tiny tasks finish while the long one still blocks its worker."""
    spawn(2)
    _warm_tiny()
    release = tmp_path / "release"
    long = wait_for_path(str(release), 5).start()
    tiny = [where(i).start() for i in range(300)]
    assert [h.run()[1] for h in tiny] == list(range(300))
    assert long.status == "running"
    release.touch()
    assert long.run() == 5


@delayed
def worker_free_list(_nonce):
    import seamless._ipc

    return [cap for cap, _ in seamless._ipc.shm_array.free_list()]


@delayed
def ones(n, _nonce):
    import numpy as np

    return np.ones(n)


def test_a_dropped_result_goes_back_to_its_worker_and_is_reused():
    """The segment of a dropped result returns to the worker that made it (``recycle``) and
    serves that worker's next large result; ``trim()`` empties the worker's list."""
    import gc

    spawn(1)
    handle = ones(2_000_000, 1)
    first = handle.run()  # 16 MB, born in a worker segment
    handle.result_checksum  # noqa: B018 - until the worker's hash arrives, the pool holds it
    del handle
    first_id = ipc.shm_array.segment_id(first)
    assert first_id is not None and worker_free_list(1).run() == []
    del first
    gc.collect()
    for attempt in range(50):  # the recycle frame is asynchronous
        kept = worker_free_list(100 + attempt).run()
        if kept:
            break
        time.sleep(0.05)
    assert len(kept) == 1 and kept[0] >= 16_000_000
    handle = ones(2_000_000, 2)
    second = handle.run()
    assert ipc.shm_array.segment_id(second) == first_id, "the same segment served it again"
    handle.result_checksum  # noqa: B018 - until the worker's hash arrives, the pool holds it
    del second, handle
    gc.collect()
    ipc.trim()
    for attempt in range(50):
        if worker_free_list(200 + attempt).run() == []:
            break
        time.sleep(0.05)
    assert worker_free_list(300).run() == []


def test_a_result_born_in_a_segment_travels_without_a_copy():
    """``np.ones`` in a worker is born in shared memory and sent in place; a result the body
    still references elsewhere is copied once (it could change after it is shared), and the
    worker's copy is counted in this process's ``bytes_copied()``."""

    @delayed
    def keeps_a_reference(n):
        import builtins

        import numpy as np

        out = np.ones(n)
        builtins._seamless_test_kept = out
        return out

    spawn(1)
    ipc.reset_counters()
    r = ones(2_000_000, 3).run()
    assert r.sum() == 2_000_000.0 and not r.flags.writeable
    # The pure-Python twin has no numpy allocator: there the result is copied once.
    assert ipc.bytes_copied() == (0 if ipc.BACKEND == "cython" else r.nbytes)
    ipc.reset_counters()
    r2 = keeps_a_reference(2_000_000).run()
    assert r2.sum() == 2_000_000.0
    assert ipc.bytes_copied() == r2.nbytes


def test_a_result_the_worker_cannot_place_fails_that_transformation_only():
    """No shared memory for a result: that transformation fails naming the size; the pool
    goes on (docs/design/worker-pool.md, "What travels how")."""

    @delayed
    def no_room(n):
        import numpy as np

        import seamless._ipc

        seamless._ipc.shm_array._fail_next_create(count=4)
        return np.ones(n)[::2]  # a view: copied into a segment, which cannot be made

    spawn(1)
    with pytest.raises(TransformationError) as info:
        no_room(1_000_000).run()
    assert "SharedMemoryError" in str(info.value) and "3.8 MiB" in str(info.value)
    assert double(np.ones(10)).run().sum() == 20.0


def test_pool_start_raises_the_soft_descriptor_limit_to_the_hard_one():
    """Segments are descriptors: the pool may hold many at once
    (docs/design/worker-pool.md, "Processes and threads")."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        if hard <= 256:
            pytest.skip(f"soft and hard RLIMIT_NOFILE are both {hard}: nothing to raise")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        spawn(1)
        assert where(1).run()[1] == 1
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_cancelling_a_staged_transformation_stops_it(tmp_path):
    """A cancelled submission staged behind a running one is revoked, never run."""
    gate = tmp_path / "gate"

    @delayed
    def blocked(path, x):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return x

    @delayed
    def mark(path, x):
        open(path, "w").close()
        return x

    spawn(1)
    first = blocked(str(gate), 1).start()
    staged = mark(str(tmp_path / "ran"), 2).start()
    time.sleep(0.5)  # let the parent stage it on the busy worker
    assert staged.cancel()
    gate.touch()
    assert first.run() == 1
    assert where(3).run()[1] == 3  # the worker went on past where the staged one was
    assert not (tmp_path / "ran").exists()
    assert staged.status == "cancelled"


def test_a_crash_blames_only_the_body_that_was_running():
    """Results of finished tiny tasks may wait in the worker's outbox when it dies: the parent
    reads them from the shared outbox (never run again, never failed); only the crashing body
    fails, and the staged ones after it are requeued."""
    spawn(1)
    _warm_tiny()
    before = [where(500 + i).start() for i in range(30)]
    crash = crash_os_exit(53).start()
    after = [where(600 + i).start() for i in range(30)]
    with pytest.raises(WorkerCrashedError):
        crash.run()
    assert [h.run()[1] for h in before] == list(range(500, 530))
    assert [h.run()[1] for h in after] == list(range(600, 630))


_HEAD_OF_LINE = r"""
import json, sys, time
import seamless
from seamless.transformer import delayed, spawn

@delayed
def job(log, i, seconds):
    import time
    with open(log, "a") as f:
        f.write(f"{time.monotonic()} {i}\n")
    time.sleep(seconds)
    return i

@delayed
def tiny(x):
    return x

log, warm = sys.argv[1], sys.argv[2] == "warm"
spawn(2)
if warm:  # the pool learns that bodies are tiny and stages deeply
    for h in [tiny(i).start() for i in range(400)]:
        h.run()
durations = [0.8, 0.6, 0.15, 0.15, 0.15, 0.15]
handles = [job(log, i, s).start() for i, s in enumerate(durations)]
print(json.dumps([h.run() for h in handles]))
seamless.close()
"""


@pytest.mark.parametrize("warm", ["cold", "warm"])
def test_jobs_start_in_submission_order_with_no_head_of_line_blocking(tmp_path, warm):
    """Two long jobs, then four short ones, on spawn(2): nothing is staged behind a long body,
    so the bodies start in submission order (the landed pool started job 1 last, behind job
    0, while newer jobs ran).  Jobs 0 and 1 go to the two workers at once, so either may
    start first; the durations space every later start by at least 50 ms.  Run in a child
    interpreter: a hang fails the test."""
    log = tmp_path / "starts"
    script = tmp_path / "head_of_line.py"
    script.write_text(_HEAD_OF_LINE)
    out = subprocess.run([sys.executable, str(script), str(log), warm],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == list(range(6))
    starts = sorted((float(t), int(i)) for t, i in
                    (line.split() for line in log.read_text().splitlines()))
    order = [i for _, i in starts]
    assert sorted(order[:2]) == [0, 1] and order[2:] == [2, 3, 4, 5], \
        f"each body started once, in submission order; saw {order}"
