"""The worker pool against its floor and its peer (performance.md: S1, P1, T4).

- S1: the seed example, 20 x sleep(1) on spawn(4) in a fresh interpreter, lazy start included,
  vs the ideal 5 s.  Gate: <= 1.25x.
- P1: 10,000 tiny tasks (x + 1), all ``.start()`` then ``.run()``, on spawn(2), vs
  ``multiprocessing.Pool(2).apply_async`` + ``.get()`` in the same run.  Reported here (the
  compiled-core issue gates it at <= 1.0x); per-task microseconds go to extra_info.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import seamless
import seamless._ipc as ipc
from seamless.transformer import delayed, spawn

SEED = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    from seamless.transformer import delayed, spawn
    spawn(4)

    @delayed
    def compute(x):
        import time
        time.sleep(1)
        return x * 2

    handles = [compute(i) for i in range(20)]
    for h in handles:
        h.start()
    results = [h.run() for h in handles]
    assert results == [2 * i for i in range(20)]
    print(time.perf_counter() - t0)
""")


@pytest.mark.benchmark(group="pool")
def test_s1_seed_example(benchmark, time_subject, record_ratio, tmp_path):
    script = tmp_path / "seed.py"
    script.write_text(SEED)

    def subject():
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr
        return float(out.stdout)

    subject_s, inner = time_subject(subject, rounds=1, warmup_rounds=0)
    benchmark.extra_info["wall_s"] = subject_s
    benchmark.extra_info["inside_script_s"] = inner
    record_ratio(benchmark, 5.0, subject_s, bound_now=1.25, goal=1.1)


def _increment(x):
    return x + 1


@delayed
def increment(x):
    return x + 1


N_TINY = 10_000


@pytest.mark.benchmark(group="pool")
def test_p1_tiny_tasks(benchmark, time_reference, time_subject, record_ratio):
    with multiprocessing.Pool(2) as peer:
        peer.apply(_increment, (1,))  # warm

        def reference():
            results = [peer.apply_async(_increment, (i,)) for i in range(N_TINY)]
            assert [r.get() for r in results][-1] == N_TINY

        ref_s = time_reference(reference, rounds=3)
    spawn(2)
    increment(-1).run()  # workers up and warm
    offset = iter(range(10 ** 9, 10 ** 10, N_TINY))

    def subject():
        start = next(offset)  # new arguments each round: no cache hits
        handles = [increment(start + i).start() for i in range(N_TINY)]
        assert handles[-1].run() == start + N_TINY
        for h in handles:
            h.run()

    try:
        subj_s, _ = time_subject(subject, rounds=3, warmup_rounds=1)
    finally:
        seamless.close()
    benchmark.extra_info["per_task_us"] = subj_s / N_TINY * 1e6
    benchmark.extra_info["peer_per_task_us"] = ref_s / N_TINY * 1e6
    # Reported now; the next issue gates at 1.0. The bound here only catches a collapse.
    record_ratio(benchmark, ref_s, subj_s, bound_now=10.0, goal=0.5)
