"""The pool's scheduling state machine (seamless/pool/scheduling.py) in a model world: fake
workers with an inbox, a "started word" and held results, fake jobs with the real
claim/unclaim/drop, and a float clock.  A random interleaving of submits, starts, results,
revokes, deaths, cancellations and ticks must keep every invariant of the module docstring:
a body never runs twice, every job ends exactly once, jobs leave the queue in order."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from seamless.execution.job import Job
from seamless.pool.scheduling import (
    MAX_STAGED,
    MAX_START_FAILURES,
    Fail,
    Forget,
    Kill,
    Launch,
    Revoke,
    Scheduler,
    Send,
)

QUEUED, RUNNING, FINISHED = "queued", "running", "finished"
TINY = 1e-5
LONG = 1.0


class FakeJob(Job):
    """A real ``Job`` (so claim/unclaim/drop are the dispatcher's own) with a test identity."""

    def __init__(self, seq: int, nested: bool):
        super().__init__(None, None, None)
        self.seq = seq
        self.nested = nested
        self.key = (0 if nested else 1, seq)  # the queue order the scheduler promises
        self.handles.append("user")

    def __repr__(self):
        return f"job{self.seq}{'n' if self.nested else ''}"


class FakeWorker:
    """One worker slot: the current process's inbox, running body and held results; the
    started word belongs to the slot and is never reset."""

    def __init__(self):
        self.started_word = 0
        self.alive = False
        self.reset()

    def reset(self):
        self.ready = False
        self.doomed = False  # a Kill was sent
        self.inbox: list = []  # (rid, job), not started
        self.running = None  # (rid, job)
        self.outbox: list = []  # (rid, duration): finished, result not delivered yet
        self.revokes: list = []  # rids, in the order the revokes arrived
        self.reported_upto = 0  # a revoke answer said this rid (so every one before) started

    def holds(self, rid) -> bool:
        return (any(r == rid for r, _ in self.inbox) or (self.running or (None,))[0] == rid
                or any(r == rid for r, _ in self.outbox))


class World:
    """The I/O thread and the worker processes around one ``Scheduler``; every event goes
    through here, every action is carried out and checked."""

    def __init__(self, n: int):
        self.n = n
        self.sched = Scheduler(n)
        self.now = 0.0
        self.workers = [FakeWorker() for _ in range(n)]
        self.jobs: list = []
        self.ends: dict = {}  # job -> how it ended
        self.started: set = set()  # jobs whose body started
        self.started_rids: set = set()
        self.rid_job: dict = {}
        self.rid_worker: dict = {}
        self.start_log: list = []
        self.abandoned: set = set()
        self.log: list = []  # every action, for the example tests
        self.failed_starts = 0  # workers in a row that died before they were ready
        self.broken = False
        for i in range(n):
            self._launch(i)

    # ------------------------------------------------------------ events

    def submit(self, nested: bool = False) -> FakeJob:
        job = FakeJob(len(self.jobs), nested)
        self.jobs.append(job)
        self.apply(self.sched.submitted(job, nested, self.now))
        if self.broken:
            assert self.ends[job] == "fail-broken", "a broken pool must fail new work at once"
        return job

    def ready(self, i: int):
        assert self.workers[i].alive and not self.workers[i].ready
        self.workers[i].ready = True
        self.failed_starts = 0
        self.apply(self.sched.worker_ready(i, self.now))

    def start(self, i: int):
        w = self.workers[i]
        assert w.running is None and w.inbox
        rid, job = w.inbox.pop(0)
        assert job not in self.started, f"the body of {job} started twice"
        w.running = (rid, job)
        w.started_word = rid
        self.started.add(job)
        self.started_rids.add(rid)
        self.start_log.append(job)

    def finish(self, i: int, duration, deliver: bool = True):
        w = self.workers[i]
        rid, _ = w.running
        w.running = None
        w.outbox.append((rid, duration))
        while deliver and w.outbox:
            self.deliver(i)

    def deliver(self, i: int):
        rid, duration = self.workers[i].outbox.pop(0)
        job, actions = self.sched.finished(i, rid, duration, self.now)
        if job is None:
            assert self.rid_job[rid] in self.ends, f"the result of rid {rid} was not wanted"
        else:
            assert job is self.rid_job[rid] and self.rid_worker[rid] == i
            self._end(job, "value")
        self.apply(actions)

    def answer_revoke(self, i: int):
        w = self.workers[i]
        rid = w.revokes.pop(0)
        dropped = any(r == rid for r, _ in w.inbox)
        w.inbox = [(r, j) for r, j in w.inbox if r != rid]
        if not dropped:
            w.reported_upto = max(w.reported_upto, rid)
        self.apply(self.sched.revoked(i, rid, dropped, self.now))

    def die(self, i: int):
        w = self.workers[i]
        assert w.alive
        if not w.ready:
            self.failed_starts += 1
            self.broken |= self.failed_starts >= MAX_START_FAILURES
        w.alive = False
        w.reset()
        self.apply(self.sched.worker_died(i, w.started_word, self.now))

    def abandon(self, job):
        """The user cancels: the job loses its handle; the dispatcher drops a queued job
        itself and tells the backend about a claimed one (dispatch.withdraw)."""
        assert job.detach("user")
        self.abandoned.add(job)
        if job.state == QUEUED:
            assert job.drop()
            self._end(job, "dropped")
        elif job.state == RUNNING:
            self.apply(self.sched.abandoned(job))

    def advance(self, dt: float = 0.0, to_deadline: bool = False):
        deadline = self.sched.deadline()
        if to_deadline and deadline is not None:
            self.now = max(self.now, deadline)
        else:
            self.now += dt
        deadline = self.sched.deadline()
        if deadline is not None and self.now >= deadline:
            self.apply(self.sched.tick(self.now))
            self.check_after_tick()

    # ------------------------------------------------------------ actions

    def _launch(self, i: int):
        w = self.workers[i]
        assert not w.alive, f"Launch({i}) for a live worker"
        w.alive = True
        w.reset()
        self.sched.worker_launched(i)

    def _end(self, job, how: str):
        assert job not in self.ends, f"{job} ended twice: {self.ends[job]}, then {how}"
        self.ends[job] = how
        with job.lock:
            job.state = FINISHED

    def apply(self, actions: list):
        sent = []
        for action in actions:
            self.log.append(action)
            if isinstance(action, Send):
                w = self.workers[action.worker]
                assert w.alive and w.ready and not w.doomed, f"{action} to worker {w.__dict__}"
                for rid, job in action.items:
                    assert rid not in self.rid_job
                    assert job not in self.started, f"{job} sent again after its body started"
                    assert job not in self.ends and job.state == RUNNING
                    self.rid_job[rid] = job
                    self.rid_worker[rid] = action.worker
                    w.inbox.append((rid, job))
                    sent.append((rid, job))
            elif isinstance(action, Revoke):
                w = self.workers[action.worker]
                booked = {rid for rid, _ in self.sched.workers[action.worker].assigned}
                for rid in action.rids:
                    assert rid in booked and w.holds(rid), f"{action}: rid {rid} is not there"
                    # A revoke of a body known to have started can only lose; repeated at
                    # every tick it is a busy loop until the results before it arrive.
                    assert rid > w.reported_upto, \
                        f"{action}: the worker already said rid {w.reported_upto} started"
                w.revokes.extend(action.rids)
            elif isinstance(action, Kill):
                assigned = self.sched.workers[action.worker].assigned
                assert assigned and assigned[0][1] in self.abandoned, \
                    f"{action}, but its running job {assigned and assigned[0]} is wanted"
                self.workers[action.worker].doomed = True
            elif isinstance(action, Launch):
                self._launch(action.worker)
            elif isinstance(action, Fail):
                assert action.why in ("crashed", "lost", "broken")
                if action.why != "broken":
                    assert self.rid_job.get(action.rid) is action.job, action
                    assert self.rid_worker[action.rid] == action.worker, action
                    assert action.rid in self.started_rids, f"{action}: it never started"
                self._end(action.job, "fail-" + action.why)
            elif isinstance(action, Forget):
                assert action.job not in self.started, f"{action}: its body had started"
                assert action.job.state == FINISHED and not action.job.handles
                self._end(action.job, "forget")
            else:
                raise AssertionError(f"unknown action {action!r}")
        # Jobs leave the queue in order: what one event sends is in queue order and older
        # than every claimable job it leaves queued.
        keys = [job.key for _, job in sorted(sent, key=lambda item: item[0])]
        assert keys == sorted(keys), f"sent out of order: {sorted(sent, key=lambda i: i[0])}"
        if keys:
            left = [job for job in self.sched.queue if job.state == QUEUED]
            assert all(job.key > keys[-1] for job in left), \
                f"sent {sent} while older {left} stayed queued"
        # 5. staged only as deep as the recent durations allow (none while they are long),
        # 6. and never behind a head that has run longer than stuck_after().
        for index in {self.rid_worker[rid] for rid, _ in sent}:
            books = self.sched.workers[index]
            assert len(books.assigned) <= 1 + self.sched.depth
            if books.assigned[0][0] not in {rid for rid, _ in sent}:
                assert self.now - books.head_since <= self.sched.stuck_after(), \
                    f"staged on worker {index} behind a stuck head"
        self.check()

    # ------------------------------------------------------------ invariants

    def booked_on(self) -> dict:
        where: dict = {}
        for books in self.sched.workers:
            for rid, job in books.assigned:
                assert job not in where, f"{job} booked twice"
                where[job] = (books.index, rid)
        return where

    def check(self):
        sched = self.sched
        queue = list(sched.queue)
        where = self.booked_on()
        # Only MAX_START_FAILURES workers in a row dying before they were ready break the pool,
        # and a broken pool holds no work.
        assert sched.broken == self.broken
        if self.broken:
            assert not where and not [j for j in queue if j.state == QUEUED]
        # 3. nested first, then submission order; a requeued job is back at its place.
        assert len(set(queue)) == len(queue), f"a job queued twice: {queue}"
        assert [j.key for j in queue] == sorted(j.key for j in queue), \
            f"queue out of order: {queue}"
        # 1./2. a job is queued (never started), booked on one worker, or has ended.
        for job in self.jobs:
            if job in self.ends:
                assert job not in where, f"{job} ended but is still booked"
                continue
            if job.state == QUEUED:
                assert job in queue, f"{job} is lost: queued but not in the queue"
                assert job not in self.started, f"{job} started, yet is queued again"
            else:
                assert job.state == RUNNING and job in where, f"{job} is lost ({job.state})"
        for books in sched.workers:
            fake = self.workers[books.index]
            rids = [rid for rid, _ in books.assigned]
            assert rids == sorted(rids)
            for rid, job in books.assigned:
                assert self.rid_job[rid] is job and self.rid_worker[rid] == books.index
                assert fake.holds(rid), f"worker {books.index} has no rid {rid} ({job})"
            held = [r for r, _ in fake.inbox] + [r for r, _ in fake.outbox] \
                + ([fake.running[0]] if fake.running else [])
            for rid in held:
                assert rid in rids or self.rid_job[rid] in self.ends, \
                    f"worker {books.index} holds rid {rid} of {self.rid_job[rid]}, unbooked"
            assert books.ready == fake.ready
            # 7. a running job nobody wants costs its worker (unless a revoke answer is due,
            # or the pool declined the kill because that job had finished: kill_declined).
            if books.assigned and books.assigned[0][1] in self.abandoned \
                    and books.assigned[0][0] not in books.revoking \
                    and books.assigned[0][0] != books.spared:
                assert books.killing, f"worker {books.index} runs abandoned {books.assigned[0]}"
            # 4. an idle worker means nothing claimable waits.
            if books.ready and not books.killing and not books.assigned:
                assert not [j for j in queue if j.state == QUEUED], \
                    f"worker {books.index} idle while {queue} waits"
            # 6. deadline() calls for a tick before unrevoked staged work would get stuck.
            waiting = [rid for rid, _ in list(books.assigned)[1:]
                       if rid not in books.revoking and rid > fake.reported_upto]
            if waiting:
                deadline = sched.deadline()
                assert deadline is not None \
                    and deadline <= books.head_since + sched.stuck_after(), \
                    f"worker {books.index}: {waiting} staged, deadline() {deadline}"
            # 5. bounded books; nothing staged while durations are unknown.
            assert len(books.assigned) <= 1 + MAX_STAGED
            if sched._mean is None:
                assert len(books.assigned) <= 1, "staged before any duration was known"

    def check_after_tick(self):
        """6. Nothing waits staged (unrevoked) behind a head running past stuck_after(), but
        what the worker said had started already."""
        stuck = self.sched.stuck_after()
        for books in self.sched.workers:
            if len(books.assigned) > 1 and self.now - books.head_since > stuck:
                staged = [rid for rid, _ in list(books.assigned)[1:]
                          if rid > self.workers[books.index].reported_upto]
                assert set(staged) <= books.revoking, \
                    f"worker {books.index}: {staged} stay staged behind a stuck head"

    # ------------------------------------------------------------ draining

    def drain(self, limit: int = 2000):
        """Let every worker work (tiny bodies) until every submitted job has ended."""
        for _ in range(limit):
            if all(job in self.ends for job in self.jobs):
                return
            if not self._one_step():
                deadline = self.sched.deadline()
                assert deadline is not None, \
                    f"stalled: {[j for j in self.jobs if j not in self.ends]} never end"
                self.now = math.nextafter(max(self.now, deadline), math.inf)
            self.advance(1e-6)
        raise AssertionError(f"did not drain: {[j for j in self.jobs if j not in self.ends]}; "
                             f"{[(b.assigned, b.revoking, b.killing) for b in self.sched.workers]}"
                             f" {[vars(w) for w in self.workers]} {self.log[-5:]}")

    def _one_step(self) -> bool:
        for i, w in enumerate(self.workers):
            if w.alive and w.doomed:
                self.die(i)
                return True
        for i, w in enumerate(self.workers):
            if w.alive and not w.ready:
                self.ready(i)
                return True
        for i, w in enumerate(self.workers):
            if w.outbox:
                self.deliver(i)
                return True
            if w.revokes:
                self.answer_revoke(i)
                return True
            if w.running:
                self.finish(i, TINY, deliver=False)
                return True
            if w.alive and w.inbox:
                self.start(i)
                return True
        return False


# ================================================================ random interleavings

TINY_S = st.floats(1e-6, 1e-4)
LONG_S = st.floats(0.01, 2.0)
# Mostly tiny bodies, so that durations become known-tiny and work gets staged.
DURATION = st.one_of(TINY_S, TINY_S, TINY_S, LONG_S, st.none())


def _any(ok):
    return precondition(lambda self: any(ok(w) for w in self.world.workers))


class SchedulingMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.world = None
        self.may_break = True
        self.clean = True

    @initialize(n=st.integers(1, 3), may_break=st.booleans(), ready=st.booleans())
    def setup(self, n, may_break, ready):
        """Half the runs never let the pool break (it would fail everything from then on)."""
        self.world = World(n)
        self.may_break = may_break
        for i in range(n if ready else 0):
            self.world.ready(i)

    def _pick(self, data, ok):
        return data.draw(st.sampled_from([i for i, w in enumerate(self.world.workers) if ok(w)]))

    def _can_die(self, w) -> bool:
        return w.alive and (w.ready or self.may_break
                            or self.world.sched.start_failures < MAX_START_FAILURES - 1)

    def _step(self, fn, *args):
        self.clean = False
        fn(*args)
        self.clean = True

    @rule(nested=st.lists(st.booleans(), min_size=1, max_size=4))
    def submit(self, nested):
        """One or more submissions in one go (top-level or nested children)."""
        for flag in nested:
            self._step(self.world.submit, flag)

    @_any(lambda w: w.alive and not w.ready)
    @rule(data=st.data())
    def worker_ready(self, data):
        self._step(self.world.ready, self._pick(data, lambda w: w.alive and not w.ready))

    @_any(lambda w: w.alive and w.running is None and w.inbox)
    @rule(data=st.data())
    def start_next(self, data):
        self._step(self.world.start,
                   self._pick(data, lambda w: w.alive and w.running is None and w.inbox))

    @_any(lambda w: w.running is not None)
    @rule(data=st.data(), duration=DURATION, deliver=st.booleans(), then_start=st.booleans())
    def finish(self, data, duration, deliver, then_start):
        """A body ends; its result is sent now or held; the worker may take the next one."""
        i = self._pick(data, lambda w: w.running is not None)
        self._step(self.world.finish, i, duration, deliver)
        if then_start and self.world.workers[i].inbox:
            self._step(self.world.start, i)

    @_any(lambda w: w.alive and (w.running is not None or w.inbox))
    @rule(data=st.data(), durations=st.lists(DURATION, min_size=1, max_size=4),
          deliver=st.booleans())
    def worker_runs(self, data, durations, deliver):
        """A worker runs a few bodies back to back (results sent or held)."""
        i = self._pick(data, lambda w: w.alive and (w.running is not None or w.inbox))
        w = self.world.workers[i]
        for duration in durations:
            if w.running is None:
                if not w.inbox:
                    break
                self._step(self.world.start, i)
            self._step(self.world.finish, i, duration, deliver)

    @_any(lambda w: w.outbox)
    @rule(data=st.data())
    def deliver_held(self, data):
        self._step(self.world.deliver, self._pick(data, lambda w: w.outbox))

    @_any(lambda w: w.revokes)
    @rule(data=st.data())
    def answer_revoke(self, data):
        """The reader thread answers at once: the answer may overtake held results."""
        self._step(self.world.answer_revoke, self._pick(data, lambda w: w.revokes))

    @precondition(lambda self: any(self._can_die(w) for w in self.world.workers))
    @rule(data=st.data())
    def worker_dies(self, data):
        self._step(self.world.die, self._pick(data, self._can_die))

    @precondition(lambda self: any(self._can_die(w) and not w.ready
                                   for w in self.world.workers))
    @rule(data=st.data())
    def start_fails(self, data):
        """A launched worker dies before it said hello (counts towards a broken pool)."""
        self._step(self.world.die, self._pick(data, lambda w: self._can_die(w) and not w.ready))

    @precondition(lambda self: any(j.handles for j in self.world.jobs))
    @rule(data=st.data())
    def user_abandons(self, data):
        job = data.draw(st.sampled_from([j for j in self.world.jobs if j.handles]))
        self._step(self.world.abandon, job)

    @rule(dt=st.one_of(st.floats(0, 0.005), st.floats(0.005, 3.0)), to_deadline=st.booleans())
    def time_passes(self, dt, to_deadline):
        self._step(self.world.advance, dt, to_deadline)

    def teardown(self):
        """2. Once everything drains, every submitted job has ended exactly once."""
        if self.world is not None and self.clean:
            self.world.drain()
            assert set(self.world.ends) == set(self.world.jobs)


TestSchedulingMachine = SchedulingMachine.TestCase
TestSchedulingMachine.settings = settings(
    max_examples=300, stateful_step_count=60, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


# ================================================================ the key scenarios

def tiny_mean(world: World, worker: int = 0):
    """Run one tiny body on ``worker`` so durations are known to be tiny (staging starts)."""
    world.submit()
    world.start(worker)
    world.finish(worker, TINY)
    assert world.sched.depth > 1


def simulate(world: World, durations: dict):
    """Run bodies for their durations on a shared clock until every job has ended."""
    ends_at: dict = {}
    for _ in range(1000):
        if all(job in world.ends for job in world.jobs):
            return
        for i, w in enumerate(world.workers):
            if w.running is None and w.inbox:
                world.start(i)
                ends_at[i] = world.now + durations[w.running[1].seq]
        i = min(ends_at, key=ends_at.get)
        world.now = max(world.now, ends_at.pop(i))
        world.finish(i, durations[world.workers[i].running[1].seq])
    raise AssertionError("did not finish")


def test_long_jobs_start_in_submission_order():
    """Head of line: while durations are unknown nothing is staged, so a worker that becomes
    ready later still gets the next job in order instead of the short ones staged elsewhere."""
    world = World(2)
    world.ready(0)
    for _ in range(6):
        world.submit()
    world.ready(1)
    simulate(world, {0: LONG, 1: LONG, 2: TINY, 3: TINY, 4: TINY, 5: TINY})
    assert [job.seq for job in world.start_log] == [0, 1, 2, 3, 4, 5]
    assert all(world.ends[job] == "value" for job in world.jobs)


def test_nested_jobs_leave_the_queue_in_submission_order():
    """Nested children go before top-level jobs and among themselves in submission order (the
    scheduler's own order key, which a requeued job is put back by)."""
    world = World(1)
    first = world.submit(nested=True)
    second = world.submit(nested=True)
    top = world.submit()
    assert list(world.sched.queue) == [first, second, top]
    world.ready(0)
    assert world.log[-1] == Send(0, [(1, first)])


def test_a_death_fails_started_jobs_and_requeues_staged_ones_in_place():
    """A body may have had effects: what had started fails ("lost" if its result was still
    in the worker), what had not goes back to its own place in the queue and runs."""
    world = World(2)
    world.ready(0)
    tiny_mean(world)
    a, b, c, d = (world.submit() for _ in range(4))
    assert [job for _, job in world.sched.booked(0)] == [a, b, c, d]
    world.now += 1.0  # the head is stuck now: the next submits wait in the queue
    later = world.submit()
    child = world.submit(nested=True)
    assert list(world.sched.queue) == [child, later]
    world.start(0)
    world.finish(0, TINY, deliver=False)  # a finished, its result never leaves the worker
    world.start(0)  # b runs
    world.log.clear()
    world.die(0)
    assert world.ends[a] == "fail-lost" and world.ends[b] == "fail-crashed"
    assert c not in world.ends and d not in world.ends and c.state == d.state == QUEUED
    assert list(world.sched.queue) == [child, c, d, later]
    assert Launch(0) in world.log
    world.ready(1)
    assert [job for _, job in world.sched.booked(1)] == [child, c, d, later]
    world.drain()
    assert [world.ends[job] for job in (c, d, later, child)] == ["value"] * 4


def test_a_revoke_that_loses_the_race_keeps_the_job_booked():
    """A revoke answered "already started" leaves the job where it runs: never sent twice."""
    world = World(2)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    assert [job for _, job in world.sched.booked(0)] == [a, b]
    world.now += 1.0
    world.log.clear()
    world.advance(to_deadline=True)
    rid_b = world.sched.booked(0)[1][0]
    assert world.log == [Revoke(0, [rid_b])]
    assert world.sched.deadline() is None
    world.start(0)
    world.finish(0, LONG)
    world.start(0)  # b started before the revoke arrived
    world.answer_revoke(0)
    assert world.sched.booked(0) == [(rid_b, b)] and b not in world.sched.queue
    world.ready(1)
    assert world.sched.booked(1) == []  # b is not sent again
    world.finish(0, TINY)
    assert world.ends[b] == "value"


def test_a_revoke_that_wins_requeues_the_job_to_a_free_worker():
    """No head-of-line blocking: work staged behind a long body moves to the next free
    worker, but never to the stuck one."""
    world = World(2)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.now += 1.0
    world.advance(to_deadline=True)
    world.start(0)  # a runs long; b is still in the inbox
    world.answer_revoke(0)
    assert [job for _, job in world.sched.booked(0)] == [a] and list(world.sched.queue) == [b]
    world.ready(1)
    assert [job for _, job in world.sched.booked(1)] == [b]


def test_cancelling_kills_a_running_job_and_revokes_a_staged_one():
    """Cancel: a staged job is revoked and forgotten unstarted; a running one costs its
    worker (only a kill stops a body)."""
    world = World(1)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.start(0)
    world.log.clear()
    world.abandon(b)
    rid_b = world.sched.booked(0)[1][0]
    assert world.log == [Revoke(0, [rid_b])]
    world.answer_revoke(0)
    assert world.ends[b] == "forget"
    world.abandon(a)
    assert world.log[-1] == Kill(0)
    world.die(0)
    assert world.ends[a] == "fail-crashed"


def test_three_failed_starts_break_the_pool_and_fail_queued_work():
    """A pool that cannot start workers fails waiting and later work instead of hanging."""
    world = World(1)
    queued = [world.submit(), world.submit(nested=True)]
    for _ in range(MAX_START_FAILURES - 1):
        world.die(0)
        assert world.log[-1] == Launch(0) and not world.sched.broken
    world.log.clear()
    world.die(0)
    assert world.sched.broken and not any(isinstance(a, Launch) for a in world.log)
    assert all(world.ends[job] == "fail-broken" for job in queued)
    late = world.submit()
    assert world.ends[late] == "fail-broken"


def test_a_ready_worker_resets_the_count_of_failed_starts():
    """Only failed starts *in a row* break the pool."""
    world = World(2)
    world.die(0)
    world.die(0)
    world.ready(1)
    world.die(0)
    world.die(0)
    assert not world.sched.broken
    job = world.submit()
    world.drain()
    assert world.ends[job] == "value"


def test_depth_grows_for_tiny_bodies_and_is_zero_for_long_ones():
    """Staging hides the round trip of tiny bodies; behind long ones it would only block."""
    world = World(1)
    assert world.sched.depth == 0
    world.ready(0)
    for _ in range(20):
        world.submit()
        world.start(0)
        world.finish(0, 2e-6)
    assert world.sched.depth == MAX_STAGED
    for _ in range(3):
        world.submit()
    assert len(world.sched.booked(0)) == 3  # all staged on the one worker
    world.drain()
    for _ in range(20):
        world.submit()
        world.start(0)
        world.finish(0, 0.5)
    assert world.sched.depth == 0
    for _ in range(3):
        world.submit()
    assert len(world.sched.booked(0)) == 1 and len(world.sched.queue) == 2


def test_a_staged_body_reported_started_is_not_revoked_again():
    """The worker answers a revoke at once, so "already started" may overtake the held result
    of the body before it.  Revoking that body again can only lose: deadline() must not stay
    in the past (a busy loop of revokes until that result arrives)."""
    world = World(1)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.start(0)
    world.finish(0, TINY, deliver=False)  # a's result is held back in the worker
    world.start(0)  # b runs
    world.now += 1.0
    world.advance(to_deadline=True)  # b looks staged behind a long a: revoked
    assert isinstance(world.log[-1], Revoke)
    world.answer_revoke(0)  # "already started", before a's result
    assert world.sched.deadline() is None
    world.advance(1.0)  # no second Revoke of b (World.apply checks)
    world.deliver(0)
    world.finish(0, TINY)
    assert world.ends[a] == world.ends[b] == "value"


def test_work_staged_behind_a_head_being_revoked_still_gets_a_deadline():
    """A revoked staged job can become the head before the answer comes; a job staged behind
    it later must still make deadline() ask for a tick (its count of staged jobs must not
    include the head's pending revoke)."""
    world = World(1)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.now += 1.0
    world.advance(to_deadline=True)  # b staged behind a long a: revoked
    world.start(0)
    world.finish(0, TINY)  # a's result: b is the head now, its revoke still pending
    assert world.ends[a] == "value"
    c = world.submit()  # staged behind b (World.check asserts the deadline)
    assert [job for _, job in world.sched.booked(0)] == [b, c]
    assert world.sched.deadline() is not None


def test_a_cancelled_job_that_had_started_is_killed_once_it_runs():
    """The revoke of a cancelled staged job may lose (it started while the result before it
    was held back): it is stopped when that result arrives, not left to run for nobody."""
    world = World(1)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.start(0)
    world.finish(0, TINY, deliver=False)  # a's result is held back in the worker
    world.start(0)  # b runs
    world.abandon(b)
    world.answer_revoke(0)  # "already started"; a is still the running one here
    assert not world.workers[0].doomed
    world.deliver(0)
    assert world.ends[a] == "value" and world.log[-1] == Kill(0)
    world.die(0)
    assert world.ends[b] == "fail-crashed"


def test_a_declined_kill_keeps_the_worker_and_the_later_body():
    """Cancelling the running job kills its worker, but the pool declines when the worker's
    shared word shows that job finished (result held) and the next body started: the next
    body must not fail for it.  The worker stays in service and both results count."""
    world = World(1)
    world.ready(0)
    tiny_mean(world)
    a, b = world.submit(), world.submit()
    world.start(0)
    world.finish(0, 1e-5, deliver=False)  # a's result waits in the worker's outbox
    world.start(0)  # b runs
    world.abandon(a)
    assert world.log[-1] == Kill(0)
    assert world.sched.running_rid(0) < world.workers[0].started_word
    world.workers[0].doomed = False  # the pool did not send the kill
    world.apply(world.sched.kill_declined(0, world.now))
    assert not world.sched.workers[0].killing
    world.deliver(0)
    world.finish(0, 1e-5)
    assert (world.ends[a], world.ends[b]) == ("value", "value")
    c = world.submit()
    assert [job for _, job in world.sched.booked(0)] == [c], "the worker takes new work"
