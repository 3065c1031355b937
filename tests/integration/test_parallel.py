"""parallel(), parallel_async() and TransformationList (docs/parallel.md).

In-process tests use the default executor; pool tests use spawn(N).  Concurrency is measured
from timestamps written inside the jobs, never from wall-clock bounds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from overlap import interval, max_overlap

from seamless import config
from seamless.errors import TransformationError, WorkerCrashedError
from seamless.transformer import (
    TransformationList,
    delayed,
    has_spawned,
    parallel,
    parallel_async,
    spawn,
)

pytestmark = pytest.mark.integration


@delayed
def inc(x):
    return x + 1


@delayed
def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@delayed
def crash_if(x, bad):
    import os

    if x == bad:
        os._exit(3)
    return x


def _lines(path) -> int:
    with open(path) as f:
        return len(f.readlines())


class _Counting:
    """An iterable of handles that counts how many were pulled."""

    def __init__(self, n, offset=0):
        self.n = n
        self.offset = offset
        self.pulled = 0

    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            yield inc(self.offset + i)


# --- order, bound, laziness -------------------------------------------------------------------

def test_values_come_in_input_order():
    handles = [inc(i) for i in range(50)]
    assert [h.value for h in parallel(handles, nparallel=4)] == list(range(1, 51))


def test_at_most_nparallel_pulled_ahead_of_what_was_yielded():
    source = _Counting(200, offset=1000)
    yielded = 0
    for h in parallel(source, nparallel=5):
        yielded += 1
        assert source.pulled - yielded <= 5 - 1 + 1  # the one just yielded counted as pulled
        assert h.value == 1000 + yielded
    assert yielded == 200


def test_a_million_item_generator_is_never_materialised():
    source = _Counting(1_000_000, offset=2000)
    for i, h in enumerate(parallel(source, nparallel=3)):
        if i == 4:
            break
    assert source.pulled <= 5 + 3


def test_empty_input_yields_nothing_and_starts_nothing():
    assert list(parallel([])) == []
    assert list(parallel(iter([]), nparallel=2)) == []
    assert not has_spawned()


def test_nparallel_larger_than_the_input():
    assert [h.value for h in parallel([inc(1), inc(2)], nparallel=100)] == [2, 3]


def test_the_same_handle_twice_runs_once_and_is_yielded_twice():
    h = inc(77)
    out = list(parallel([h, inc(1), h], nparallel=2))
    assert out[0] is h and out[2] is h and h.value == 78


def test_already_finished_and_already_started_items():
    done = inc(5)
    done.run()
    started = inc(6).start()
    out = list(parallel([done, started, inc(7)]))
    assert [h.value for h in out] == [6, 7, 8]


# --- failures and errors ----------------------------------------------------------------------

def test_a_failed_item_is_yielded_in_its_place():
    out = list(parallel([fail_on(i, 3) for i in range(6)], nparallel=2))
    assert [h.status for h in out] == ["done"] * 3 + ["failed"] + ["done"] * 2
    assert "bad item 3" in out[3].exception
    with pytest.raises(TransformationError):
        out[3].value


def test_not_a_transformation_in_a_list_fails_at_the_call():
    with pytest.raises(TypeError, match=r"parallel\(\): item 2 is an int, not a Transformation"):
        parallel([inc(1), inc(2), 17])


def test_not_a_transformation_from_a_generator_fails_when_pulled():
    started = []

    def source():
        for i in range(3):
            h = inc(3000 + i)
            started.append(h)
            yield h
        yield "oops"

    it = parallel(source(), nparallel=10)
    with pytest.raises(TypeError, match=r"item 3 is a str, not a Transformation"):
        next(it)
    assert all(h.status in ("cancelled", "done") for h in started)


def test_an_error_of_the_input_iterable_comes_after_the_items_before_it():
    def source():
        yield inc(1)
        yield inc(2)
        raise LookupError("the source broke")

    seen = []
    with pytest.raises(LookupError, match="the source broke"):
        for h in parallel(source(), nparallel=4):
            seen.append(h.value)
    assert seen == [2, 3]


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_nparallel_values(bad):
    with pytest.raises(ValueError, match=rf"nparallel must be a positive integer, got {bad}"):
        parallel([inc(1)], nparallel=bad)


@pytest.mark.parametrize("bad", ["4", True, 2.0])
def test_bad_nparallel_types(bad):
    with pytest.raises(TypeError, match=r"nparallel must be a positive integer"):
        parallel([inc(1)], nparallel=bad)


def test_parallel_inside_a_running_event_loop_works():
    async def main():
        return [tf.value for tf in parallel([inc(i) for i in range(5)])]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]


# --- early exit -------------------------------------------------------------------------------

def test_break_cancels_what_this_call_started(tmp_path):
    log = tmp_path / "log"
    handles = [interval(str(log), i, 0.3 if i else 0.0) for i in range(8)]
    for h in parallel(handles, nparallel=3):
        break
    statuses = [h.status for h in handles]
    assert statuses[0] == "done"
    assert set(statuses[1:3]) <= {"cancelled", "done"} and "cancelled" in statuses[1:3]
    assert statuses[3:] == ["pending"] * 5, "never pulled, never started"


def test_an_exception_in_the_loop_body_closes_the_batch():
    handles = [interval(os.devnull, i, 0.5) for i in range(6)]
    with pytest.raises(ZeroDivisionError):
        for h in parallel(handles, nparallel=2):
            1 / 0
    assert all(h.status in ("done", "cancelled", "pending") for h in handles)
    assert "running" not in [h.status for h in handles]


def test_a_handle_started_by_the_caller_is_not_cancelled_on_exit():
    mine = interval(os.devnull, "mine", 0.2).start()
    for h in parallel([inc(1), mine], nparallel=2):
        break
    assert mine.run() == "mine"


# --- nparallel sources ------------------------------------------------------------------------

def test_nparallel_from_set_nparallel_and_the_environment(tmp_path, monkeypatch):
    log = tmp_path / "log"
    config.set_nparallel(2)
    try:
        out = list(parallel([interval(str(log), i, 0.2) for i in range(6)]))
    finally:
        config.set_nparallel(None)
    assert [h.value for h in out] == list(range(6))
    assert max_overlap(log) <= 2


def test_default_nparallel_reports_eight_per_worker():
    assert config.get_nparallel() == 8 * config.get("workers")
    assert config.get_settings()["nparallel"].source == "default"


def _pulled_at_first_yield(make, n=100) -> int:
    """How many items the default depth pulls before the first one is yielded."""
    pulled = []

    def source():
        for i in range(n):
            pulled.append(i)
            yield make(i)

    for _ in parallel(source()):
        return len(pulled)


@delayed
def size_of(data, nonce):
    return len(data) + nonce


def test_default_depth_holds_eight_small_items_per_worker():
    config.init(workers=3)
    assert _pulled_at_first_yield(lambda i: inc(6000 + i)) == 24


def test_default_depth_holds_fewer_large_items_but_never_fewer_than_workers():
    config.init(workers=3, memory_cache="8MiB")  # inputs held: at most 2 MiB past 3 items
    half = b"x" * (512 * 1024)
    assert _pulled_at_first_yield(lambda i: size_of(half, i)) == 4
    big = b"x" * (4 << 20)
    assert _pulled_at_first_yield(lambda i: size_of(big, i)) == 3
    assert [h.value for h in parallel(size_of(half, i) for i in range(20))] == \
        [len(half) + i for i in range(20)]


def test_a_chosen_nparallel_keeps_its_meaning_whatever_the_sizes():
    config.init(workers=3, memory_cache="8MiB")
    big = b"x" * (4 << 20)
    pulled = []

    def source():
        for i in range(50):
            pulled.append(i)
            yield size_of(big, 100 + i)

    for _ in parallel(source(), nparallel=10):
        assert len(pulled) == 10
        break
    config.set_nparallel(5)
    try:
        assert _pulled_at_first_yield(lambda i: size_of(big, 200 + i)) == 5
    finally:
        config.set_nparallel(None)


# --- the pool ---------------------------------------------------------------------------------

def test_thirty_sleepers_on_spawn4_with_nparallel3(tmp_path):
    log = tmp_path / "log"
    spawn(4)
    out = list(parallel([interval(str(log), i, 0.1) for i in range(30)], nparallel=3))
    assert [h.value for h in out] == list(range(30))
    assert max_overlap(log) == 3


def test_ten_thousand_tiny_items_on_spawn4_with_nparallel3(tmp_path):
    log = tmp_path / "log"
    spawn(4)
    out = [h.value for h in parallel((interval(str(log), i, 0) for i in range(10_000)),
                                     nparallel=3)]
    assert out == list(range(10_000))
    assert max_overlap(log) <= 3  # reaching 3 with microsecond bodies is luck, not a rule


def test_a_worker_crash_fails_that_item_only():
    spawn(2)
    out = list(parallel([crash_if(i, 4) for i in range(10)], nparallel=4))
    assert [h.status for h in out] == ["done"] * 4 + ["failed"] + ["done"] * 5
    with pytest.raises(WorkerCrashedError):
        out[4].value
    assert [h.value for h in out if h.status == "done"] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_cache_hits_are_yielded_without_running(tmp_path):
    log = tmp_path / "log"
    spawn(1)
    first = [interval(str(log), i, 0.05) for i in range(5)]
    assert [h.value for h in parallel(first)] == list(range(5))
    runs = _lines(log)
    tl = TransformationList([interval(str(log), i, 0.05) for i in range(5)])
    assert [h.value for h in parallel(tl)] == list(range(5))
    assert _lines(log) == runs, "nothing ran again"
    assert tl.summary()["cached"] == 5


CTRL_C = textwrap.dedent("""
    import os, sys, time
    import seamless
    from seamless.transformer import delayed, parallel, spawn

    @delayed
    def slow(i):
        import time
        time.sleep(30)
        return i

    if __name__ == "__main__":
        spawn(2)
        try:
            for h in parallel([slow(i) for i in range(10)], nparallel=4):
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        seamless.close()
        print("closed", flush=True)
""")


def test_ctrl_c_during_parallel(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        time.sleep(3.0)  # workers up, four items running
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.split() == ["interrupted", "closed"]
    assert proc.returncode == 0


# --- parallel_async ---------------------------------------------------------------------------

def test_parallel_async_in_order():
    async def main():
        return [h.value async for h in parallel_async([inc(i) for i in range(20)], nparallel=3)]

    assert asyncio.run(main()) == list(range(1, 21))


def test_parallel_async_early_exit_cancels(tmp_path):
    handles = [interval(os.devnull, i, 0.3 if i else 0.0) for i in range(6)]

    async def main():
        agen = parallel_async(handles, nparallel=3)
        async for h in agen:
            break
        await agen.aclose()

    asyncio.run(main())
    assert "running" not in [h.status for h in handles]


# --- TransformationList -----------------------------------------------------------------------

def test_transformation_list_errors_values_and_summary(caplog):
    tl = TransformationList([fail_on(i, 2) for i in range(5)])
    assert len(tl) == 5 and tl[0].name == "fail_on" and len(tl[1:3]) == 2
    with caplog.at_level(logging.INFO, logger="seamless.batch"):
        values = tl.values()
    assert values == [0, 1, None, 3, 4]
    assert [(i, h.status) for i, h in tl.errors] == [(2, "failed")]
    assert tl.summary() == {"total": 5, "done": 4, "failed": 1, "cached": 0, "cancelled": 0}
    assert any(r.getMessage().startswith("TransformationList: 4 done, 1 failed, 0 cached in")
               for r in caplog.records)


def test_transformation_list_on_error_raise():
    tl = TransformationList([fail_on(i, 3) for i in range(8)], on_error="raise")
    seen = []
    with pytest.raises(TransformationError) as info:
        for h in parallel(tl, nparallel=2):
            seen.append(h.value)
    assert seen == [0, 1, 2]
    assert info.value.index == 3
    assert str(info.value).startswith("item 3 of the TransformationList failed:")


def test_transformation_list_bad_arguments():
    with pytest.raises(ValueError, match="on_error must be 'continue' or 'raise'"):
        TransformationList([], on_error="ignore")
    with pytest.raises(TypeError, match="item 1 is an int"):
        TransformationList([inc(1), 2])


def test_progress_bar_forced_goes_to_stderr_and_ends_full(capfd):
    tl = TransformationList([inc(i) for i in range(7)], show_progress=True)
    list(parallel(tl))
    out, err = capfd.readouterr()
    assert out == ""
    assert "7/7" in err


def test_progress_auto_draws_nothing_off_a_terminal(capfd):
    tl = TransformationList([inc(i) for i in range(3)], show_progress="auto")
    list(parallel(tl))
    assert capfd.readouterr() == ("", "")


def test_a_transformation_list_iterated_twice_counts_once():
    tl = TransformationList([inc(i) for i in range(4)])
    assert [h.value for h in parallel(tl)] == [1, 2, 3, 4]
    assert [h.value for h in parallel(tl)] == [1, 2, 3, 4]
    assert tl.summary()["done"] == 4
