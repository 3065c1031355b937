"""Benchmark plumbing shared by bench/bench_*.py
(docs/design/benchmark-method.md, "How a benchmark judges").

Flow of one gated benchmark: ``time_reference(fn)`` times the reference first
(warm-up, then the minimum of several rounds); ``time_subject(fn)`` runs the
subject under ``benchmark.pedantic`` and returns its minimum; ``record_ratio``
puts both times, the ratio, the bounds and the machine facts in
``benchmark.extra_info`` (so ``--benchmark-json`` carries them) and asserts
``subject / reference <= bound_now``.

Smoke runs (``--benchmark-disable``): pytest-benchmark runs the subject once and
keeps no statistics; the reference also runs once, the ratio is recorded with
``timed: False`` and is not asserted.  Structural checks in the benchmarks still
run.  The whole directory refuses to run on the pure-Python twin of a compiled module.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
import warnings

import pytest

# bench/peers.py (the peer adapters) is imported as ``peers`` by the benchmarks.  The repository
# root too: pytest names a benchmark module ``bench.bench_dask``, and the worker processes of
# Dask (spawned with this sys.path) unpickle its functions by that name.  Appended, so neither
# shadows an installed package (``import seamless`` still finds the installed one).
_HERE = pathlib.Path(__file__).resolve().parent
sys.path.extend(str(p) for p in (_HERE, _HERE.parent) if str(p) not in sys.path)

from timing import min_seconds  # noqa: E402  (bench/ is on sys.path from here on)


def pytest_addoption(parser):
    parser.addoption(
        "--inject-extra-copy", action="store_true", default=False,
        help="gate self-test: copy every input sent to a worker once more (counted), so the "
             "transport benchmarks' bytes_copied() checks must fail")
    parser.addoption(
        "--report-sizes", action="store_true", default=False,
        help="peer benchmarks also run the large arrays (40 to 400 MB) that `python -m "
             "bench.report` plots; the gated run keeps to the small ones")


def pytest_configure(config):
    """A private, empty persistent cache for the session unless SEAMLESS_CACHE is set: the
    nonces of the timed transformations restart at every run, so results a previous run left
    in the default cache directory would turn timed misses into hits."""
    if "SEAMLESS_CACHE" not in os.environ:
        config.seamless_bench_cache = tempfile.mkdtemp(prefix="seamless-bench-cache-")
        os.environ["SEAMLESS_CACHE"] = config.seamless_bench_cache


def pytest_unconfigure(config):
    path = getattr(config, "seamless_bench_cache", None)
    if path is not None:
        del os.environ["SEAMLESS_CACHE"]
        shutil.rmtree(path, ignore_errors=True)


def pytest_benchmark_update_machine_info(config, machine_info):
    """The machine facts the report prints: CPU, cores, memory, Python, numpy."""
    import numpy

    model, sha_ni = _cpu_facts()
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            memory = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    machine_info["seamless_bench"] = {
        "cpu_model": model, "sha_ni": sha_ni, "cores": os.cpu_count(),
        "memory_bytes": memory, "python": platform.python_version(),
        "numpy": numpy.__version__, "system": platform.platform(),
        "load_average_at_end": list(os.getloadavg())}


@pytest.fixture(autouse=True)
def _extra_copy_hook(request):
    """Sets seamless._ipc's private test hook for the whole test under --inject-extra-copy."""
    import seamless._ipc as ipc

    ipc._inject_extra_copy = request.config.getoption("--inject-extra-copy")
    yield
    ipc._inject_extra_copy = False


def pytest_sessionstart(session):
    """Stop with a usage error unless every seamless._ipc module that has a compiled version
    is the compiled one (modules not yet written in Cython run as their twin)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import seamless._ipc as ipc
    if any(kind != "cython" and ipc._has_compiled(name)
           for name, kind in ipc.backends().items()):
        why = "".join(f"; {w.message}" for w in caught)
        pytest.exit(
            f"benchmarks need the compiled core, but seamless._ipc.BACKEND is "
            f"{ipc.BACKEND!r} (modules: {ipc.backends()}){why}; unset SEAMLESS_PUREPYTHON "
            f"and build the core with `pip install -e . --no-build-isolation`",
            returncode=pytest.ExitCode.USAGE_ERROR)


@functools.lru_cache(maxsize=1)
def _cpu_facts() -> tuple[str, bool]:
    """(CPU model name, whether the CPU has SHA extensions) from /proc/cpuinfo."""
    model, sha_ni = "unknown", False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags":
                    sha_ni = sha_ni or "sha_ni" in value.split()
    except OSError as exc:
        model = f"unknown (/proc/cpuinfo: {exc.strerror})"
    return model, sha_ni


def record_ratio(benchmark, reference_s: float, subject_s: float, bound_now: float,
                 goal: float, enforce: bool = True) -> float:
    """Record subject / reference in extra_info and assert it is within bound_now (when timed
    and ``enforce``; else ``assert_ratio(benchmark)`` asserts it later)."""
    import seamless._ipc as ipc

    ratio = subject_s / reference_s if reference_s > 0 else math.inf
    model, sha_ni = _cpu_facts()
    benchmark.extra_info.update(
        reference_s=reference_s, subject_s=subject_s, ratio=ratio, bound_now=bound_now,
        goal=goal, ipc_backend=ipc.BACKEND, cpu_model=model, sha_ni=sha_ni,
        timed=not benchmark.disabled)
    if enforce:
        assert_ratio(benchmark)
    return ratio


def assert_ratio(benchmark) -> None:
    """Assert the ratio recorded by ``record_ratio`` is within its bound (when timed)."""
    info = benchmark.extra_info
    if not info["timed"]:
        return
    assert info["ratio"] <= info["bound_now"], (
        f"{benchmark.name}: subject {info['subject_s'] * 1e3:.2f} ms / reference "
        f"{info['reference_s'] * 1e3:.2f} ms = {info['ratio']:.3f}, above the bound "
        f"{info['bound_now']} (goal {info['goal']})")


@pytest.fixture(name="record_ratio")
def _record_ratio_fixture():
    """``record_ratio(benchmark, reference_s, subject_s, bound_now, goal)``, see above."""
    return record_ratio


@pytest.fixture(name="assert_ratio")
def _assert_ratio_fixture():
    """``assert_ratio(benchmark)``, see above."""
    return assert_ratio


@pytest.fixture
def time_reference(benchmark):
    """``time_reference(fn, rounds=5, warmup=1)``: min seconds of ``fn()`` (once in smoke runs)."""
    def run(fn, rounds: int = 5, warmup: int = 1) -> float:
        if benchmark.disabled:
            rounds, warmup = 1, 0
        return min_seconds(fn, rounds, warmup)
    return run


@pytest.fixture
def time_subject(benchmark):
    """``time_subject(fn, setup=None, rounds=5, warmup_rounds=1)`` -> (min seconds, last result).

    Runs ``fn`` under ``benchmark.pedantic``; in smoke runs (one call, no stats) the
    time is that single call, measured here.
    """
    def run(fn, setup=None, rounds: int = 5, warmup_rounds: int = 1):
        start = time.perf_counter()
        result = benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds)
        elapsed = time.perf_counter() - start
        if benchmark.stats is not None:
            return benchmark.stats.stats.min, result
        return elapsed, result
    return run
