"""seamless.pool.protocol: frame layout, channels over socketpairs, descriptors, malformed input.

Channels run over ``socket.socketpair()``; raw frames are written with the socket itself when a
test needs bytes a correct sender never produces (partial writes, bad fields).  One test passes
a channel end to a child process, because only there do descriptors really cross processes.
An autouse fixture fails any test that leaves a descriptor open.
"""

from __future__ import annotations

import array
import hashlib
import importlib
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

from seamless.errors import SeamlessError
from seamless.pool import protocol
from seamless.pool.protocol import (
    KINDS,
    MAX_FDS,
    MAX_FRAME,
    Channel,
    Frame,
    ProtocolError,
    TruncatedFrameError,
)

MiB = 1 << 20
PREFIX = struct.Struct("<IBBHQI")
PROJECT_ROOT = pathlib.Path(importlib.import_module("seamless.errors").__file__).parents[1]


pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


class CountingSocket(socket.socket):
    """A socket that records each sendmsg call's byte count and descriptor count."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        nfds = sum(memoryview(data).nbytes // 4 for _, _, data in ancdata)
        sent = super().sendmsg(buffers, ancdata, flags)
        self.calls.append((sent, nfds))
        return sent


@pytest.fixture
def pair():
    """(sender, receiver) channels over a socketpair; the receiver's socket is non-blocking."""
    a, b = socket.socketpair()
    sender = Channel(CountingSocket(fileno=a.detach()))
    b.setblocking(False)
    receiver = Channel(b)
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.fixture
def raw_pair():
    """(raw socket, receiving channel): for writing arbitrary bytes."""
    a, b = socket.socketpair()
    b.setblocking(False)
    receiver = Channel(b)
    yield a, receiver
    a.close()
    receiver.close()


def _memfd(content: bytes) -> int:
    fd = os.memfd_create("protocol-test", os.MFD_CLOEXEC)
    os.write(fd, content)
    return fd


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _close_all(fds):
    for fd in fds:
        os.close(fd)


def _drain(channel: Channel, count: int) -> list:
    frames = []
    while len(frames) < count:
        frames.extend(channel.receive())
    return frames


def _raw_frame(kind_code: int, fid: int, header: bytes, body: bytes = b"", nfds: int = 0,
               reserved: int = 0, length: int | None = None) -> bytes:
    if length is None:
        length = 16 + len(header) + len(body)
    return PREFIX.pack(length, kind_code, nfds, reserved, fid, len(header)) + header + body


# --- layout -------------------------------------------------------------------------------------

def test_kind_codes_are_fixed():
    assert KINDS == {
        "init": 1, "hello": 2, "submit": 3, "revoke": 4, "revoked": 5, "result": 6,
        "result-checksum": 7, "error": 8, "nested-submit": 9, "nested-reply": 10,
        "nested-cancel": 11, "recycle": 12, "heartbeat": 13, "shutdown": 14}
    assert MAX_FRAME == 64 * MiB and MAX_FDS == 253
    assert issubclass(ProtocolError, SeamlessError)


def test_encode_frame_follows_the_offsets_table():
    big = bytearray(b"B" * 100_000)
    header = {"buffers": [["ab" * 32, 3, "inline"], [None, 100_000, "inline"], [None, 7, 1]],
              "x": [1, 2]}
    chunks = protocol.encode_frame("result", 2**64 - 1, header, [b"abc", big], 2)
    prefix = bytes(chunks[0])
    hjson = json.dumps(header, separators=(",", ":")).encode()
    assert prefix[:4] == struct.pack("<I", 16 + len(hjson) + 3 + 100_000)
    assert prefix[4] == KINDS["result"]
    assert prefix[5] == 2
    assert prefix[6:8] == b"\0\0"
    assert prefix[8:16] == struct.pack("<Q", 2**64 - 1)
    assert prefix[16:20] == struct.pack("<I", len(hjson))
    assert prefix[20:] == hjson
    assert [bytes(c) for c in chunks[1:]] == [b"abc", bytes(big)]
    assert chunks[2].obj is big, "large inline buffers are not copied"


def test_encode_frame_rejects_bad_input():
    enc = protocol.encode_frame
    with pytest.raises(ValueError, match=r"unknown frame kind 'bogus' \(known: init, hello"):
        enc("bogus", 1, {}, [], 0)
    with pytest.raises(ValueError, match=r"frame id must be an int in \[0, 2\*\*64\), got -1"):
        enc("init", -1, {}, [], 0)
    with pytest.raises(ValueError, match=r"at most 253 descriptors, got 254"):
        enc("submit", 1, {}, [], 254)
    with pytest.raises(ValueError, match=r"lists 1 inline buffers but 2 were given"):
        enc("submit", 1, {"buffers": [[None, 1, "inline"]]}, [b"a", b"b"], 0)
    with pytest.raises(ValueError, match=r"inline buffer 0 has 2 bytes but its buffer table "
                                         r"entry says 1"):
        enc("submit", 1, {"buffers": [[None, 1, "inline"]]}, [b"ab"], 0)
    with pytest.raises(ValueError, match=r"refers to descriptor 1 but the frame carries 1"):
        enc("submit", 1, {"buffers": [[None, 1, 1]]}, [], 1)
    with pytest.raises(ValueError, match=r"where='elsewhere'"):
        enc("submit", 1, {"buffers": [[None, 1, "elsewhere"]]}, [], 0)
    with pytest.raises(TypeError, match="not JSON serializable"):
        enc("submit", 1, {"x": object()}, [], 0)
    with pytest.raises(ValueError, match=r"above the 67108864-byte frame limit"):
        enc("result", 1, {"buffers": [[None, MAX_FRAME, "inline"]]}, [bytes(MAX_FRAME)], 0)


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips(pair, kind):
    sender, receiver = pair
    header = {"kind_name": kind, "nested": {"a": [1, 2.5, None, True]}, "text": "λ ✓",
              "buffers": [["cd" * 32, 5, "inline"], [None, 0, "inline"], [None, 3, "inline"],
                          [None, 9, ["input", 2]]]}
    fid = (1 << 63) | 12345
    sender.send([(kind, fid, header, [b"hello", b"", bytearray(b"xyz")], [])])
    (frame,) = _drain(receiver, 1)
    assert isinstance(frame, Frame)
    assert frame.kind == kind and frame.id == fid and frame.header == header
    assert [bytes(v) for v in frame.inline] == [b"hello", b"", b"xyz"]
    assert all(v.readonly for v in frame.inline)
    assert frame.fds == []


def test_several_frames_go_in_one_sendmsg(pair):
    sender, receiver = pair
    fds = [_memfd(f"file {i}".encode()) for i in range(3)]
    frames = [("submit", i, {"i": i, "buffers": [[None, 4, "inline"], [None, 6, 0]]},
               [f"in{i:02d}".encode()], [fds[i]]) for i in range(3)]
    frames.append(("heartbeat", 99, {"rss": 1}, [], []))
    sender.send(frames)
    _close_all(fds)  # the kernel holds them now
    assert len(sender._sock.calls) == 1
    assert sender._sock.calls[0][1] == 3
    got = _drain(receiver, 4)
    assert [(f.kind, f.id) for f in got] == [("submit", 0), ("submit", 1), ("submit", 2),
                                             ("heartbeat", 99)]
    for i, frame in enumerate(got[:3]):
        assert bytes(frame.inline[0]) == f"in{i:02d}".encode()
        assert len(frame.fds) == 1
        assert _read_fd(frame.fds[0]) == f"file {i}".encode()
        _close_all(frame.fds)


def test_300_descriptors_are_split_over_sendmsg_calls_and_arrive_in_order(pair):
    sender, receiver = pair
    fds = [_memfd(f"content {i}".encode()) for i in range(300)]
    frames = [("recycle", n, {"n": n}, [], fds[100 * n:100 * (n + 1)]) for n in range(3)]
    sender.send(frames)
    _close_all(fds)
    calls = sender._sock.calls
    assert len(calls) >= 2
    assert all(nfds <= MAX_FDS for _, nfds in calls)
    assert sum(nfds for _, nfds in calls) == 300
    got = _drain(receiver, 3)
    assert [f.id for f in got] == [0, 1, 2]
    received = [fd for f in got for fd in f.fds]
    assert len(received) == 300
    assert [_read_fd(fd) for fd in received] == [f"content {i}".encode() for i in range(300)]
    _close_all(received)


def test_two_full_frames_of_253_descriptors(pair):
    sender, receiver = pair
    fds = [_memfd(bytes([i % 256])) for i in range(2 * MAX_FDS)]
    sender.send([("recycle", 1, {}, [], fds[:MAX_FDS]), ("recycle", 2, {}, [], fds[MAX_FDS:])])
    _close_all(fds)
    assert [nfds for _, nfds in sender._sock.calls if nfds] == [MAX_FDS, MAX_FDS]
    got = _drain(receiver, 2)
    assert [_read_fd(fd) for f in got for fd in f.fds] == [bytes([i % 256])
                                                          for i in range(2 * MAX_FDS)]
    for f in got:
        _close_all(f.fds)


def test_inline_buffers_of_zero_bytes_and_of_10_mb(pair):
    sender, receiver = pair
    big = np.random.default_rng(0).integers(0, 256, 10_000_000, dtype=np.uint8)
    header = {"buffers": [[None, 0, "inline"], [None, big.nbytes, "inline"]]}
    done = threading.Event()

    def send():
        sender.send([("result", 5, header, [b"", big], [])])
        done.set()

    thread = threading.Thread(target=send)
    thread.start()
    (frame,) = _drain(receiver, 1)
    thread.join()
    assert done.is_set()
    assert frame.inline[0].nbytes == 0
    assert hashlib.sha256(frame.inline[1]).digest() == hashlib.sha256(big).digest()
    assert frame.inline[1].readonly


def test_blocking_receiver_gets_frames_one_at_a_time():
    a, b = socket.socketpair()
    with Channel(a) as sender, Channel(b) as receiver:
        sender.send([("revoke", i, {}, [], []) for i in range(5)])
        assert [receiver.receive_blocking().id for _ in range(5)] == [0, 1, 2, 3, 4]
        with pytest.raises(TimeoutError, match=r"no frame arrived on the channel within 0.05 s"):
            receiver.receive_blocking(timeout=0.05)


def test_receive_returns_nothing_until_a_frame_is_complete(raw_pair):
    raw, receiver = raw_pair
    assert receiver.receive() == []
    fds = [_memfd(b"first"), _memfd(b"second")]
    header = json.dumps({"buffers": [[None, 4, "inline"], [None, 5, 0], [None, 6, 1]]}).encode()
    data = _raw_frame(KINDS["submit"], 7, header, b"body", nfds=2)
    # the descriptors go with the first byte; then one byte per write
    raw.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    _close_all(fds)
    for i in range(1, len(data)):
        assert receiver.receive() == [], f"frame reported complete after {i} bytes"
        raw.sendall(data[i:i + 1])
    (frame,) = receiver.receive()
    assert (frame.kind, frame.id, bytes(frame.inline[0])) == ("submit", 7, b"body")
    assert [_read_fd(fd) for fd in frame.fds] == [b"first", b"second"]
    _close_all(frame.fds)


def test_frames_split_at_arbitrary_points(raw_pair):
    raw, receiver = raw_pair
    stream = b"".join(
        b"".join(bytes(c) for c in protocol.encode_frame(
            "heartbeat", i, {"buffers": [[None, i * 1000, "inline"]]}, [bytes([i]) * (i * 1000)],
            0))
        for i in range(40))
    rng = np.random.default_rng(1)
    cuts = sorted(set(rng.integers(1, len(stream), 200).tolist())) + [len(stream)]
    got = []
    start = 0
    for cut in cuts:
        raw.sendall(stream[start:cut])
        start = cut
        got.extend(receiver.receive())
    assert [f.id for f in got] == list(range(40))
    assert all(bytes(f.inline[0]) == bytes([f.id]) * (f.id * 1000) for f in got)


def test_nonblocking_sender_waits_for_room():
    a, b = socket.socketpair()
    a.setblocking(False)
    with Channel(a) as sender, Channel(b) as receiver:
        payload = b"p" * (4 * MiB)
        got = []
        reader = threading.Thread(target=lambda: got.extend(
            receiver.receive_blocking() for _ in range(2)))
        reader.start()
        sender.send([("result", i, {"buffers": [[None, len(payload), "inline"]]}, [payload], [])
                     for i in range(2)])
        assert not sender._out
        reader.join()
        assert [f.id for f in got] == [0, 1]
        assert all(bytes(f.inline[0]) == payload for f in got)


def test_concurrent_senders_never_interleave_frames():
    a, b = socket.socketpair()
    with Channel(a) as sender, Channel(b) as receiver:
        n = 300

        def send(tag):
            for i in range(n):
                body = f"{tag}-{i}-".encode() * 500
                sender.send([("heartbeat", i, {"tag": tag,
                                               "buffers": [[None, len(body), "inline"]]},
                              [body], [])])

        threads = [threading.Thread(target=send, args=(t,)) for t in "abc"]
        for t in threads:
            t.start()
        got = [receiver.receive_blocking() for _ in range(3 * n)]
        for t in threads:
            t.join()
        for tag in "abc":
            ids = [f.id for f in got if f.header["tag"] == tag]
            assert ids == list(range(n))
        assert all(bytes(f.inline[0]) == f"{f.header['tag']}-{f.id}-".encode() * 500
                   for f in got)


# --- end of stream and closing --------------------------------------------------------------

def test_eof_after_frames_returns_the_frames_first(pair):
    sender, receiver = pair
    sender.send([("hello", 1, {}, [], []), ("hello", 2, {}, [], [])])
    sender.close()
    got = []
    while len(got) < 2:
        got.extend(receiver.receive())
    assert [f.id for f in got] == [1, 2]
    with pytest.raises(EOFError, match="closed by the peer"):
        receiver.receive()
    with pytest.raises(EOFError):
        receiver.receive()


def test_eof_in_the_middle_of_a_frame_is_a_truncated_frame(raw_pair):
    raw, receiver = raw_pair
    data = b"".join(bytes(c) for c in protocol.encode_frame(
        "submit", 7, {"buffers": [[None, 100, "inline"]]}, [b"z" * 100], 0))
    raw.sendall(data[:50])
    raw.close()
    with pytest.raises(TruncatedFrameError, match=r"^the channel was closed by the peer inside "
                                                  r"submit frame 7 \(50 of \d+ bytes "
                                                  r"received\)$") as info:
        while True:
            receiver.receive()
    # a protocol fault and the end of the stream: `except EOFError` sees the peer's death
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, EOFError)
    with pytest.raises(TruncatedFrameError):
        receiver.receive()


def test_eof_inside_a_prefix_is_a_protocol_error():
    a, b = socket.socketpair()
    with Channel(b) as receiver:
        a.sendall(b"\x10\x00\x00")
        a.close()
        with pytest.raises(TruncatedFrameError, match=r"inside a frame prefix \(3 of 20 bytes"):
            receiver.receive_blocking()


def test_close_releases_descriptors_no_frame_took(raw_pair):
    raw, receiver = raw_pair
    fds = [_memfd(b"a"), _memfd(b"b"), _memfd(b"c")]
    data = _raw_frame(KINDS["submit"], 1, b"{}", nfds=3)
    raw.sendmsg([data[:5]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    _close_all(fds)
    assert receiver.receive() == []
    assert len(receiver._fifo) == 3
    # the autouse fixture checks that closing the channel closes the three received descriptors


def test_close_releases_descriptors_of_buffered_frames():
    a, b = socket.socketpair()
    receiver = Channel(b)
    fds = [_memfd(b"one"), _memfd(b"two")]
    with Channel(a) as sender:
        sender.send([("recycle", 1, {}, [], fds[:1]), ("recycle", 2, {}, [], fds[1:])])
    _close_all(fds)
    first = receiver.receive_blocking()
    assert first.id == 1 and len(receiver._ready) == 1  # frame 2 came with the same read
    _close_all(first.fds)
    receiver.close()  # closes frame 2's descriptor, never handed out


def test_receive_returns_frames_buffered_by_receive_blocking():
    a, b = socket.socketpair()
    with Channel(a) as sender, Channel(b) as receiver:
        sender.send([("heartbeat", i, {}, [], []) for i in range(4)])
        assert receiver.receive_blocking().id == 0
        rest = receiver.receive()
        while len(rest) < 3:
            rest.extend(receiver.receive())
        assert [f.id for f in rest] == [1, 2, 3]


def test_close_wakes_a_blocked_reader():
    a, b = socket.socketpair()
    receiver = Channel(b)
    errors = []
    started = threading.Event()

    def read():
        started.set()
        try:
            receiver.receive_blocking()
        except EOFError as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    started.wait()
    receiver.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1
    a.close()
    with pytest.raises(ValueError, match="closed channel"):
        receiver.receive()
    with pytest.raises(ValueError, match="closed channel"):
        receiver.send([("hello", 1, {}, [], [])])
    receiver.close()  # idempotent
    assert receiver.fileno() == -1


def test_send_to_a_closed_peer_fails_and_stays_failed():
    a, b = socket.socketpair()
    b.close()
    with Channel(a) as sender:
        with pytest.raises(BrokenPipeError):
            sender.send([("hello", 1, {}, [], [])])
        with pytest.raises(ProtocolError, match=r"an earlier send on this channel failed "
                                                r"midway \(BrokenPipeError"):
            sender.send([("hello", 2, {}, [], [])])


def test_channel_needs_a_unix_stream_socket():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        with pytest.raises(ValueError, match="AF_UNIX SOCK_STREAM"):
            Channel(s)


# --- malformed frames ---------------------------------------------------------------------------

MALFORMED = [
    pytest.param(_raw_frame(99, 4, b"{}"), r"^frame 4 has unknown kind code 99 \(known: 1-14\)$",
                 id="bad-kind"),
    pytest.param(_raw_frame(KINDS["result"], 4, b"{}", length=MAX_FRAME + 1),
                 r"^result frame 4 declares 67108865 bytes, above the 67108864-byte \(64 MiB\) "
                 r"frame limit$", id="huge-length"),
    pytest.param(_raw_frame(KINDS["result"], 4, b"{}", length=3),
                 r"^result frame 4 declares 3 bytes, below the 16-byte minimum$",
                 id="short-length"),
    pytest.param(_raw_frame(KINDS["result"], 4, b"{}", nfds=254),
                 r"^result frame 4 declares 254 descriptors, above the limit of 253$",
                 id="nfds-above-253"),
    pytest.param(_raw_frame(KINDS["result"], 4, b"{}", reserved=7),
                 r"^result frame 4 has reserved field 7, not 0$", id="reserved"),
    pytest.param(PREFIX.pack(20, KINDS["error"], 0, 0, 4, 10) + b"{}" + b"\0" * 2,
                 r"^error frame 4 declares a 10-byte header in a 4-byte body$", id="hlen"),
    pytest.param(_raw_frame(KINDS["error"], 4, b"{not json"),
                 r"^error frame 4 has an invalid JSON header \(JSON is malformed: ",
                 id="bad-json"),
    pytest.param(_raw_frame(KINDS["error"], 4, b"\xff\xfe"),
                 r"^error frame 4 has an invalid JSON header "
                 r"\(JSON is malformed: invalid character",
                 id="bad-utf8"),
    pytest.param(_raw_frame(KINDS["error"], 4, b"[1, 2]"),
                 r"^error frame 4 has a JSON header that is not an object: list$",
                 id="header-not-object"),
    pytest.param(_raw_frame(KINDS["submit"], 4, b'{"buffers": [[null, 5, "inline"]]}', b"abc"),
                 r"^submit frame 4: its buffer table lists 5 inline bytes but the body holds 3$",
                 id="table-body-mismatch"),
    pytest.param(_raw_frame(KINDS["submit"], 4, b'{"buffers": [[null, 5, 0]]}'),
                 r"^submit frame 4: buffer table entry 0 refers to descriptor 0 but the frame "
                 r"carries 0$", id="table-fd-index"),
    pytest.param(_raw_frame(KINDS["submit"], 4, b'{"buffers": [[null, -1, "inline"]]}'),
                 r"^submit frame 4: buffer table entry 0 has length -1, not an int >= 0$",
                 id="table-negative-length"),
    pytest.param(_raw_frame(KINDS["submit"], 4, b'{"buffers": {"a": 1}}'),
                 r"^submit frame 4: header field 'buffers' must be a list, got dict$",
                 id="table-not-list"),
    pytest.param(_raw_frame(KINDS["submit"], 4, b'{"buffers": [[1, 2]]}'),
                 r"^submit frame 4: buffer table entry 0 must be \[checksum, length, where\], "
                 r"got \[1, 2\]$", id="table-entry-shape"),
]


@pytest.mark.parametrize("data, message", MALFORMED)
def test_malformed_frames_raise_protocol_error(raw_pair, data, message):
    raw, receiver = raw_pair
    good = b"".join(bytes(c) for c in protocol.encode_frame("hello", 1, {"ok": True}, [], 0))
    raw.sendall(good + data)
    got = []
    with pytest.raises(ProtocolError, match=message):
        while True:
            got.extend(receiver.receive())
    assert [f.id for f in got] == [1], "the good frame before the bad one is delivered"
    with pytest.raises(ProtocolError, match=message):
        receiver.receive()  # the channel stays failed


def test_more_nfds_than_descriptors_received(raw_pair):
    raw, receiver = raw_pair
    fd = _memfd(b"only one")
    data = _raw_frame(KINDS["submit"], 9, b'{"buffers": [[null, 1, 0], [null, 1, 1]]}', nfds=2)
    raw.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    os.close(fd)
    with pytest.raises(ProtocolError, match=r"^submit frame 9 declares 2 descriptors but only 1 "
                                            r"arrived with it$"):
        while True:
            receiver.receive()
    # the one descriptor that did arrive is closed with the channel (autouse fixture)


def test_truncated_ancillary_data_raises_protocol_error():
    # Runs in a child: it lowers RLIMIT_NOFILE so the kernel cannot install the descriptors and
    # truncates the ancillary data (MSG_CTRUNC).
    code = f"""
        import array, json, os, resource, socket, sys
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        from seamless.pool import protocol
        a, b = socket.socketpair()
        fds = [os.memfd_create("x") for _ in range(20)]
        frame = b"".join(bytes(c) for c in protocol.encode_frame("recycle", 3, {{}}, [], 20))
        a.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        for fd in fds:
            os.close(fd)
        highest = max(int(n) for n in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        channel = protocol.Channel(b)
        try:
            channel.receive_blocking(timeout=10)
            out = {{"error": None}}
        except protocol.ProtocolError as exc:
            out = {{"error": str(exc)}}
        print(json.dumps(out))
    """
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and out["error"].startswith(
        "ancillary data was truncated (MSG_CTRUNC)")


# --- across processes ---------------------------------------------------------------------------

def test_segments_cross_a_process_through_a_channel():
    from seamless._ipc import shm_array

    data = np.random.default_rng(2).integers(0, 256, 3 * MiB, dtype=np.uint8)
    seg = shm_array.Segment.create(data.nbytes)
    seg.fill(data)
    parent_end, child_end = socket.socketpair()
    code = f"""
        import hashlib, json, os, socket
        from seamless._ipc import shm_array
        from seamless.pool.protocol import Channel
        channel = Channel(socket.socket(fileno={child_end.fileno()}))
        frame = channel.receive_blocking()
        checksum, length, where = frame.header["buffers"][0]
        seg = shm_array.Segment.from_fd(frame.fds[where], length)
        view = seg.readonly()
        seg.close()  # the mapping keeps the memory
        digest = hashlib.sha256(view).hexdigest()
        out = shm_array.Segment.create(1000, "the result")
        out.fill(bytes(view[:1000])[::-1])
        header = {{"digest": digest, "match": digest == checksum,
                   "buffers": [[None, 1000, 0], [None, 5, "inline"]]}}
        channel.send([("result", frame.id, header, [b"hello"], [out.fd])])
        out.close()
        channel.receive_blocking(timeout=60)
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                                cwd=cwd, pass_fds=[child_end.fileno()],
                                stderr=subprocess.PIPE, text=True)
        child_end.close()
        channel = Channel(parent_end)
        try:
            digest = hashlib.sha256(data).hexdigest()
            channel.send([("submit", 42, {"buffers": [[digest, data.nbytes, 0]]}, [],
                           [seg.fd])])
            reply = channel.receive_blocking(timeout=120)
            assert (reply.kind, reply.id) == ("result", 42)
            assert reply.header["match"] is True and reply.header["digest"] == digest
            assert bytes(reply.inline[0]) == b"hello"
            result = shm_array.Segment.from_fd(reply.fds[0], 1000)
            assert bytes(result.readonly()) == data[:1000].tobytes()[::-1]
            assert result.segment_id() != seg.segment_id()
            result.close()
            channel.send([("shutdown", 0, {}, [], [])])
        finally:
            channel.close()
            stderr = proc.stderr.read()
            proc.stderr.close()
            assert proc.wait(timeout=120) == 0, stderr
    seg.close()

