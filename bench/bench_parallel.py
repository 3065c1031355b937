"""parallel() against its peer and its floor (docs/design/benchmark-method.md: B1, B2, B3).

- B1: 2,000 tiny uncached items through ``parallel(..., nparallel=8)`` on spawn(2) vs
  ``multiprocessing.Pool(2).imap(f, items, chunksize=1)`` in the same run.  Gate <= 1.0x; not
  met (6-10x here), so marked xfail with the measured figure.  Structural:
  the maximum overlap of job intervals is min(nparallel, workers) = 2.
- B2: 100,000 already-cached tiny items through ``parallel()`` vs a plain loop that builds the
  same handles and computes their checksums.  Gate <= 5x.
- B3: time to the first yielded item of a 10,000-item generator, as a fraction of the whole
  batch.  Gate <= 5 %.
- B4: 1,000 transformations of 1.4 ms (a busy loop) through ``parallel()`` with the default
  ``nparallel`` on spawn(2), vs ``ProcessPoolExecutor(2).map`` of the same function in the same
  run.  Gate <= 1.0x (with nparallel = workers it took 1.98 s, slower than a serial loop at
  1.41 s and the executor at 1.18 s); the serial loop's time is reported too.  It flipped
  (0.81-0.83 s) but sits at the bound on a quiet machine, so it is a marked xfail.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import time

import pytest
from overlap import interval, max_overlap

import seamless
from seamless.transformer import delayed, parallel, spawn

_nonces = itertools.count(1)


def _increment(x):
    return x + 1


@delayed
def increment(x):
    return x + 1


N_B1 = 2_000


@pytest.mark.benchmark(group="parallel")
@pytest.mark.xfail(
    reason="B1 measured 6.0-8.2x of Pool(2).imap(chunksize=1) with the persistent cache off "
           "(109-114 us vs 11-19 us per item) and 13-25x with it on, as by default (235-265 us; "
           "282-306 us before this change, same run), on a quiet 2-core target, 2026-12-08; "
           "bound 1.0x: with 8 items held the batch moves in rounds of wake-ups (your thread, "
           "the lookup thread, the pool's I/O thread, the workers in turn), where imap keeps "
           "everything in flight, and each result is a file of its own in the cache; see "
           "docs/parallel.md",
    strict=False)
def test_b1_throughput_vs_pool_imap(benchmark, tmp_path, time_reference, time_subject,
                                    record_ratio):
    with multiprocessing.Pool(2) as peer:
        peer.apply(_increment, (1,))

        def reference():
            assert list(peer.imap(_increment, range(N_B1), chunksize=1))[-1] == N_B1

        ref_s = time_reference(reference, rounds=5)
    spawn(2)
    try:
        increment(-1).run()
        log = tmp_path / "intervals"
        list(parallel([interval(str(log), i, 0.02) for i in range(40)], nparallel=8))
        overlap = max_overlap(log)

        def subject():
            start = next(_nonces) * 10 ** 7
            for h in parallel((increment(start + i) for i in range(N_B1)), nparallel=8):
                h.value  # noqa: B018

        subj_s, _ = time_subject(subject, rounds=5, warmup_rounds=1)
    finally:
        seamless.close()
    assert overlap == 2, f"at most min(nparallel, workers) = 2 jobs overlap; saw {overlap}"
    benchmark.extra_info["per_item_us"] = subj_s / N_B1 * 1e6
    benchmark.extra_info["peer_per_item_us"] = ref_s / N_B1 * 1e6
    record_ratio(benchmark, ref_s, subj_s, bound_now=1.0, goal=0.5)


N_B2 = 100_000


@pytest.mark.benchmark(group="parallel")
def test_b2_overhead_on_cached_items(benchmark, time_reference, time_subject, record_ratio):
    offset = 3 * 10 ** 9
    for h in parallel(increment(offset + i) for i in range(N_B2)):  # fill the cache
        assert h.status == "done"

    def reference():
        for i in range(N_B2):
            increment(offset + i).checksum  # noqa: B018

    def subject():
        for h in parallel(increment(offset + i) for i in range(N_B2)):
            h.value  # noqa: B018

    ref_s = time_reference(reference, rounds=3)
    subj_s, _ = time_subject(subject, rounds=3, warmup_rounds=1)
    seamless.close()
    benchmark.extra_info["per_item_us"] = subj_s / N_B2 * 1e6
    benchmark.extra_info["loop_per_item_us"] = ref_s / N_B2 * 1e6
    record_ratio(benchmark, ref_s, subj_s, bound_now=5.0, goal=2.0)


N_B3 = 10_000


@pytest.mark.benchmark(group="parallel")
def test_b3_streaming_first_item(benchmark, time_subject, record_ratio):
    spawn(2)
    try:
        increment(-1).run()
        firsts = []

        def subject():
            start = next(_nonces) * 10 ** 8 + 5 * 10 ** 9
            t0 = time.perf_counter()
            first = None
            for h in parallel(increment(start + i) for i in range(N_B3)):
                if first is None:
                    first = time.perf_counter() - t0
                h.value  # noqa: B018
            total = time.perf_counter() - t0
            firsts.append(first / total)

        time_subject(subject, rounds=3, warmup_rounds=0)
    finally:
        seamless.close()
    fraction = min(firsts)
    benchmark.extra_info["first_item_fraction"] = fraction
    record_ratio(benchmark, 1.0, fraction, bound_now=0.05, goal=0.01)


N_B4 = 1_000
BUSY_S = 0.0014


def _busy(x, nonce):
    import time

    end = time.perf_counter() + 0.0014
    while time.perf_counter() < end:
        pass
    return x + nonce


busy = delayed(_busy)


@pytest.mark.benchmark(group="parallel")
@pytest.mark.xfail(
    reason="B4 measured 0.99-1.02x of ProcessPoolExecutor(2).map on a quiet 2-core target "
           "(0.81-0.83 s vs 0.82 s; ideal 0.70 s; 0.63-0.70x while other jobs loaded the "
           "machine; bound 1.0x): a worker always has the next item staged, yet about 200 us "
           "pass between two bodies, as the parent spends about 250 us of CPU per item (its "
           "I/O thread about 150, your thread about 80: one round of wake-ups per item) on "
           "the cores the workers need; see docs/parallel.md",
    strict=False)
def test_b4_millisecond_items_default_depth_vs_process_pool(benchmark, time_reference,
                                                            time_subject, record_ratio):
    nonces = itertools.count(1)
    with concurrent.futures.ProcessPoolExecutor(2) as peer:
        list(peer.map(_busy, range(4), [0] * 4))

        def reference():
            assert list(peer.map(_busy, range(N_B4), [0] * N_B4))[-1] == N_B4 - 1

        ref_s = time_reference(reference, rounds=3)
    start = time.perf_counter()
    for i in range(N_B4):
        _busy(i, 0)
    serial_s = time.perf_counter() - start
    spawn(2)
    try:
        busy(-1, 0).run()

        def subject():
            nonce = next(nonces) * 10 ** 6  # fresh arguments each round: no cache hits
            out = [h.value for h in parallel(busy(i, nonce) for i in range(N_B4))]
            assert out[-1] == N_B4 - 1 + nonce

        subj_s, _ = time_subject(subject, rounds=3, warmup_rounds=1)
    finally:
        seamless.close()
    benchmark.extra_info["serial_loop_s"] = serial_s
    benchmark.extra_info["ideal_s"] = N_B4 * BUSY_S / 2
    record_ratio(benchmark, ref_s, subj_s, bound_now=1.0, goal=0.9)
