"""Which job runs on which worker: the pool's scheduling as a plain state machine (no I/O).

The pool's I/O thread owns sockets, processes and clocks; this module owns every decision.
The I/O thread turns what it sees into *events* (method calls) and carries out the *actions*
they return, in order::

    events (I/O thread -> Scheduler)              actions (Scheduler -> I/O thread)
    submitted(job, nested)                        Send(worker, [(rid, job), ...])
    worker_launched(worker)                       Revoke(worker, [rid, ...])
    worker_ready(worker, now)                     Kill(worker)          a cancelled running job
    finished(worker, rid, duration, now) -> job   Launch(worker)        a replacement
    revoked(worker, rid, dropped, now)            Fail(job, why, ...)   crashed, lost, broken
    worker_died(worker, started_rid, now)         Forget(job)           dropped before it ran
    abandoned(job)                                (a finished job goes back from ``finished``)
    tick(now)                                     the I/O thread calls it at ``deadline()``

States of a job here (docs/worker-pool.md, "Scheduling", draws them)::

    queued ──Send──► staged ──(worker starts it)──► started ──finished──► (outcome)
      ▲                │                               │
      └──revoked / ────┘                               └──worker died──► Fail (exactly once)
         worker died (never started: requeued at its original place)

A worker runs its submits in the order they were sent, and request ids grow in that order, so
a worker's books are one FIFO ``assigned`` list: the first entry is the *running* one, the rest
are *staged*.  The worker publishes the id of the last body it started in a shared word (never
reset); after a death, every entry up to that id has started and fails (its body may have had
effects), every later one never started and is requeued.  No body ever runs twice.

Invariants (tests/unit/test_scheduling.py checks them after every event, on random
interleavings):
- each job is sent again only if it never started; it ends exactly once;
- jobs leave the queue in order: nested children first, then submission order; a requeued job
  goes back to its original place;
- an idle ready worker means an empty queue;
- at most ``1 + MAX_STAGED`` jobs are booked on a worker, and nothing is staged while body
  durations are unknown or long, so long jobs start in submission order;
- nothing stays staged behind a body that has run longer than ``stuck_after()``: ``tick``
  revokes it, and it goes back to its place in the queue, to the next worker that is free.

Jobs are the dispatcher's ``Job`` objects; the scheduler uses only their ``claim`` (queued ->
running, fails when another thread withdrew it), ``unclaim`` and ``drop`` (withdraw an
unwanted job that never started).
"""

from __future__ import annotations

import collections
import itertools
from typing import NamedTuple

__all__ = ["Scheduler", "Send", "Revoke", "Kill", "Launch", "Fail", "Forget"]


class Send(NamedTuple):
    worker: int
    items: list  # [(rid, job)], in the order the worker will run them


class Revoke(NamedTuple):
    worker: int
    rids: list


class Kill(NamedTuple):
    worker: int


class Launch(NamedTuple):
    worker: int


class Fail(NamedTuple):
    """``why``: ``"crashed"`` (its body was running when the worker died), ``"lost"`` (its body
    had finished, the worker died before the result left it) or ``"broken"`` (the pool cannot
    start workers).  ``worker``/``rid`` say where it ran (None when it never did)."""

    job: object
    why: str
    worker: int | None
    rid: int | None


class Forget(NamedTuple):
    job: object


#: Staged work covers about this much of the recent bodies' time (hides the round trip).
COVER_S = 0.002
#: A body is "long" after 10 recent means, and never before this: the parent hears of a
#: body's start only through the result before it, which a busy parent may read late.
STUCK_MIN_S = 0.02
MAX_STAGED = 64
TOP_UP = 16
MAX_START_FAILURES = 3


class _Books:
    """What the scheduler knows of one worker."""

    __slots__ = ("index", "ready", "assigned", "revoking", "head_since", "killing",
                 "known_started", "spared")

    def __init__(self, index: int):
        self.index = index
        self.ready = False
        self.assigned: collections.deque = collections.deque()  # (rid, job); [0] runs
        self.revoking: set = set()
        self.head_since = 0.0  # when assigned[0] became the running one
        self.killing = False
        self.known_started = 0  # the worker said this rid (and all before) had started
        self.spared = 0  # a kill of this rid was declined: it had finished (kill_declined)

    def revocable(self) -> list:
        """Staged rids that may still be revoked: not the running one, not being revoked,
        not known to have started."""
        return [rid for rid, _ in itertools.islice(self.assigned, 1, None)
                if rid not in self.revoking and rid > self.known_started]

    @property
    def idle(self) -> bool:
        return self.ready and not self.assigned and not self.killing


class Scheduler:
    """The scheduling state of a pool of ``n`` workers (numbered 0..n-1)."""

    def __init__(self, n: int):
        self.workers = [_Books(i) for i in range(n)]
        self.queue: collections.deque = collections.deque()  # jobs, in _order
        self._order: dict = {}  # job -> (0 nested | 1 top-level, sequence number)
        self._where: dict = {}  # job -> (worker index, rid) while booked on a worker
        self._rids = itertools.count(1)
        self._seq = itertools.count()
        self._abandoned: set = set()  # jobs booked on a worker that nobody wants any more
        self._mean = None  # seconds per body, exponentially averaged
        self.start_failures = 0
        self.broken = False
        self.closed = False

    # ------------------------------------------------------------ staging policy

    @property
    def depth(self) -> int:
        """How many jobs to stage behind a running one: none while body durations are unknown
        or long (so long jobs start in submission order), up to MAX_STAGED for tiny ones."""
        if self._mean is None:
            return 0
        return min(MAX_STAGED, int(COVER_S / max(self._mean, 1e-7)))

    def stuck_after(self) -> float:
        """A body running longer than this is not a tiny one: nothing waits staged behind it."""
        return STUCK_MIN_S if self._mean is None else max(STUCK_MIN_S, 10 * self._mean)

    def deadline(self):
        """When ``tick`` must be called next (None: no body has staged work behind it)."""
        stuck = self.stuck_after()
        times = [w.head_since + stuck for w in self.workers
                 if len(w.assigned) > 1 and w.revocable()]
        return min(times) if times else None

    # ------------------------------------------------------------ events

    def submitted(self, job, nested: bool = False, now: float = 0.0) -> list:
        self._order[job] = (0 if nested else 1, next(self._seq))
        if self.broken:
            return self._fail_broken([job] if job.claim() else [])
        # Every event ends by scheduling, so jobs still queued mean no worker takes one now;
        # only events that free a place change that (a burst of submits skips the search).
        waiting = bool(self.queue)
        if nested:
            self._insert(job)  # after the nested children queued before it
        else:
            self.queue.append(job)
        return [] if waiting else self._schedule(now)

    def worker_launched(self, index: int):
        books = self.workers[index]
        books.ready, books.killing = False, False
        books.known_started = 0

    def worker_ready(self, index: int, now: float) -> list:
        self.workers[index].ready = True
        self.start_failures = 0
        return self._schedule(now)

    def finished(self, index: int, rid: int, duration: float | None, now: float):
        """A result or error for ``rid`` arrived: return ``(job or None, actions)``."""
        books = self.workers[index]
        job = self._take(books, rid, now)
        if job is None:
            return None, []
        self._forget_job(job)
        if duration is not None:
            self._mean = duration if self._mean is None else 0.8 * self._mean + 0.2 * duration
        return job, self._kill_unwanted_head(books) + self._schedule(now)

    def revoked(self, index: int, rid: int, dropped: bool, now: float) -> list:
        """The worker's answer to a revoke: ``dropped`` (it never started) or not (it had)."""
        books = self.workers[index]
        books.revoking.discard(rid)
        if not dropped:
            books.known_started = max(books.known_started, rid)
            # It started after all.  An unwanted one is killed once it is the running one
            # (the result of the one before it may still be on its way).
            if books.assigned and books.assigned[0][0] == rid \
                    and books.assigned[0][1] in self._abandoned:
                return self._kill(books)
            return self._schedule(now)
        job = self._take(books, rid, now)
        if job is None:
            return self._schedule(now)
        return self._requeue([job]) + self._kill_unwanted_head(books) + self._schedule(now)

    def worker_died(self, index: int, started_rid: int, now: float) -> list:
        """Fail what had started there (exactly once), requeue what had not, replace it."""
        books = self.workers[index]
        held = list(books.assigned)
        was_ready = books.ready
        books.assigned.clear()
        books.revoking.clear()
        books.ready = books.killing = False
        actions = []
        never_started = []
        for rid, job in held:
            self._where.pop(job, None)
            if rid <= started_rid:
                self._forget_job(job)
                actions.append(Fail(job, "crashed" if rid == started_rid else "lost", index,
                                    rid))
            else:
                never_started.append(job)
        actions.extend(self._requeue(never_started))
        if not was_ready and not held:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                self.broken = True
                jobs = [job for job in self.queue if job.claim()]
                self.queue.clear()
                return actions + self._fail_broken(jobs)
        if not self.closed:
            actions.append(Launch(index))
        return actions + self._schedule(now)

    def abandoned(self, job) -> list:
        """Nobody wants ``job`` any more (the dispatcher already dropped it if it was queued):
        a staged one is revoked, a running one is killed with its worker."""
        where = self._where.get(job)
        if where is None:
            return []  # queued: it fails to claim when its turn comes
        index, rid = where
        books = self.workers[index]
        self._abandoned.add(job)
        if books.assigned and books.assigned[0][0] == rid:
            return self._kill(books)
        if rid in books.revoking or rid <= books.known_started:
            return []  # killed when it becomes the running one (_kill_unwanted_head)
        books.revoking.add(rid)
        return [Revoke(index, [rid])]

    def kill_declined(self, index: int, now: float) -> list:
        """The pool did not kill worker ``index``: its shared word showed that the unwanted
        running job had already finished there and a later one had started (a kill would
        fail that one).  The finished job's result is on its way; the worker goes on."""
        books = self.workers[index]
        books.killing = False
        books.spared = books.assigned[0][0] if books.assigned else 0
        return self._schedule(now)

    def tick(self, now: float) -> list:
        """Revoke what waits staged behind a body that turned out to be long."""
        stuck = self.stuck_after()
        actions = []
        for books in self.workers:
            if len(books.assigned) > 1 and now >= books.head_since + stuck:
                actions.extend(self._revoke_staged(books))
        return actions

    def close(self) -> list:
        """Stop: every job still queued or booked, running first (the pool cancels them)."""
        self.closed = True
        jobs = []
        for books in self.workers:
            jobs.extend(job for _, job in books.assigned)
            books.assigned.clear()
            books.revoking.clear()
        jobs.extend(self.queue)
        self.queue.clear()
        self._where.clear()
        self._order.clear()
        return jobs

    # ------------------------------------------------------------ queries

    def has_idle_worker(self, besides: int | None = None) -> bool:
        return any(w.idle for w in self.workers if w.index != besides)

    def booked(self, index: int) -> list:
        return list(self.workers[index].assigned)

    def running_rid(self, index: int):
        """The request id of the job booked as running on worker ``index`` (None: idle)."""
        assigned = self.workers[index].assigned
        return assigned[0][0] if assigned else None

    # ------------------------------------------------------------ internals

    def _schedule(self, now: float) -> list:
        """Hand queued jobs out in queue order to the least-loaded workers."""
        sends: dict = {}
        if self.queue:
            limit = 1 + self.depth
            stuck = self.stuck_after()
            # A busy worker is topped up once TOP_UP jobs (or half its stage) drained: many
            # submits leave in one send, and the worker never runs dry while the parent
            # reads its results (it sends them every worker._BATCH, below TOP_UP).
            low = max(limit // 2, limit - TOP_UP)
            workers = [w for w in self.workers if w.ready and not w.killing
                       and len(w.assigned) <= low]
            while self.queue and workers:
                best = None
                for w in workers:
                    cap = 1 if w.assigned and now >= w.head_since + stuck else limit
                    if len(w.assigned) < cap and (best is None or len(w.assigned)
                                                  < len(best.assigned)):
                        best = w
                if best is None:
                    break
                job = self.queue.popleft()
                if not job.claim():
                    self._order.pop(job, None)  # withdrawn meanwhile
                    continue
                rid = next(self._rids)
                if not best.assigned:
                    best.head_since = now
                best.assigned.append((rid, job))
                self._where[job] = (best.index, rid)
                sends.setdefault(best.index, []).append((rid, job))
        return [Send(index, items) for index, items in sends.items()]

    def _revoke_staged(self, books: _Books) -> list:
        rids = books.revocable()
        if not rids:
            return []
        books.revoking.update(rids)
        return [Revoke(books.index, rids)]

    def _kill(self, books: _Books) -> list:
        if books.killing:
            return []
        books.killing = True
        return [Kill(books.index)]

    def _kill_unwanted_head(self, books: _Books) -> list:
        """The running job is one nobody wants (and no revoke of it is pending): kill it."""
        if books.assigned and books.assigned[0][1] in self._abandoned \
                and books.assigned[0][0] not in books.revoking \
                and books.assigned[0][0] != books.spared:
            return self._kill(books)
        return []

    def _take(self, books: _Books, rid: int, now: float):
        """Remove ``rid`` from a worker's books; the next one runs from now if it was first."""
        for i, (booked_rid, job) in enumerate(books.assigned):
            if booked_rid == rid:
                del books.assigned[i]
                books.revoking.discard(rid)
                if i == 0:
                    books.head_since = now
                self._where.pop(job, None)
                return job
        return None

    def _forget_job(self, job):
        self._order.pop(job, None)
        self._abandoned.discard(job)

    def _requeue(self, jobs: list) -> list:
        """Jobs that never started go back to their original place, or are forgotten when
        nobody wants them any more."""
        actions = []
        for job in sorted(jobs, key=self._order.__getitem__, reverse=True):
            self._abandoned.discard(job)
            job.unclaim()
            if job.drop():
                self._order.pop(job, None)
                actions.append(Forget(job))
                continue
            self._insert(job)
        return actions

    def _insert(self, job):
        """Put ``job`` at its place in the queue (nested children first, then by sequence);
        the jobs that go there are few and near the front."""
        key = self._order[job]
        i = 0
        while i < len(self.queue) and self._order.get(self.queue[i], key) < key:
            i += 1
        self.queue.insert(i, job)

    def _fail_broken(self, jobs: list) -> list:
        actions = []
        for books in self.workers:
            for _, job in books.assigned:
                self._where.pop(job, None)
                jobs.append(job)
            books.assigned.clear()
            books.revoking.clear()
        for job in jobs:
            self._order.pop(job, None)
            actions.append(Fail(job, "broken", None, None))
        return actions
