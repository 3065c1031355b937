"""The pool's staging depth follows recent body durations (seamless/pool/pool.py)."""

from seamless.pool.pool import _StagingDepth


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
