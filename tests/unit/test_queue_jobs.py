"""The queue server's job table (seamless/queue/jobs.py) driven by random events.

A model world submits jobs with inputs and outputs drawn from a few absolute paths (one of them
a directory holding another), identity keys that make some jobs twins, and foreign sidecars;
it starts nothing itself but carries out the table's actions, lets running jobs exit (success,
cache hit, failure, signal) or fail to start, removes or stales foreign sidecars, records hits
and finishes. After every step the module docstring's invariants must hold; at the end the
world drains and every job has ended exactly once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from seamless.queue.jobs import (
    CACHED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    UNFINISHED,
    WAITING,
    Drained,
    End,
    JobSpec,
    JobTable,
    Start,
)

PATHS = ["/w/a", "/w/b", "/w/c", "/w/d", "/w/dir", "/w/dir/x"]
FOREIGN = ["/f/1", "/f/2"]
paths = st.lists(st.sampled_from(PATHS), max_size=3, unique=True)


def _overlap(inputs, outputs) -> bool:
    return any(i == o or i.startswith(o + "/") or o.startswith(i + "/")
               for i in inputs for o in outputs)


class JobTableMachine(RuleBasedStateMachine):
    @initialize(workers=st.integers(1, 4))
    def setup(self, workers):
        self.table = JobTable(workers)
        self.now = 0.0
        self.ends = {}  # job id -> times End was seen
        self.started = set()
        self.producers = {}  # job id -> producer ids the model expects it to wait for
        self.drained = 0

    # -- carrying out actions -----------------------------------------------------------

    def _apply(self, actions):
        ready_before = set(self.table.ready_ids())
        starts = [a.job for a in actions if isinstance(a, Start)]
        assert [j.id for j in starts] == sorted(j.id for j in starts)
        for action in actions:
            if isinstance(action, Start):
                job = action.job
                assert job.id not in self.started, "a job started twice"
                self.started.add(job.id)
                for pid in self.producers[job.id]:
                    assert self.table.jobs[pid].state in (DONE, CACHED), (
                        f"job {job.id} started while producer {pid} is "
                        f"{self.table.jobs[pid].state}")
                twins = [j for j in self.table.jobs.values()
                         if j.key is not None and j.key == job.key and j is not job
                         and j.state == RUNNING and j.id in self.started]
                assert not twins, "identical jobs run at once"
            elif isinstance(action, End):
                self.ends[action.job.id] = self.ends.get(action.job.id, 0) + 1
                assert action.job.state in (DONE, CACHED, FAILED)
            else:
                assert isinstance(action, Drained)
                self.drained += 1
        # FIFO: nothing started ahead of a job that was ready before it and is still queued.
        left = set(self.table.ready_ids())
        for job in starts:
            assert not any(r < job.id for r in left & ready_before), "FIFO broken"

    def _tick(self):
        self.now += 0.25

    # -- rules ----------------------------------------------------------------------------

    @precondition(lambda self: self.table.accepting)
    @rule(inputs=paths, outputs=paths, key=st.sampled_from([None, "k1", "k2"]),
          foreign=st.lists(st.sampled_from(FOREIGN), max_size=2, unique=True))
    def submit(self, inputs, outputs, key, foreign):
        self._tick()
        expected = {j.id for j in self.table.jobs.values()
                    if j.state in UNFINISHED and _overlap(inputs, j.outputs)}
        failed_before = self._failed_latest_writer(inputs)
        job, actions = self.table.submit(
            JobSpec("cmd", "/w", tuple(inputs), tuple(outputs), tuple(foreign), key), self.now)
        self.producers[job.id] = expected
        self._apply(actions)
        if failed_before:
            assert job.state == FAILED and job.id not in self.started, (
                f"job {job.id} reads an output whose latest writer had failed")
            assert job.reason.startswith("input ")

    def _failed_latest_writer(self, inputs) -> bool:
        """An input with no unfinished producer whose latest ended writer failed."""
        for path in inputs:
            writers = [j for j in self.table.jobs.values() if _overlap([path], j.outputs)]
            if any(j.state in UNFINISHED for j in writers):
                continue
            if writers and max(writers, key=lambda j: j.id).state == FAILED:
                return True
        return False

    @rule(data=st.data(), outcome=st.sampled_from(["ok", "hit", "exit", "signal"]))
    def exit_running(self, data, outcome):
        running = [j for j in self.table.jobs.values() if j.state == RUNNING]
        if not running:
            return
        job = data.draw(st.sampled_from(running))
        self._tick()
        code, sig = {"ok": (0, None), "hit": (0, None), "exit": (3, None),
                     "signal": (None, 9)}[outcome]
        self._apply(self.table.exited(job, code, sig, outcome == "hit", self.now))
        assert job.state == {"ok": DONE, "hit": CACHED}.get(outcome, FAILED)

    @rule(data=st.data())
    def start_fails(self, data):
        running = [j for j in self.table.jobs.values() if j.state == RUNNING]
        if running:
            job = data.draw(st.sampled_from(running))
            self._apply(self.table.start_failed(job, "cannot start", self.now))
            assert job.state == FAILED

    @rule(data=st.data(), stale=st.booleans())
    def foreign_event(self, data, stale):
        waiting = self.table.waiting_on_foreign()
        if not waiting:
            return
        job = data.draw(st.sampled_from(waiting))
        self._tick()
        if stale:
            self._apply(self.table.foreign_stale(job, "x.FUTURE is stale", self.now))
            assert job.state == FAILED and job.id not in self.started
        else:
            target = data.draw(st.sampled_from(sorted(job.foreign)))
            self._apply(self.table.foreign_gone(job, target, self.now))

    @precondition(lambda self: self.table.accepting)
    @rule()
    def record(self):
        job = self.table.record("cmd", "/w", self.now)
        assert job.state == CACHED
        self.ends[job.id] = 1
        self.producers[job.id] = set()

    @rule()
    def finish(self):
        self._apply(self.table.finish(self.now))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def bounds(self):
        if not hasattr(self, "table"):
            return
        jobs = self.table.jobs.values()
        running = sum(j.state == RUNNING for j in jobs)
        queued = sum(j.state == QUEUED for j in jobs)
        assert running == self.table.running <= self.table.workers
        assert queued == len(self.table.ready_ids())
        if queued:
            assert running == self.table.workers, "a ready job waits while a slot is free"
        for job in jobs:
            assert self.ends.get(job.id, 0) == (job.state not in UNFINISHED)
            if job.state == WAITING:
                assert job.producers or job.foreign or job.twin is not None
            if job.state == FAILED and job.id not in self.started:
                assert job.reason
            failed = [p for p in self.producers[job.id] if self.table.jobs[p].state == FAILED]
            if failed:
                assert job.state == FAILED and job.id not in self.started
        assert self.table.unfinished == sum(j.state in UNFINISHED for j in jobs)
        assert self.drained <= 1
        if self.drained:
            assert not self.table.accepting and self.table.unfinished == 0

    def teardown(self):
        if not hasattr(self, "table"):
            return
        self._apply(self.table.finish(self.now))
        for _ in range(1000):
            if self.drained:
                break
            running = [j for j in self.table.jobs.values() if j.state == RUNNING]
            foreign = self.table.waiting_on_foreign()
            if running:
                self._apply(self.table.exited(running[0], 0, None, False, self.now))
            elif foreign:
                job = foreign[0]
                self._apply(self.table.foreign_gone(job, sorted(job.foreign)[0], self.now))
            else:
                raise AssertionError("unfinished jobs but nothing can move: "
                                     f"{[j for j in self.table.jobs.values()]}")
            self.bounds()
        assert self.drained == 1
        assert all(n == 1 for n in self.ends.values())
        assert set(self.ends) == set(self.table.jobs)


JobTableMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestJobTable = JobTableMachine.TestCase


def _table_with(workers=1):
    return JobTable(workers)


def test_dependent_fails_naming_input_and_producer():
    table = _table_with()
    slow, actions = table.submit(JobSpec("bash slow.sh data/a.txt > job1.txt", "/w",
                                         ("/w/slow.sh", "/w/data/a.txt"), ("/w/job1.txt",)), 0.0)
    assert actions == [Start(slow)]
    sort, _ = table.submit(JobSpec("sort job1.txt > job2.txt", "/w", ("/w/job1.txt",),
                                   ("/w/job2.txt",)), 0.0)
    tac, _ = table.submit(JobSpec("tac job2.txt", "/w", ("/w/job2.txt",), ()), 0.0)
    assert sort.state == tac.state == WAITING
    actions = table.exited(slow, 1, None, False, 1.0)
    assert [type(a) for a in actions] == [End, End, End]
    assert sort.reason == ("input job1.txt was not produced: job 1 "
                           "(`bash slow.sh data/a.txt > job1.txt`) failed (exit 1)")
    assert tac.reason.startswith("input job2.txt was not produced: job 2 ")
    assert tac.reason.endswith("failed (not run: input job1.txt was not produced)")
    assert table.finish(2.0) == [Drained()]


def test_a_job_submitted_after_its_producer_failed_fails_too():
    table = _table_with()
    broken, _ = table.submit(JobSpec("bash broken.sh > first.txt", "/w", (), ("/w/first.txt",)),
                             0.0)
    table.exited(broken, 1, None, False, 1.0)
    late, actions = table.submit(JobSpec("sort first.txt", "/w", ("/w/first.txt",), ()), 2.0)
    assert actions == [End(late)] and late.state == FAILED
    assert late.reason == ("input first.txt was not produced: job 1 "
                           "(`bash broken.sh > first.txt`) failed (exit 1)")
    fixed, _ = table.submit(JobSpec("bash fixed.sh > first.txt", "/w", (), ("/w/first.txt",)),
                            3.0)
    table.exited(fixed, 0, None, False, 4.0)
    again, actions = table.submit(JobSpec("sort first.txt", "/w", ("/w/first.txt",), ()), 5.0)
    assert actions == [Start(again)]


def test_waiting_job_holds_back_no_later_job():
    table = _table_with(1)
    first, actions = table.submit(JobSpec("a", "/w", (), ("/w/x",)), 0.0)
    dependent, _ = table.submit(JobSpec("b", "/w", ("/w/x",), ()), 0.0)
    later, _ = table.submit(JobSpec("c", "/w", (), ()), 0.0)
    assert (first.state, dependent.state, later.state) == (RUNNING, WAITING, QUEUED)
    actions = table.exited(first, 0, None, False, 1.0)
    # The dependent was submitted before "c": once ready, it goes first.
    assert actions == [End(first), Start(dependent)]


def test_twins_never_run_at_once_and_a_failed_twin_releases():
    table = _table_with(2)
    one, _ = table.submit(JobSpec("x", "/w", key="tf"), 0.0)
    two, actions = table.submit(JobSpec("x", "/w", key="tf"), 0.0)
    assert actions == [] and two.state == WAITING
    assert table.exited(one, 2, None, False, 1.0) == [End(one), Start(two)]


def test_input_inside_output_directory_and_directory_holding_output():
    table = _table_with(4)
    producer, _ = table.submit(JobSpec("mk", "/w", (), ("/w/out",)), 0.0)
    inside, _ = table.submit(JobSpec("cat out/f", "/w", ("/w/out/f",), ()), 0.0)
    writer, _ = table.submit(JobSpec("w", "/w", (), ("/w/d/f",)), 0.0)
    holder, _ = table.submit(JobSpec("ls d", "/w", ("/w/d",), ()), 0.0)
    assert inside.producers == {producer.id: "/w/out/f"}
    assert holder.producers == {writer.id: "/w/d"}
