"""Queue benchmarks (group "queue"): Q1, Q2, Q3 (docs/cli.md, "Queue").

Whole-process timings of the installed console scripts in a private directory, cache, HOME,
TMPDIR and runtime directory, each against a reference measured in the same run:

- Q1: 200 trivial shell jobs (``echo i > out_i.txt``) submitted with ``seamless-run --qsubmit``
  to ``seamless-queue --workers 2``, then ``seamless-queue-finish``; from the server's start to
  finish's exit. Reference: task-spooler (``tsp -S 2``, a C job server) running the same 200 jobs,
  plus 200 starts of a bare interpreter (``-c pass``): seamless is a Python program, so each
  submission costs at least one interpreter start. Bound 2x, goal 1.3x. The raw ratios to tsp
  alone and to GNU ``parallel -j2``, and the per-job overhead over tsp in ms, are reported in
  extra_info. Skipped, with the reason, when ``tsp`` is not installed (Debian package
  ``task-spooler``; ``.ci/run`` installs it).
- Q2: one ``--qsubmit`` of a new job (a miss: sidecar created, job submitted) vs ``-c pass``,
  min of 20 each. Bound 2x.
- Q3: sleeping jobs on ``--workers N`` for N = 1, 2, 8: the most jobs that ran at once, from the
  intervals the jobs themselves logged, equals N exactly (a structural check; the time is
  reported). All jobs read a gate file whose ``.FUTURE`` sidecar the benchmark holds until
  every job is queued, so submission speed cannot limit the overlap.

Every server a benchmark starts is finished by it, or stopped with SIGTERM on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

PASS = [sys.executable, "-c", "pass"]
JOBS = 200


def _script(name: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


@pytest.fixture
def queue_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEAMLESS_", "XDG_", "TS_"))}
    for name in ("home", "tmp", "run", "work"):
        (tmp_path / name).mkdir()
    (tmp_path / "run").chmod(0o700)
    env.update(SEAMLESS_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               TMPDIR=str(tmp_path / "tmp"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
               TS_SOCKET=str(tmp_path / "run" / "tsp.socket"))
    return env, tmp_path


class _Server:
    """One ``seamless-queue`` for the benchmark's directory; stopped by ``close``."""

    def __init__(self, env, cwd, workers: int):
        self.env, self.cwd = env, cwd
        self.proc = subprocess.Popen([_script("seamless-queue"), "--workers", str(workers),
                                      "--quiet"], env=env, cwd=cwd, stdin=subprocess.DEVNULL)

    def finish(self) -> None:
        _timed_run([_script("seamless-queue-finish")], self.env, self.cwd, limit=600)
        assert self.proc.wait(timeout=60) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _timed_run(argv, env, cwd, limit: float = 120) -> bytes:
    """Run ``argv`` to its end and return its stdout, waiting with a plain ``wait()``:
    ``subprocess.run(timeout=...)`` polls with sleeps of 0.5 to 16 ms, which would add up to
    16 ms to every short command timed here (seamless's and the peers' alike). A watchdog timer
    kills a command that hangs; a non-zero exit fails the benchmark."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    try:
        out, _ = proc.communicate()
    finally:
        watchdog.cancel()
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}"
    return out


def _submit(command: str, env, cwd) -> None:
    _timed_run([_script("seamless-run"), "--qsubmit", command], env, cwd)


def _fresh_dir(base, name: str):
    path = base / name
    path.mkdir()
    return path


def _outputs_ok(work, n: int) -> None:
    for i in range(n):
        assert (work / f"out_{i}.txt").read_text() == f"{i}\n", i


def _seamless_batch(env, work, n: int) -> float:
    start = time.perf_counter()
    server = _Server(env, work, workers=2)
    try:
        for i in range(n):
            _submit(f"echo {i} > out_{i}.txt", env, work)
        server.finish()
    finally:
        server.close()
    elapsed = time.perf_counter() - start
    _outputs_ok(work, n)
    return elapsed


def _tsp_batch(env, work, n: int) -> float:
    tsp = shutil.which("tsp")
    start = time.perf_counter()
    _timed_run([tsp, "-S", "2"], env, work)
    ids = [_timed_run([tsp, "sh", "-c", f"echo {i} > out_{i}.txt"], env, work).strip()
           for i in range(n)]
    for job in ids:
        _timed_run([tsp, "-w", job], env, work)
    elapsed = time.perf_counter() - start
    _timed_run([tsp, "-K"], env, work)
    _outputs_ok(work, n)
    return elapsed


def _parallel_batch(env, work, n: int) -> float:
    start = time.perf_counter()
    _timed_run(["parallel", "--will-cite", "-j2", "echo {} > out_{}.txt", ":::",
                *map(str, range(n))], env, work, limit=300)
    elapsed = time.perf_counter() - start
    _outputs_ok(work, n)
    return elapsed


def _starts(argv, env, cwd, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@pytest.mark.benchmark(group="queue")
@pytest.mark.skipif(shutil.which("tsp") is None,
                    reason="task-spooler (`tsp`, Debian package task-spooler) is not installed")
def test_q1_queued_jobs_vs_task_spooler(benchmark, queue_env, record_ratio):
    """Q1: 200 queued trivial jobs, --workers 2, vs tsp -S 2 plus 200 interpreter starts."""
    env, base = queue_env
    n = 4 if benchmark.disabled else JOBS
    tsp_s = _tsp_batch(env, _fresh_dir(base, "tsp"), n)
    starts_s = _starts(PASS, env, base / "work", n)
    rounds = iter(range(100))
    subject = benchmark.pedantic(
        lambda: _seamless_batch(env, _fresh_dir(base, f"seamless-{next(rounds)}"), n),
        rounds=1, iterations=1)
    info = benchmark.extra_info
    info.update(jobs=n, tsp_s=tsp_s, interpreter_starts_s=starts_s, ratio_to_tsp=subject / tsp_s,
                overhead_over_tsp_ms_per_job=(subject - tsp_s) / n * 1e3)
    if shutil.which("parallel"):
        parallel_s = _parallel_batch(env, _fresh_dir(base, "parallel"), n)
        info.update(gnu_parallel_s=parallel_s, ratio_to_gnu_parallel=subject / parallel_s)
    else:
        info["gnu_parallel"] = "not installed (Debian package parallel)"
    record_ratio(benchmark, tsp_s + starts_s, subject, bound_now=2.0, goal=1.3)


@pytest.mark.benchmark(group="queue")
def test_q2_one_qsubmit_vs_bare_interpreter(benchmark, queue_env, record_ratio):
    """Q2: one --qsubmit of a new job vs `-c pass`, min of 20 each."""
    env, base = queue_env
    work = base / "work"
    n = 1 if benchmark.disabled else 20
    server = _Server(env, work, workers=2)
    try:
        _submit("echo warm > warm.txt", env, work)  # the server is listening from here on
        reference = min(_starts(PASS, env, work, 1) for _ in range(n))
        counter = iter(range(1000))

        def one_submit():
            return min(_timed_submit(f"echo {next(counter)} > q2_{i}.txt", env, work)
                       for i in range(n))

        subject = benchmark.pedantic(one_submit, rounds=1, iterations=1)
        server.finish()
    finally:
        server.close()
    record_ratio(benchmark, reference, subject, bound_now=2.0, goal=1.5)


def _timed_submit(command: str, env, cwd) -> float:
    start = time.perf_counter()
    _submit(command, env, cwd)
    return time.perf_counter() - start


def _peak(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.benchmark(group="queue")
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_q3_overlap_equals_workers(benchmark, queue_env, workers):
    """Q3: 2N + 1 jobs sleeping 0.4 s on --workers N, released together: at most, and at some
    moment exactly, N ran at once (intervals logged by the jobs themselves, in ns)."""
    from seamless.shell.future import Sidecar

    env, base = queue_env
    work = base / "work"
    jobs = 2 * workers + 1
    (work / "gate.txt").write_text("open\n")

    def batch():
        server = _Server(env, work, workers=workers)
        gate = Sidecar.create(str(work / "gate.txt"))
        try:
            for i in range(jobs):
                _submit(f"cat gate.txt > /dev/null; s=$(date +%s%N); sleep 0.4; "
                        f"echo $s $(date +%s%N) > iv_{i}.txt", env, work)
            gate.remove()
            server.finish()
        finally:
            gate.remove()
            server.close()

    benchmark.pedantic(batch, rounds=1, iterations=1)
    intervals = [tuple(map(int, (work / f"iv_{i}.txt").read_text().split()))
                 for i in range(jobs)]
    peak = _peak(intervals)
    benchmark.extra_info.update(workers=workers, jobs=jobs, peak_overlap=peak)
    assert peak == workers, (peak, workers)
