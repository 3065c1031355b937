"""The pool's staging depth follows recent body durations; its per-worker books keep no request
id in ``revoking`` once that request has left them; a send to a dead worker is not an error of
the I/O thread (seamless/pool/pool.py)."""

import socket

from seamless.pool.pool import _StagingDepth, _Worker
from seamless.pool.protocol import Channel


def test_depth_is_one_until_a_duration_is_known():
    assert _StagingDepth().depth == 1


def test_long_bodies_stage_one_tiny_bodies_stage_up_to_the_cap():
    staging = _StagingDepth()
    staging.observe(0.5)
    assert staging.depth == 1
    for _ in range(60):
        staging.observe(2e-6)
    assert staging.depth == _StagingDepth.MAX


def test_depth_covers_about_two_milliseconds_of_work():
    staging = _StagingDepth()
    for _ in range(60):
        staging.observe(0.0001)
    assert staging.depth == 20


def test_a_long_body_after_tiny_ones_brings_the_depth_down_quickly():
    staging = _StagingDepth()
    for _ in range(60):
        staging.observe(1e-5)
    staging.observe(1.0)
    assert staging.depth == 1


def test_nothing_is_staged_behind_a_body_far_longer_than_the_recent_ones():
    staging = _StagingDepth()
    assert staging.stuck_after() == _StagingDepth.COVER_S
    for _ in range(60):
        staging.observe(1e-5)
    assert staging.stuck_after() == _StagingDepth.COVER_S  # tiny bodies: 2 ms is already long
    for _ in range(60):
        staging.observe(0.05)
    assert abs(staging.stuck_after() - 0.5) < 0.01


def test_a_finished_or_revoked_running_request_leaves_no_revoke_pending():
    """The race the pure-twin CI run hit: the revoke of 368 succeeded while the parent already
    counted it as running; 370, promoted behind it, had been started by the worker (so no
    "revoked" reply would ever come) and stayed in ``revoking``, which kept the worker out of
    scheduling for good."""
    worker = _Worker(0)
    worker.running = (368, "job368")
    worker.staged.extend([(370, "job370"), (372, "job372")])
    worker.revoking.update({368, 370})
    assert worker.take_running() == "job368"  # the "revoked" reply for 368
    assert worker.running[0] == 370 and worker.revoking == set()
    worker.revoking.add(372)
    assert worker.take_running() == "job370"  # 370's result
    assert worker.running[0] == 372 and worker.revoking == set()
    assert worker.take_running() == "job372"
    assert (worker.running, worker.load, worker.revoking) == (None, 0, set())


def test_sending_to_a_dead_worker_reports_false_instead_of_raising():
    """A revoke sent to a worker that had just crashed raised BrokenPipeError in the I/O thread,
    which then died and left a parallel() batch waiting forever."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.close()
    worker = _Worker(0)
    worker.channel = Channel(ours)
    try:
        assert worker.send([("revoke", 7, {}, [], [])]) is False
        assert worker.send([("revoke", 8, {}, [], [])]) is False  # the channel stays broken
    finally:
        worker.channel.close()
