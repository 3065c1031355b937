"""One contract for every execution backend (docs/transformations.md, docs/parallel.md,
docs/caching.md, docs/worker-pool.md, docs/scale-out.md).

Each test runs once per backend (the ``backend`` fixture: "process", "spawn", "remote"), with the
same assertions: what a user's program sees must not depend on where its bodies run.  Bodies
leave their traces in files under ``tmp_path`` (visible to worker processes on this machine),
never in memory the test shares with them.  Every wait has a timeout, so a broken backend fails
instead of hanging.
"""

from __future__ import annotations

import os
import time

import pytest
from overlap import interval, max_overlap

import seamless
from seamless.errors import TransformationError
from seamless.execution import dispatch
from seamless.execution.backend import Backend
from seamless.transformer import delayed, parallel

pytestmark = pytest.mark.integration

WAIT = 120  # seconds: a hang detector, never a performance bound


@delayed
def double(x):
    return x * 2


@delayed
def pid_of(x):
    import os

    return os.getpid(), x


@delayed
def counted(path, x):
    """Appends one line to ``path`` per execution (how often a body really ran)."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x + 1


@delayed
def fails_with_key_error(x):
    return {}["missing-" + str(x)]


@delayed
def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@delayed
def outer(n):
    """Starts ``n`` inner transformations from inside a body and sums their results."""
    from seamless.transformer import delayed

    @delayed
    def inner(i):
        return i * i

    handles = [inner(i).start() for i in range(n)]
    return sum(h.run() for h in handles)


@delayed
def wait_for_gate(gate, x):
    import os
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x


def _runs(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.readlines())


def _until(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT} s"
        time.sleep(0.01)


def test_the_backend_implements_the_protocol(backend):
    """The configured mode's backend has every member of ``Backend``, and names its mode."""
    made = dispatch.backend(backend)
    assert isinstance(made, Backend)
    assert made.name == backend
    assert made.describe()


def _imported_modules(module) -> set:
    """Every module ``module``'s source imports, at any depth of its code (absolute names)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    package = module.rpartition(".")[0]
    names = set()
    with open(spec.origin) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_pool_and_the_dispatcher_do_not_import_each_other():
    """Neither module imports the other, even inside a function: the pool reaches the
    dispatcher only through the hooks it is built with, the dispatcher the pool only through
    the backend registry."""
    assert "seamless.execution.dispatch" not in _imported_modules("seamless.pool.pool")
    assert not {m for m in _imported_modules("seamless.execution.dispatch")
                if m.startswith("seamless.pool")}
    assert "seamless.pool.pool" in _imported_modules("seamless.execution.backend")


def test_result_and_where_the_body_ran(backend):
    """The value comes back; bodies run in this process only for the in-process backend."""
    assert double(21).run(timeout=WAIT) == 42
    pid, x = pid_of(1).run(timeout=WAIT)
    assert x == 1
    assert (pid == os.getpid()) == (backend == "process")


def test_a_cache_hit_runs_nothing(backend, tmp_path):
    """The same transformation again (a new handle) is answered from the cache: the body ran
    once."""
    log = str(tmp_path / "runs")
    assert counted(log, 1).run(timeout=WAIT) == 2
    again = counted(log, 1)
    assert again.run(timeout=WAIT) == 2
    assert _runs(log) == 1
    assert again.status == "done"
    assert counted(log, 2).run(timeout=WAIT) == 3  # a different input does run
    assert _runs(log) == 2


def test_same_transformation_started_twice_runs_once(backend, tmp_path):
    """Two handles of one checksum started together share one execution (latch-on)."""
    log = str(tmp_path / "runs")
    gate = str(tmp_path / "gate")
    first = counted(log, wait_for_gate(gate, 5)).start()
    second = counted(log, wait_for_gate(gate, 5)).start()
    open(gate, "w").close()
    assert first.run(timeout=WAIT) == second.run(timeout=WAIT) == 6
    assert _runs(log) == 1


def test_a_failure_is_a_transformation_error_of_the_original_type(backend):
    """The body's exception reaches the caller as TransformationError that is also the
    body's exception class, with the body's traceback text."""
    handle = fails_with_key_error(3)
    with pytest.raises(TransformationError) as info:
        handle.run(timeout=WAIT)
    assert isinstance(info.value, KeyError)
    assert info.value.exception_type == "KeyError"
    assert "missing-3" in info.value.traceback
    assert handle.status == "failed"
    assert "KeyError" in handle.exception


def test_a_failure_is_not_cached(backend, tmp_path):
    """Running a failed transformation again runs its body again."""
    marker = tmp_path / "ok"

    @delayed
    def needs_file(path):
        import os

        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return "found"

    with pytest.raises(FileNotFoundError):
        needs_file(str(marker)).run(timeout=WAIT)
    marker.touch()
    assert needs_file(str(marker)).run(timeout=WAIT) == "found"


def test_chained_handles(backend):
    """A handle passed as an argument is computed first and feeds its result in."""
    first = double(3)
    second = double(first)
    third = double(second)
    assert third.run(timeout=WAIT) == 24
    assert first.status == second.status == "done"
    assert first.value == 6


def test_parallel_keeps_input_order(backend, tmp_path):
    """Later items finishing first are still yielded after the earlier ones."""
    log = str(tmp_path / "log")
    handles = [interval(log, i, 0.05 * (4 - i)) for i in range(5)]
    out = [h.value for h in parallel(handles, nparallel=2)]
    assert out == [0, 1, 2, 3, 4]


def test_parallel_bound(backend, tmp_path):
    """At most ``nparallel`` items run at once, whatever the backend's capacity."""
    log = str(tmp_path / "log")
    out = [h.value for h in parallel([interval(log, i, 0.1) for i in range(5)], nparallel=1)]
    assert out == list(range(5))
    assert max_overlap(log) == 1


def test_parallel_yields_a_failure_in_its_place(backend):
    """A failing item is yielded where it belongs, with its error; the others complete."""
    out = list(parallel([fail_on(i, 2) for i in range(5)], nparallel=2))
    assert [h.status for h in out] == ["done", "done", "failed", "done", "done"]
    assert [h.value for h in out if h.status == "done"] == [0, 1, 3, 4]
    assert "bad item 2" in out[2].exception


def test_nested_transformations(backend):
    """A body that starts and waits for transformations gets their results (no deadlock, with
    more children than the backend has workers)."""
    assert outer(5).run(timeout=WAIT) == sum(i * i for i in range(5))
    assert [h.value for h in parallel([outer(n) for n in range(1, 4)], nparallel=2)] == \
        [0, 1, 5]


def test_cancel_then_the_same_transformation_still_completes(backend, tmp_path):
    """A cancelled handle is cancelled for good; the backend forgets the work nobody wants, so
    a new handle of the same transformation finishes normally."""
    gate = str(tmp_path / "gate")
    handle = wait_for_gate(gate, 7).start()
    assert handle.cancel()
    assert handle.status == "cancelled"
    with pytest.raises(Exception, match="cancel"):
        handle.run(timeout=WAIT)
    open(gate, "w").close()
    assert wait_for_gate(gate, 7).run(timeout=WAIT) == 7
    assert not handle.cancel()  # cancelling twice: nothing left to cancel


def test_cancel_of_a_finished_handle_changes_nothing(backend):
    handle = double(5)
    assert handle.run(timeout=WAIT) == 10
    assert not handle.cancel()
    assert handle.status == "done"
    assert handle.value == 10


def test_close_ends_unfinished_work_and_the_next_run_starts_afresh(backend, tmp_path):
    """seamless.close() leaves no handle waiting forever: each unfinished one ends (cancelled,
    or done if its body was already running on a thread that cannot be stopped); the next
    transformation works on a new backend (the configured mode: close() also ends spawn())."""
    gate = str(tmp_path / "gate")
    handles = [wait_for_gate(gate, i).start() for i in range(4)]
    seamless.close()
    open(gate, "w").close()
    _until(lambda: all(h.status in ("done", "cancelled", "failed") for h in handles),
           "every unfinished handle ending after close()")
    assert any(h.status == "cancelled" for h in handles)
    assert double(8).run(timeout=WAIT) == 16
    pid, _ = pid_of(2).run(timeout=WAIT)
    assert (pid == os.getpid()) == (backend in ("process", "spawn"))
