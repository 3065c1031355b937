"""seamless.pool.wire: what submit frames carry; code text crosses a channel once."""

from __future__ import annotations

import socket

import pytest

from seamless.pool import wire
from seamless.pool.protocol import Channel
from seamless.transformer import delayed


@delayed
def add(a, b):
    return a + b


def _work(handle):
    checksum, work = handle._resolve()
    return checksum, work


@pytest.fixture
def channel_pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = Channel(a), Channel(b)
    yield left, right
    left.close()
    right.close()


def _roundtrip(pair, header, inline, fds):
    left, right = pair
    left.send([("submit", 1, header, inline, fds)])
    return right.receive_blocking()


def test_code_text_is_sent_once_then_by_checksum(channel_pair):
    sent: set = set()
    codebook: dict = {}
    checksum1, work1 = _work(add(1, 2))
    checksum2, work2 = _work(add(3, 4))
    header1, inline1, fds1, _ = wire.pack_work(work1, checksum1, sent)
    header2, inline2, fds2, _ = wire.pack_work(work2, checksum2, sent)
    assert isinstance(header1["code"], dict) and header1["code"]["text"] == work1.code.text
    assert header2["code"] == work2.code.checksum
    got1 = wire.unpack_work(_roundtrip(channel_pair, header1, inline1, fds1), codebook)
    got2 = wire.unpack_work(_roundtrip(channel_pair, header2, inline2, fds2), codebook)
    assert got1[0] == checksum1 and got2[0] == checksum2
    assert got2[1].code == work2.code
    assert [e.buffer.tobytes() for e in got2[1].arguments.values()] == \
        [bytes(memoryview(e.buffer)) for e in work2.arguments.values()]


def test_code_by_checksum_on_a_channel_that_never_carried_it(channel_pair):
    sent: set = set()
    checksum, work = _work(add(5, 6))
    wire.pack_work(work, checksum, sent)  # marks the code as sent, but the frame is dropped
    header, inline, fds, _ = wire.pack_work(work, checksum, sent)
    with pytest.raises(ValueError, match="never carried"):
        wire.unpack_work(_roundtrip(channel_pair, header, inline, fds), {})


def test_without_a_sent_set_every_frame_carries_the_text():
    checksum, work = _work(add(7, 8))
    for _ in range(2):
        header, _, _, _ = wire.pack_work(work, checksum)
        assert header["code"]["text"] == work.code.text
