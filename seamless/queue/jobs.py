"""The queue server's job table: which job runs when, as a plain state machine (no I/O).

The server (``server.py``) owns sockets, processes, files and clocks; this module owns every
decision about jobs. The server turns what it sees into *events* (method calls, the time passed
in as ``now``) and carries out the *actions* they return, in order::

    events (server -> JobTable)                   actions (JobTable -> server)
    submit(spec, now) -> job                      Start(job)    launch its runner process
    record(command, cwd, now) -> job              End(job)      the job reached done, cached or
    exited(job, code, signal, cached, now)                      failed: remove its sidecars,
    foreign_gone(job, target, now)                              log it (a job that ran ends
    foreign_stale(job, message, now)                            through ``exited``, one that
    start_failed(job, reason, now)                              never ran through End only)
    finish(now)
    stop()                                        (nothing starts any more: the server stops)
                                                  Drained       finishing, and nothing is left

States (docs/design/cli-and-queue.md, "Job states")::

    waiting ──(producers ended, foreign sidecars gone, twin ended)──► queued ──Start──► running
       │                                                                                 │
       └── a producer failed / a foreign sidecar went stale ──► failed      exited ──► done,
                                                                                 cached, failed
    record ──► cached

- A job *waits* while an input is an output of an unfinished job of this server submitted
  before it (a *producer*, matched by absolute path, also into and out of output directories),
  while a foreign ``.FUTURE`` sidecar of an input is present, or while an identical job (its
  *twin*: same transformation, or for a job whose transformation is unknown the same cwd,
  command, vars, sandbox, captures and explicit inputs) is unfinished. A waiting job takes no
  slot and holds back no later job.
- Ready jobs start in submission order (a heap of job ids), at most ``workers`` at once.
- A producer that fails fails its dependents, transitively, without running them; so does a
  producer that had already failed when the dependent was submitted (the latest ended job of
  this server writing that path failed, and no unfinished one writes it). A twin that fails
  only releases the later job, which then runs.
- After ``finish`` no submission is accepted; ``Drained`` comes once when no job is waiting,
  queued or running.

Invariants (tests/unit/test_queue_jobs.py checks them after every event): never more than
``workers`` running; a ready job never waits while a slot is free; ready jobs start in
submission order; a dependent never runs after one of its producers failed; each job ends
exactly once.
"""

from __future__ import annotations

import heapq
import os
from typing import NamedTuple

__all__ = [
    "JobTable", "Job", "JobSpec", "Start", "End", "Drained", "WAITING", "QUEUED", "RUNNING",
    "DONE", "CACHED", "FAILED", "UNFINISHED",
]

WAITING, QUEUED, RUNNING = "waiting", "queued", "running"
DONE, CACHED, FAILED = "done", "cached", "failed"
UNFINISHED = frozenset((WAITING, QUEUED, RUNNING))
_COMMAND_SHOWN = 60  # characters of a producer's command quoted in a dependent's failure


class Start(NamedTuple):
    job: "Job"


class End(NamedTuple):
    job: "Job"


class Drained(NamedTuple):
    pass


class JobSpec(NamedTuple):
    """What a submission says about a job, as far as scheduling goes.

    ``inputs`` and ``outputs`` are absolute paths; ``foreign``: targets whose ``.FUTURE``
    sidecar, written by someone else, was present at submission; ``key``: the identity that
    makes two jobs twins; ``payload``: whatever the server needs to run it (kept, not read).
    """

    command: str
    cwd: str
    inputs: tuple = ()
    outputs: tuple = ()
    foreign: tuple = ()
    key: object = None
    payload: object = None


class Job:
    """One job's books. ``exit``/``signal``: how its runner ended; ``reason``: why it failed
    when it never ran or ran into trouble the exit status does not tell."""

    __slots__ = ("id", "command", "cwd", "inputs", "outputs", "key", "payload", "state",
                 "producers", "foreign", "twin", "dependents", "started", "ended", "exit",
                 "signal", "reason", "stderr_tail")

    def __init__(self, job_id: int, spec: JobSpec):
        self.id = job_id
        self.command = spec.command
        self.cwd = spec.cwd
        self.inputs = tuple(spec.inputs)
        self.outputs = tuple(spec.outputs)
        self.key = spec.key
        self.payload = spec.payload
        self.state = WAITING
        self.producers = {}  # producer job id -> the input path it produces
        self.foreign = set(spec.foreign)
        self.twin = None  # id of the identical unfinished job this one waits for
        self.dependents = []  # ids of jobs waiting on this one (as producer or twin)
        self.started = None
        self.ended = None
        self.exit = None
        self.signal = None
        self.reason = None
        self.stderr_tail = ""

    @property
    def seconds(self):
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def __repr__(self):
        return f"Job({self.id}, {self.state})"


def _ancestors(path: str):
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        yield parent
        path = parent


def _shown(command: str) -> str:
    if len(command) <= _COMMAND_SHOWN:
        return command
    half = (_COMMAND_SHOWN - 5) // 2
    return f"{command[:half]} ... {command[-half:]}"


def _relative_to(path: str, cwd: str) -> str:
    if path.startswith(cwd.rstrip("/") + "/"):
        return path[len(cwd.rstrip("/")) + 1:]
    return path


class JobTable:
    """Every job of one server, and the decisions about them (module docstring)."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.jobs = {}  # id -> Job, in submission order
        self.accepting = True
        self._next_id = 1
        self._ready = []  # heap of queued job ids
        self._running = 0
        self._unfinished = 0
        self._drained_told = False
        self._stopped = False
        self._writes = {}  # absolute output path -> ids of unfinished jobs writing it
        self._writes_below = {}  # directory -> ids of unfinished jobs writing inside it
        self._keys = {}  # key -> id of the latest unfinished job with that key
        self._last_writer = {}  # output path -> (id, failed) of the latest ended job writing it
        self._last_below = {}  # directory -> (id, failed) of the latest ended job writing inside

    # -- queries ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self._running

    @property
    def unfinished(self) -> int:
        return self._unfinished

    def ready_ids(self) -> list:
        """Ids of queued jobs, in the order they will start."""
        return sorted(self._ready)

    def waiting_on_foreign(self) -> list:
        """Waiting jobs with a foreign sidecar still present (the server polls these)."""
        return [j for j in self.jobs.values() if j.state == WAITING and j.foreign]

    # -- events -------------------------------------------------------------------------

    def submit(self, spec: JobSpec, now: float):
        """A new job; ``(job, actions)``. The caller checked ``accepting``."""
        if not self.accepting:
            raise RuntimeError("the job table is finishing")
        job = Job(self._next_id, spec)
        self._next_id += 1
        self.jobs[job.id] = job
        self._unfinished += 1
        for path in job.inputs:
            for pid in self._producers_of(path):
                job.producers.setdefault(pid, path)
        if spec.key is not None and spec.key in self._keys:
            job.twin = self._keys[spec.key]
        for pid in set(job.producers) | ({job.twin} if job.twin is not None else set()):
            self.jobs[pid].dependents.append(job.id)
        self._register_writes(job)
        if spec.key is not None:
            self._keys[spec.key] = job.id
        failed = self._failed_writer(job)
        if failed is not None:
            writer, path = failed
            job.reason = _not_produced(path, job.cwd, writer)
            return job, self._end(job, FAILED, now) + self._dispatch(now)
        self._maybe_ready(job)
        return job, self._dispatch(now)

    def record(self, command: str, cwd: str, now: float) -> Job:
        """A cache hit the submitter completed itself: a job that is ``cached`` at once."""
        job = Job(self._next_id, JobSpec(command, cwd))
        self._next_id += 1
        self.jobs[job.id] = job
        job.state = CACHED
        job.started = job.ended = now
        return job

    def exited(self, job: Job, code, signal, cached: bool, now: float) -> list:
        """The runner of a running job ended: ``code`` its exit status, or ``signal``."""
        assert job.state == RUNNING, job
        self._running -= 1
        job.exit, job.signal = code, signal
        if code == 0 and signal is None:
            state = CACHED if cached else DONE
        else:
            state = FAILED
        actions = self._end(job, state, now)
        return actions + self._dispatch(now)

    def start_failed(self, job: Job, reason: str, now: float) -> list:
        """A ``Start`` the server could not carry out (no runner process)."""
        assert job.state == RUNNING, job
        self._running -= 1
        job.reason = reason
        return self._end(job, FAILED, now) + self._dispatch(now)

    def foreign_gone(self, job: Job, target: str, now: float) -> list:
        """A foreign sidecar of ``job``'s input ``target`` was removed by its writer."""
        if job.state != WAITING or target not in job.foreign:
            return []
        job.foreign.discard(target)
        self._maybe_ready(job)
        return self._dispatch(now)

    def foreign_stale(self, job: Job, message: str, now: float) -> list:
        """A foreign sidecar of a waiting job went stale: the job fails without running."""
        if job.state != WAITING:
            return []
        job.reason = message
        return self._end(job, FAILED, now) + self._dispatch(now)

    def finish(self, now: float) -> list:
        """Stop accepting; ``Drained`` now or once the last job ends."""
        self.accepting = False
        return self._drain_check()

    def stop(self) -> None:
        """The server is stopping on a signal: no job starts any more (they stay unfinished)."""
        self.accepting = False
        self._stopped = True

    # -- internals ----------------------------------------------------------------------

    def _producers_of(self, path: str):
        found = set(self._writes.get(path, ()))
        found.update(self._writes_below.get(path, ()))  # an input directory holding outputs
        for parent in _ancestors(path):  # an input inside an output directory
            found.update(self._writes.get(parent, ()))
        return found

    def _failed_writer(self, job: Job):
        """``(writer, path)`` when an input with no unfinished producer was last written (or
        not) by a job of this server that failed: a job submitted after its producer already
        failed must not run on a missing or old file either."""
        for path in job.inputs:
            if any(p == path for p in job.producers.values()):
                continue
            seen = [self._last_writer.get(p) for p in (path, *_ancestors(path))]
            seen.append(self._last_below.get(path))
            latest = max((w for w in seen if w is not None), default=None)
            if latest is not None and latest[1]:
                return self.jobs[latest[0]], path
        return None

    def _register_writes(self, job: Job) -> None:
        for path in job.outputs:
            self._writes.setdefault(path, set()).add(job.id)
            for parent in _ancestors(path):
                self._writes_below.setdefault(parent, set()).add(job.id)

    def _forget_writes(self, job: Job) -> None:
        for path in job.outputs:
            self._discard(self._writes, path, job.id)
            for parent in _ancestors(path):
                self._discard(self._writes_below, parent, job.id)
        if job.key is not None and self._keys.get(job.key) == job.id:
            twin = self._live_twin(job)
            if twin is None:
                del self._keys[job.key]
            else:  # it ended without running (a failed input) while its twin runs
                self._keys[job.key] = twin

    def _live_twin(self, job: Job):
        """The nearest unfinished job in ``job``'s chain of twins, or None."""
        twin = job.twin
        while twin is not None and self.jobs[twin].state not in UNFINISHED:
            twin = self.jobs[twin].twin
        return twin

    @staticmethod
    def _discard(index: dict, path: str, job_id: int) -> None:
        ids = index.get(path)
        if ids is not None:
            ids.discard(job_id)
            if not ids:
                del index[path]

    def _maybe_ready(self, job: Job) -> None:
        if (job.state == WAITING and not job.producers and not job.foreign
                and job.twin is None):
            job.state = QUEUED
            heapq.heappush(self._ready, job.id)

    def _dispatch(self, now: float) -> list:
        actions = []
        while self._ready and self._running < self.workers and not self._stopped:
            job = self.jobs[heapq.heappop(self._ready)]
            job.state = RUNNING
            job.started = now
            self._running += 1
            actions.append(Start(job))
        return actions

    def _end(self, job: Job, state: str, now: float) -> list:
        """``job`` reaches its final ``state``; release or fail its dependents."""
        assert job.state in (WAITING, RUNNING), job  # a queued job never ends before it starts
        job.state = state
        job.ended = now
        self._unfinished -= 1
        self._forget_writes(job)
        mark = (job.id, state == FAILED)
        for path in job.outputs:
            _keep_latest(self._last_writer, path, mark)
            for parent in _ancestors(path):
                _keep_latest(self._last_below, parent, mark)
        actions = [End(job)]
        for dep_id in job.dependents:
            dep = self.jobs[dep_id]
            if dep.state != WAITING:
                continue
            path = dep.producers.pop(job.id, None)
            if path is not None and state == FAILED:
                dep.reason = _not_produced(path, dep.cwd, job)
                actions.extend(self._end(dep, FAILED, now))
                continue
            if dep.twin == job.id:
                dep.twin = self._live_twin(job)
                if dep.twin is not None:
                    self.jobs[dep.twin].dependents.append(dep.id)
            self._maybe_ready(dep)
        return actions + self._drain_check()

    def _drain_check(self) -> list:
        if not self.accepting and self._unfinished == 0 and not self._drained_told:
            self._drained_told = True
            return [Drained()]
        return []


def _keep_latest(index: dict, path: str, mark: tuple) -> None:
    if mark[0] > index.get(path, (0, False))[0]:
        index[path] = mark


def _not_produced(path: str, cwd: str, producer: Job) -> str:
    return (f"input {_relative_to(path, cwd)} was not produced: job {producer.id} "
            f"(`{_shown(producer.command)}`) failed ({describe_failure(producer)})")


def describe_failure(job: Job) -> str:
    """``exit 3``, ``killed by SIGKILL``, or the reason a job failed without an exit status."""
    if job.signal is not None:
        from seamless.pool.supervise import signal_name

        return f"killed by {signal_name(job.signal)}"
    if job.exit is not None:
        return f"exit {job.exit}"
    if job.reason and job.reason.startswith("input "):
        return "not run: " + job.reason.split(":", 1)[0]
    return job.reason or "not run"
