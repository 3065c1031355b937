"""Faults a body can cause in a pool worker, and forks, for real: each body runs exactly once,
its error names the cause, and the pool goes on with the next transformation.

Every scenario runs in a fresh interpreter (``scenario``) in its own process group: a hang
fails the test after its timeout instead of hanging the run, and whatever the scenario
started (pool workers, forked children) is killed with it.  The scenario prints JSON last;
bodies count their runs in a marker file, one line per run.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from leaks import run_in_session

from seamless.pool.worker import EXIT_CHANNEL_LOST

pytestmark = pytest.mark.integration

_PRELUDE = '''
import json, os, sys
import seamless
from seamless.transformer import delayed, spawn

def runs(marker):
    """How many times a body ran: one line each in the marker file."""
    if not os.path.exists(marker):
        return 0
    with open(marker) as f:
        return len(f.read().splitlines())

def failure(call):
    """The exception ``call()`` raised, as JSON fields (its type, its message followed by its
    failure text, exit code)."""
    try:
        call()
    except Exception as exc:
        text = getattr(exc, "traceback", None)
        message = str(exc) if not text or text in str(exc) else str(exc) + chr(10) + text
        return {"type": type(exc).__name__, "message": message,
                "exitcode": getattr(exc, "exitcode", None)}
    return None

def report(**fields):
    print(json.dumps(fields), flush=True)

@delayed
def where(x):
    import os

    return [os.getpid(), x]

@delayed
def ones(n):
    import numpy as np

    return np.ones(n)
'''


def scenario(tmp_path, script: str, *args, timeout: float = 60) -> tuple:
    """Run ``script`` after ``_PRELUDE`` in a new interpreter and session; return (the JSON it
    printed last, its stderr).  A scenario that hangs, fails or leaves a process of its
    session behind fails the test; what it left is stopped in any case.  The script is a file
    (``delayed`` reads the source of the functions it wraps)."""
    path = tmp_path / "scenario.py"
    path.write_text(_PRELUDE + textwrap.dedent(script))
    # The scenario must reap its workers and forked children itself.
    proc, out, err, left = run_in_session([sys.executable, str(path), *map(str, args)],
                                          timeout, text=True)
    assert proc.returncode == 0, f"the scenario exited with {proc.returncode}:\n{err[-3000:]}"
    assert left == [], f"processes of the scenario outlived it: {left}"
    return json.loads(out.strip().splitlines()[-1]), err


def test_a_body_that_closes_every_descriptor(tmp_path):
    """The worker cannot answer without its channel: it exits with its own code at once, and
    only that body fails (the started word names it), never to run again."""
    data, _ = scenario(tmp_path, '''
        marker = sys.argv[1]

        @delayed
        def closes_all(marker):
            import os

            with open(marker, "a") as f:
                f.write("ran\\n")
            os.closerange(0, os.sysconf("SC_OPEN_MAX"))
            return 1

        spawn(1)
        where(0).run()
        error = failure(closes_all(marker).run)
        report(error=error, runs=runs(marker), next=where(1).run()[1])
    ''', tmp_path / "marker")
    assert data["error"]["type"] == "WorkerCrashedError", data
    assert data["error"]["exitcode"] == EXIT_CHANNEL_LOST
    assert (data["runs"], data["next"]) == (1, 1)


def test_a_body_that_puts_a_file_in_place_of_the_channel(tmp_path):
    """A descriptor number reused by the body is not the channel any more: the worker writes
    no frame into the body's file, says why on stderr and exits."""
    data, _ = scenario(tmp_path, '''
        marker, path = sys.argv[1], sys.argv[2]

        @delayed
        def takes_the_channel(marker, path):
            import os

            with open(marker, "a") as f:
                f.write("ran\\n")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT)
            os.dup2(fd, int(os.environ["SEAMLESS_WORKER_FD"]))
            os.close(fd)
            return 1

        spawn(1)
        where(0).run()
        error = failure(takes_the_channel(marker, path).run)
        report(error=error, runs=runs(marker), next=where(1).run()[1],
               written=os.path.getsize(path))
    ''', tmp_path / "marker", tmp_path / "file")
    error = data["error"]
    assert (error["type"], error["exitcode"]) == ("WorkerCrashedError", EXIT_CHANNEL_LOST)
    assert "its channel to the parent, was closed or replaced by the running transformation" \
        in error["message"]
    assert (data["runs"], data["next"], data["written"]) == (1, 1, 0)


@pytest.mark.parametrize("kind", ["array", "bytes"])
def test_a_result_with_no_room_for_its_segment(tmp_path, kind):
    """A body lowers RLIMIT_FSIZE, then returns 32 MB (a numpy array, or bytes, which are
    copied into a segment only when the result is packed): its error names the limit, and the
    same worker goes on, with large results too (the worker puts its limit back)."""
    data, _ = scenario(tmp_path, '''
        marker, kind = sys.argv[1], sys.argv[2]

        @delayed
        def no_room(marker, kind):
            import resource

            import numpy as np

            with open(marker, "a") as f:
                f.write("ran\\n")
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
            return np.ones(4_000_000) if kind == "array" else bytes(32_000_000)

        spawn(1)
        pid = where(0).run()[0]
        error = failure(no_room(marker, kind).run)
        report(error=error, runs=runs(marker), next=where(1).run(),
               large=float(ones(500_000).run().sum()), same_worker=where(2).run()[0] == pid)
    ''', tmp_path / "marker", kind)
    error = data["error"]
    assert error["type"] == "TransformationError[SharedMemoryError]", error
    assert "SharedMemoryError" in error["message"]
    assert "RLIMIT_FSIZE" in error["message"]
    assert data["runs"] == 1
    assert data["next"][1] == 1 and data["large"] == 500_000.0 and data["same_worker"]


def test_an_exception_message_above_the_frame_limit(tmp_path):
    """An 80 MB exception message fails that body with its head and tail and a note saying
    what was cut; the worker stays."""
    data, _ = scenario(tmp_path, '''
        marker = sys.argv[1]

        @delayed
        def shouts(marker):
            with open(marker, "a") as f:
                f.write("ran\\n")
            raise ValueError("HEAD" + "x" * 80_000_000 + "TAIL")

        spawn(1)
        pid = where(0).run()[0]
        error = failure(shouts(marker).run)
        report(error=error, runs=runs(marker), next=where(1).run(),
               same_worker=where(2).run()[0] == pid)
    ''', tmp_path / "marker")
    error = data["error"]
    message = error["message"]
    assert error["type"] == "TransformationError[ValueError]", error["type"]
    assert "failed with ValueError: HEADxxx" in message and message.endswith("xxxTAIL\n")
    assert ("the exception message is 80.0 MB; it was cut to the first and last 64 KiB, as its "
            "error frame would exceed the 64 MiB frame limit") in message
    assert len(message) < 1_000_000
    assert (data["runs"], data["next"][1], data["same_worker"]) == (1, 1, True)


@pytest.mark.parametrize("how, status", [("exit", 3), ("return", 0), ("raise", 1),
                                         ("nested", 42)])
def test_a_body_that_forks(tmp_path, how, status):
    """The forked child never answers in the worker's place: when it comes back into the
    worker's code it exits as a script would (SystemExit's code, 0, 1), and it cannot start
    transformations; the body that waits for it gets its exit status, once."""
    data, err = scenario(tmp_path, '''
        marker, how = sys.argv[1], sys.argv[2]

        @delayed
        def forks(marker, how):
            import os
            import sys

            with open(marker, "a") as f:
                f.write("ran\\n")
            pid = os.fork()
            if pid == 0:
                if how == "exit":
                    sys.exit(3)
                if how == "raise":
                    raise RuntimeError("raised in the forked child")
                if how == "nested":
                    from seamless.errors import SeamlessError
                    from seamless.transformer import delayed

                    @delayed
                    def inner():
                        return 1

                    try:
                        inner().run()
                    except SeamlessError as exc:
                        os._exit(42 if "forked" in str(exc) else 1)
                    os._exit(1)
                return "the child's value"
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        spawn(1)
        pid = where(0).run()[0]
        status = forks(marker, how).run()
        report(status=status, runs=runs(marker), next=where(1).run(),
               same_worker=where(2).run()[0] == pid)
    ''', tmp_path / "marker", how)
    assert (data["status"], data["runs"]) == (status, 1)
    assert (data["next"][1], data["same_worker"]) == (1, True)
    if how == "raise":
        assert "RuntimeError: raised in the forked child" in err


def test_run_in_a_forked_child_of_the_user_process(tmp_path):
    """After spawn(), a forked child of the user's process runs transformations on a pool of
    its own; the parent's pool is untouched."""
    data, _ = scenario(tmp_path, '''
        spawn(2)
        parent_workers = {where(i).run()[0] for i in range(4)}
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            child = {"value": where(41).run()}
            seamless.close()
            os.write(w, json.dumps(child).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child = json.loads(f.read())
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        after = where(7).run()
        parent_workers.add(after[0])
        report(child=child, status=status, after=after[1],
               fresh=child["value"][0] not in parent_workers)
    ''')
    assert data["child"]["value"][1] == 41
    assert (data["status"], data["after"], data["fresh"]) == (0, 7, True)


def test_a_handle_started_before_fork_fails_clearly_in_the_child(tmp_path):
    """A transformation started before os.fork() belongs to the parent's pool: in the child
    it fails at once naming os.fork() (no hang), and new work runs there; in the parent it
    finishes, having run once."""
    data, _ = scenario(tmp_path, '''
        marker, gate = sys.argv[1], sys.argv[2]

        @delayed
        def waits(marker, gate):
            import os
            import time

            with open(marker, "a") as f:
                f.write("ran\\n")
            while not os.path.exists(gate):
                time.sleep(0.01)
            return "done"

        spawn(1)
        handle = waits(marker, gate).start()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            child = {"error": failure(handle.run), "fresh": where(5).run()[1]}
            seamless.close()
            os.write(w, json.dumps(child).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child = json.loads(f.read())
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        open(gate, "w").close()
        report(child=child, status=status, value=handle.run(), runs=runs(marker))
    ''', tmp_path / "marker", tmp_path / "gate")
    error = data["child"]["error"]
    assert error["type"] == "TransformationError", error
    assert "started before os.fork() in the parent process" in error["message"]
    assert "start it again in the child" in error["message"]
    assert (data["child"]["fresh"], data["status"]) == (5, 0)
    assert (data["value"], data["runs"]) == ("done", 1)


def test_run_in_a_forked_child_of_an_in_process_user(tmp_path):
    """Without a pool the executor's threads do not survive os.fork() either: the child gets
    an executor of its own (it used to queue work for threads that did not exist, forever)."""
    data, _ = scenario(tmp_path, '''
        before = where(1).run()[1]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, json.dumps(where(2).run()).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child = json.loads(f.read())
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        report(before=before, child=child, status=status, me=os.getpid(), after=where(3).run())
    ''')
    assert data["child"][1] == 2 and data["child"][0] != data["me"]
    assert (data["before"], data["status"], data["after"]) == (1, 0, [data["me"], 3])


_TINY = '''
    import gc
    import glob
    import time

    import seamless._ipc as ipc

    marker, n = sys.argv[1], int(sys.argv[2])

    @delayed
    def inc(marker, x):
        import os

        fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"ran\\n")
        os.close(fd)
        return x + 1

    baseline = ipc.live_segments()
    spawn(2)
    t0 = time.perf_counter()
    handles = [inc(marker, i).start() for i in range(n)]
    ok = [h.run() for h in handles] == [i + 1 for i in range(n)]
    elapsed = time.perf_counter() - t0
    del handles
    seamless.close()
    ipc.trim()
    gc.collect()
    children = [pid for path in glob.glob("/proc/self/task/*/children")
                for pid in open(path).read().split()]
    report(ok=ok, runs=runs(marker), elapsed=elapsed,
           segments=ipc.live_segments() - baseline, children=children)
'''


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_many_tiny_tasks_run_once_and_leave_nothing(tmp_path, n):
    """Staging, batching and revoking under load: every body runs exactly once, and after
    close() and trim() no segment and no process is left."""
    data, _ = scenario(tmp_path, _TINY, tmp_path / "marker", n)
    print(f"{n} tiny tasks on spawn(2): {data['elapsed']:.1f} s")
    assert data["ok"] and data["runs"] == n
    assert (data["segments"], data["children"]) == (0, [])
