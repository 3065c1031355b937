"""``parallel(..., ordered=False)`` and ``parallel_async(..., ordered=False)`` yield the handles
as they finish (``as_completed``), with the same bound, laziness and early exit as the ordered
form.  Completion order is made deterministic with cache hits (finished when pulled) and
bodies that wait for a file the test creates."""

from __future__ import annotations

import asyncio

import pytest

from seamless.transformer import TransformationList, delayed, parallel, parallel_async, spawn

pytestmark = pytest.mark.integration


@pytest.fixture(params=["process", "spawn"])
def mode(request):
    if request.param == "spawn":
        spawn(2)
    return request.param


@delayed
def wait_for_file(path, x):
    import os
    import time

    for _ in range(6000):
        if os.path.exists(path):
            return x
        time.sleep(0.01)
    return "gave up"


@delayed
def inc(x):
    return x + 1


def test_a_cached_item_overtakes_a_slow_one(mode, tmp_path):
    gate = tmp_path / "gate"
    assert inc(1).run() == 2  # item 1 below is a cache hit: finished when pulled
    slow, fast = wait_for_file(str(gate), 0), inc(1)
    out = []
    for tf in parallel([slow, fast], ordered=False):
        out.append(tf.value)
        if len(out) == 1:
            assert slow.status == "running"  # not waited for
            gate.touch()
    assert out == [2, 0]


def test_the_async_form_yields_as_they_finish(mode, tmp_path):
    gate = tmp_path / "gate"
    assert inc(5).run() == 6

    async def main():
        out = []
        async for tf in parallel_async([wait_for_file(str(gate), 0), inc(5)], ordered=False):
            out.append(tf.value)
            gate.touch()
        return out

    assert asyncio.run(main()) == [6, 0]


def test_every_item_once_and_the_bound_holds(mode):
    pulled, yielded = [0], []

    def items():
        for i in range(40):
            pulled[0] += 1
            yield inc(i)

    for tf in parallel(items(), nparallel=3, ordered=False):
        assert pulled[0] - len(yielded) <= 3
        yielded.append(tf.value)
    assert sorted(yielded) == list(range(1, 41))


def test_break_cancels_what_this_call_started(tmp_path):
    gate = tmp_path / "gate"
    assert inc(7).run() == 8
    handles = [inc(7)] + [wait_for_file(str(gate), i) for i in range(3)]
    for tf in parallel(handles, ordered=False):
        assert tf.value == 8
        break
    assert [h.status for h in handles[1:]] == ["cancelled"] * 3
    gate.touch()


def test_transformation_list_counts_and_errors(tmp_path):
    @delayed
    def fail_on(x, bad):
        if x == bad:
            raise ValueError(f"bad item {x}")
        return x

    tl = TransformationList([fail_on(i, 2) for i in range(5)])
    done = [tf.value for tf in parallel(tl, ordered=False) if tf.status == "done"]
    assert sorted(done) == [0, 1, 3, 4]
    assert [index for index, _ in tl.errors] == [2]
    assert tl.summary()["failed"] == 1


@pytest.mark.parametrize("bad", [None, 0, "no"])
def test_ordered_must_be_a_bool(bad):
    with pytest.raises(TypeError, match=r"ordered must be True or False, got"):
        parallel([inc(1)], ordered=bad)
    with pytest.raises(TypeError, match=r"ordered must be True or False, got"):
        parallel_async([inc(1)], ordered=bad)
