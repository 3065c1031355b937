"""Command-line benchmarks (group "cli"): C1, C2 and the miss latency
(docs/design/benchmark-method.md, "Groups and their floors").

Whole-process timings of the installed console script, each against the same interpreter
(``sys.executable``, never a ``python3`` shim from PATH) started with ``-c pass`` in the same
run, so the ratio is what seamless-run adds to a bare Python start:

- C1: one cache hit of ``seamless-run echo hi`` (warm cache), min of 20; bound 2, goal 1.5;
  what the hit imports (``-X importtime``) is in its extra info.
- C2: 200 sequential hits vs 200 starts of ``-c pass``; reported (goal 1.5).
- Miss: ``seamless-run --no-cache true`` vs ``bash -c true`` plus a Python start; reported.

Each run has a private cache directory, HOME and TMPDIR. The console script's own shebang
start (a small launcher importing ``seamless.cli.run``) is part of what is measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

PASS = [sys.executable, "-c", "pass"]


def _script(name: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEAMLESS_", "XDG_"))}
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env.update(SEAMLESS_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               TMPDIR=str(tmp_path / "tmp"))
    return env, tmp_path


def _run(argv, env, cwd) -> None:
    # stdin from /dev/null: seamless-run reads a piped stdin as an input, and pytest's may be
    # a pipe nobody closes
    subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   check=True)


def _min_time(argv, env, cwd, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        _run(argv, env, cwd)
        best = min(best, time.perf_counter() - start)
    return best


def _total_time(argv, env, cwd, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        _run(argv, env, cwd)
    return time.perf_counter() - start


def _importtime(argv, env, cwd) -> list:
    """``[(module, cumulative us, depth)]`` of one run of ``argv`` under ``-X importtime``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=True)
    found = []
    for line in proc.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|")
        found.append((name.strip(), int(cumulative),
                      (len(name) - len(name.lstrip()) - 1) // 2))
    return found


@pytest.mark.benchmark(group="cli")
def test_c1_cache_hit_latency(benchmark, cli_env, record_ratio):
    """C1: `seamless-run echo hi`, warm cache, min of 20, vs `-c pass`, min of 20; bound 2x.

    ``extra_info``: ``importtime_top``, the largest ``-X importtime`` entries (module,
    cumulative us) of one hit among the modules `-c pass` does not load (``hit_imports``, all
    of them), and the sums of the top-level imports of a hit and of `-c pass` (what the
    interpreter's ``site`` loads is in both; the difference is what the hit adds).
    """
    env, cwd = cli_env
    hit = [_script("seamless-run"), "echo", "hi"]
    _run(hit, env, cwd)  # the miss that fills the cache
    n = 1 if benchmark.disabled else 20
    reference = _min_time(PASS, env, cwd, n)
    subject = benchmark.pedantic(lambda: _min_time(hit, env, cwd, n), rounds=1, iterations=1)
    imports = _importtime(hit, env, cwd)
    bare = _importtime(["-c", "pass"], env, cwd)
    started = {name for name, _, _ in bare}
    own = [(name, us) for name, us, _depth in imports if name not in started]
    benchmark.extra_info["importtime_top"] = [
        [name, us] for name, us in sorted(own, key=lambda e: -e[1])[:15]]
    benchmark.extra_info["importtime_total_us"] = sum(us for _, us, d in imports if d == 0)
    benchmark.extra_info["importtime_total_us_pass"] = sum(us for _, us, d in bare if d == 0)
    benchmark.extra_info["hit_imports"] = sorted(name for name, _ in own)
    record_ratio(benchmark, reference, subject, bound_now=2.0, goal=1.5)


@pytest.mark.benchmark(group="cli")
def test_c2_many_cache_hits(benchmark, cli_env, record_ratio):
    """C2: 200 sequential hits vs 200 starts of `-c pass` (reported, goal 1.5)."""
    env, cwd = cli_env
    hit = [_script("seamless-run"), "echo", "hi"]
    _run(hit, env, cwd)
    n = 2 if benchmark.disabled else 200
    reference = _total_time(PASS, env, cwd, n)
    subject = benchmark.pedantic(lambda: _total_time(hit, env, cwd, n), rounds=1, iterations=1)
    record_ratio(benchmark, reference, subject, bound_now=float("inf"), goal=1.5)


@pytest.mark.benchmark(group="cli")
def test_miss_latency(benchmark, cli_env, record_ratio):
    """A miss of a trivial command vs `bash -c true` plus a Python start (reported)."""
    env, cwd = cli_env
    miss = [_script("seamless-run"), "--no-cache", "true"]
    n = 1 if benchmark.disabled else 10
    reference = _min_time(PASS, env, cwd, n) + _min_time(["/bin/bash", "-c", "true"], env, cwd, n)
    subject = benchmark.pedantic(lambda: _min_time(miss, env, cwd, n), rounds=1, iterations=1)
    record_ratio(benchmark, reference, subject, bound_now=float("inf"), goal=float("inf"))
