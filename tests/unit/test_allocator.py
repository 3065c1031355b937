"""seamless._ipc.shm_array: the numpy data-memory handler that gives results a segment.

The handler exists only in the compiled module; its tests skip on the pure twin (which must
report that it has none).  An autouse fixture uninstalls the handler, empties the free list
and fails any test that leaves a descriptor or a live Segment behind.
"""

from __future__ import annotations

import gc
import importlib
import os
import threading

import numpy as np
import pytest

import seamless._ipc

MiB = 1 << 20
COMPILED = seamless._ipc.backends()["shm_array"] == "cython"


def _compiled():
    chosen = seamless._ipc.shm_array
    try:
        return importlib.import_module("seamless._ipc.shm_array")
    finally:
        seamless._ipc.shm_array = chosen  # importing the submodule rebinds the attribute


@pytest.fixture
def shm():
    """The compiled shm_array, free list empty, handler installed in this test's context."""
    if not COMPILED:
        pytest.skip("the numpy allocator exists only in the compiled core "
                    "(SEAMLESS_PUREPYTHON is set or the extension is not built)")
    module = _compiled()
    module.trim()
    assert module.install_allocator() is True
    try:
        yield module
    finally:
        module.uninstall_allocator()
        gc.collect()
        module.trim()


pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


def _big(n=MiB):
    """An 8 MiB float64 array (n elements) made before the handler matters."""
    return np.arange(n, dtype=np.float64)


def test_the_twin_has_no_allocator():
    pure = importlib.import_module("seamless._ipc._pure.shm_array")
    assert pure.install_allocator() is False
    assert pure.allocator_installed() is False
    pure.uninstall_allocator()
    assert pure.claim(np.ones(MiB), b"") is None


def test_install_and_uninstall(shm):
    assert shm.allocator_installed()
    assert shm.install_allocator(threshold=2 * MiB) is True  # replaces, does not stack
    shm.uninstall_allocator()
    assert not shm.allocator_installed()
    shm.uninstall_allocator()  # nothing to restore: no-op
    assert not shm.allocator_installed()
    with pytest.raises(ValueError, match=r"headroom must be a multiple of 64"):
        shm.install_allocator(headroom=100)
    assert not shm.allocator_installed()


def test_a_result_is_born_in_a_segment_and_claimed_without_copy(shm):
    a = _big()
    shm.reset_counters()
    b = a * 2
    assert b.ctypes.data % 64 == 0
    prefix = b"SEAMLESS-HEADER\x01"
    seg = shm.claim(b, prefix)
    assert seg is not None
    assert seg.size == len(prefix) + b.nbytes
    assert seg.offset == 4096 - len(prefix)
    assert bytes(seg.readonly()) == prefix + b.tobytes()
    assert bytes(seg.readonly(populate=True)[:len(prefix)]) == prefix
    assert shm.bytes_copied() == 0, "claim copies nothing"
    assert shm.claim(b, prefix) is None, "claimed once"
    assert np.array_equal(b, a * 2)
    seg.close()


def test_a_whole_reshape_is_claimed_views_and_small_arrays_are_not(shm):
    b = _big() * 2
    assert shm.claim(np.ones(1000) * 2, b"") is None
    assert shm.claim(b[1:], b"") is None
    assert shm.claim(b[: MiB // 2], b"") is None, "same start, not the whole allocation"
    assert shm.claim(b.reshape(1024, 1024)[:, ::2], b"") is None
    assert shm.claim(b.reshape(1024, 1024).T, b"") is None
    assert shm.claim(b, b"x" * 4097) is None, "prefix larger than the headroom"
    assert shm.claim(b.tolist()[:3], b"") is None
    seg = shm.claim(b.reshape(1024, 1024), b"")
    assert seg is not None and seg.size == b.nbytes
    seg.close()


def test_a_freed_allocation_returns_to_the_free_list_and_is_reused(shm):
    a = _big()
    b = a * 2
    del b
    assert [cap for cap, _ in shm.free_list()] == [shm.size_class(8 * MiB + 4096)]
    c = a * 3
    assert shm.free_list() == [], "the next allocation took it"
    assert np.array_equal(c, a * 3)
    z = np.zeros(MiB)  # calloc on a fresh segment
    del c
    z2 = np.zeros(MiB)  # calloc on a recycled (dirty) segment: zeroed
    assert not z.any() and not z2.any()


def test_an_exported_allocation_is_never_reused(shm):
    a = _big()
    b = a * 2
    seg = shm.claim(b, b"")
    del b
    assert shm.free_list() == [], "exported: its descriptor is closed, not recycled"
    c = a * 3
    other = shm.claim(c, b"")
    assert other.segment_id() != seg.segment_id()
    assert bytes(seg.readonly()) == (a * 2).tobytes(), "the claimed bytes stay intact"
    seg.close()
    other.close()


def test_claimed_segment_outlives_the_array(shm):
    b = _big() * 2
    expected = b.tobytes()
    seg = shm.claim(b, b"")
    del b
    gc.collect()
    assert bytes(seg.readonly()) == expected
    fd = os.dup(seg.fd)
    seg.close()
    back = shm.Segment.from_fd(fd, len(expected), offset=4096)
    assert bytes(back.readonly()) == expected
    back.close()


def test_realloc_keeps_the_contents(shm):
    b = np.full(2 * MiB, 7, dtype=np.uint8)
    b.resize(3 * MiB, refcheck=False)
    assert (b[: 2 * MiB] == 7).all() and not b[2 * MiB:].any()
    b.resize(MiB + 5, refcheck=False)
    assert (b == 7).all()
    b.resize(1000, refcheck=False)  # below the threshold: back to numpy's memory
    assert (b == 7).all()
    assert shm.claim(b, b"") is None


def test_falls_back_to_numpy_memory_when_a_segment_cannot_be_made(shm):
    a = _big()
    live = shm.live_segments()
    shm._fail_next_create()
    b = a * 2
    assert np.array_equal(b, np.arange(MiB) * 2.0)
    assert shm.claim(b, b"") is None, "plain memory, not a segment"
    assert shm.live_segments() == live
    c = a * 2  # the hook fired once
    seg = shm.claim(c, b"")
    assert seg is not None
    seg.close()


def test_arrays_outlive_uninstall(shm):
    b = _big() * 2
    shm.uninstall_allocator()
    c = b + 1  # numpy's own memory now
    assert shm.claim(c, b"") is None
    seg = shm.claim(b, b"")
    assert seg is not None
    del b
    assert np.array_equal(c, np.arange(MiB) * 2.0 + 1)
    seg.close()


def test_other_threads_keep_numpys_handler(shm):
    # numpy's handler is a context variable and a new thread starts in a fresh context:
    # installing in one thread changes nothing for the others.
    seen = {}

    def work():
        seen["installed"] = shm.allocator_installed()
        seen["claimed"] = shm.claim(_big() * 2, b"")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "claimed": None}
    assert shm.allocator_installed()


def test_many_allocations_leave_no_descriptor(shm):
    a = _big()
    for _ in range(50):
        b = a * 2
        seg = shm.claim(b, b"h")
        del b
        seg.close()
        c = a + 1
        del c
    assert len(shm.free_list()) == 1


def test_threads_share_the_free_list_safely(shm):
    # Several threads, each with the handler installed in its own context, allocate, claim,
    # free and create segments at once; the free list and the table stay consistent.
    errors = []

    def work():
        try:
            shm.install_allocator()
            a = np.arange(300_000, dtype=np.float64)
            for i in range(100):
                b = a * 2
                if i % 3 == 0:
                    seg = shm.claim(b, b"x")
                    assert bytes(seg.readonly()[:9]) == b"x" + b[:1].tobytes()
                    seg.close()
                assert (b + 1)[5] == 11.0
                shm.Segment.create(MiB).fill(np.zeros(MiB, np.uint8))
                del b
                if i % 25 == 0:
                    shm.trim_idle(0.0)
            shm.uninstall_allocator()
        except Exception as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
