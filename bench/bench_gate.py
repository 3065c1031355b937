"""The benchmark gate catches an extra copy (docs/design/benchmark-method.md, "The gate self-test").

One extra copy into already-touched memory costs about a tenth of T1's floor: too little for
the timing bound to see reliably.  The structural ``bytes_copied()`` checks of T1 and T4 see it
exactly.  This runs them in a child pytest with ``--inject-extra-copy`` (every input copied once
more, and counted) and asserts that both fail on those checks.  The timing of T1 in that run is
recorded here, not asserted.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent


@pytest.mark.benchmark(group="gate")
def test_an_extra_copy_fails_t1_and_t4(benchmark, tmp_path):
    report = tmp_path / "gate.json"
    # The child makes its own private cache (bench/conftest.py): sharing this session's would
    # leave T4's 200 MB result there, and this session's T4 would then read it as a cache hit.
    env = {k: v for k, v in os.environ.items() if k != "SEAMLESS_CACHE"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCH / "bench_transport.py"), "-q",
         "-p", "no:cacheprovider", "-k", "test_t1_round_trip or test_t4_chaining",
         "--inject-extra-copy",
         *(["--benchmark-disable"] if benchmark.disabled else [f"--benchmark-json={report}"])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # 1: tests failed (not a usage or internal error)
    assert "FAILED" in out and "test_t1_round_trip_400mb" in out and \
        "test_t4_chaining_is_free" in out, out
    assert "exactly one copy of the input" in out, out
    assert "sending a returned array to a worker copied or hashed it" in out, out
    assert "2 failed" in out, out
    ratios = {b["name"]: b["extra_info"].get("ratio")
              for b in json.loads(report.read_text())["benchmarks"]} if report.exists() else {}
    benchmark.extra_info["t1_ratio_with_extra_copy"] = ratios.get("test_t1_round_trip_400mb")
    benchmark.pedantic(lambda: None, rounds=1)
