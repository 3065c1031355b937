"""A send to a dead worker is not an error of the pool's I/O thread (seamless/pool/pool.py);
the staging policy itself is tested with the scheduler (test_scheduling.py)."""

import socket

from seamless.pool.pool import _Worker
from seamless.pool.protocol import Channel


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
