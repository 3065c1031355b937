"""Frames on a worker channel: encoding, sending with descriptors, incremental parsing.

Wire format (docs/design/worker-pool.md, "The channel and its frames"), all integers little-endian:

    offset  size   field
    0       4      length: bytes after this field (at most 64 MiB)
    4       1      kind (``KINDS``)
    5       1      nfds: descriptors attached to this frame (0-253)
    6       2      reserved, zero
    8       8      id: request id
    16      4      hlen: length of the JSON header
    20      hlen   UTF-8 JSON header (an object)
    20+hlen rest   inline buffer bytes, concatenated in buffer-table order

Buffer table: ``header["buffers"]`` (optional) is a list of ``[checksum, length, where]``:
``checksum`` a str or null, ``length`` the buffer's logical size, and ``where`` either
``"inline"`` (its bytes are in this frame's body, in table order), an int (an index into the
frame's descriptors), or a JSON list/object (a reference the codec does not interpret, e.g. to
an input of the request: no bytes and no descriptor here).  No pickle is ever read: headers are
JSON, values canonical bytes.

Descriptors travel as ``SCM_RIGHTS`` ancillary data attached to the first byte of the
``sendmsg`` call that carries their frame, or an earlier one (never later).  The receiver
appends every descriptor it receives to a FIFO; each complete frame takes its ``nfds`` from the
front.  One ``sendmsg`` carries at most 253 descriptors (``SCM_MAX_FD``), so a batch of frames
with more is split into several calls; each frame has at most 253.

Ownership and threads
- ``Channel`` owns its socket (one end of an ``AF_UNIX``/``SOCK_STREAM`` socketpair) from
  construction until ``close()``.
- **Sending.** ``send()`` never takes the caller's descriptors: they are in the kernel when it
  returns, so the caller may close its own at once.  Sends from several threads are serialised
  by one lock (the worker sends from its main thread and helper threads; the parent from its
  I/O thread).
- **Receiving.** Descriptors received but not yet handed to a frame are the channel's (closed by
  ``close()``); those handed out in ``Frame.fds`` are the receiver's (``Segment.from_fd`` takes
  them over).  ``Frame.inline`` views are read-only slices of a body buffer allocated per frame,
  alive as long as any view is.  ``receive()``/``receive_blocking()`` are for one reader thread
  at a time (a lock enforces it).
- A malformed frame raises ``ProtocolError`` (after the good frames before it were returned);
  the channel stays failed: every later receive raises it again.  End of stream at a frame
  boundary raises ``EOFError``.  End of stream inside a frame raises ``TruncatedFrameError``,
  which is both a ``ProtocolError`` (the frame is truncated) and an ``EOFError``: a correct
  peer only stops mid-frame by dying, so code that handles ``EOFError`` first treats it as the
  peer's death (and reports the crash), with the truncation in the message.
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import select
import socket
import struct
import threading
import time
from typing import NamedTuple

import msgspec

from seamless import machine
from seamless.errors import SeamlessError


# JSON headers: msgspec writes and reads the same compact UTF-8 JSON as the json module, about
# ten times faster, which matters with one header per tiny task in each direction.
def _plain(obj):
    """msgspec's hook for types it does not know: str subclasses (Checksum) as plain str."""
    if isinstance(obj, str):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode_json = msgspec.json.Encoder(enc_hook=_plain).encode
_decode_json = msgspec.json.Decoder().decode

__all__ = ["KINDS", "MAX_FRAME", "MAX_FDS", "PREFIX_SIZE", "Frame", "ProtocolError",
           "TruncatedFrameError", "encode_frame", "Channel"]

MAX_FRAME = 64 << 20        # largest value of the length field
MAX_FDS = 253               # descriptors per frame and per sendmsg call (SCM_MAX_FD)
# The memfd a parent shares with each worker: bytes 0-7 the request id of the last body the
# worker started, 8-15 how many bytes of frames it holds back, then those frames (worker.py).
OUTBOX_OFFSET = 16
#: Exit code of a worker that can no longer answer its parent (a body closed or replaced its
#: channel, or a send failed): the body it had started is the one that fails.
EXIT_CHANNEL_LOST = 74  # EX_IOERR
# Both ends keep released segments in a free list; those unused this long are closed
# (docs/worker-pool.md).
IDLE_TRIM_S = 2.0
PREFIX_SIZE = 20            # fixed part: length, kind, nfds, reserved, id, hlen
_AFTER_LENGTH = PREFIX_SIZE - 4

KINDS = {
    "init": 1, "hello": 2, "submit": 3, "revoke": 4, "revoked": 5, "result": 6,
    "result-checksum": 7, "error": 8, "nested-submit": 9, "nested-reply": 10,
    "nested-cancel": 11, "recycle": 12, "heartbeat": 13, "shutdown": 14,
}
_KIND_NAMES = {code: name for name, code in KINDS.items()}

_PREFIX = struct.Struct("<IBBHQI")
assert _PREFIX.size == PREFIX_SIZE

_FD_SIZE = array.array("i").itemsize
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_IOV_MAX = machine.snapshot().iov_max
_READ_CHUNK = 256 << 10     # one read into the scratch buffer
_DIRECT_READ = 64 << 10     # a body remainder above this is read straight into the body
_JOIN_MAX = 16 << 10     # frames up to this size are joined into one chunk for sendmsg
_MAX_READS = 16             # reads per receive() call, so one busy channel cannot starve others
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class ProtocolError(SeamlessError):
    """A malformed frame or stream on a worker channel; the message describes the fault."""


class TruncatedFrameError(ProtocolError, EOFError):
    """The stream ended inside a frame: a protocol fault that is also the end of the stream."""


class Frame(NamedTuple):
    """One received frame."""

    kind: str
    id: int
    header: dict
    inline: list      # memoryview per "inline" buffer-table entry, in table order (read-only)
    fds: list         # descriptors of this frame, in order; owned by the receiver


# --- encoding --------------------------------------------------------------------------------

def _flat(buf, index: int) -> memoryview:
    if type(buf) is bytes:
        return memoryview(buf)
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(f"inline buffer {index} must support the buffer protocol, got "
                        f"{type(buf).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"inline buffer {index} must be C-contiguous, got shape {view.shape} "
                         f"and strides {view.strides}")
    if view.nbytes == 0:
        return memoryview(b"")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _table_problem(header: dict, nfds: int, lengths: list) -> str | None:
    """Check the buffer table; append the inline lengths to ``lengths``; return a fault or None."""
    buffers = header.get("buffers", ())
    if not isinstance(buffers, (list, tuple)):
        return f"header field 'buffers' must be a list, got {type(buffers).__name__}"
    for entry in buffers:
        # The common entry, checked with exact types: [str | None, int, "inline" | fd index].
        if type(entry) is list and len(entry) == 3:
            checksum, length, where = entry
            if (checksum is None or type(checksum) is str) and type(length) is int \
                    and length >= 0:
                if where == "inline":
                    lengths.append(length)
                    continue
                if type(where) is int and 0 <= where < nfds:
                    continue
        return _entry_problem(buffers, nfds, lengths)
    return None


def _entry_problem(buffers, nfds: int, lengths: list) -> str | None:
    """The full check of a buffer table that left the fast path (subclasses, references,
    faults); ``lengths`` is rebuilt from the start."""
    del lengths[:]
    for i, entry in enumerate(buffers):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            return f"buffer table entry {i} must be [checksum, length, where], got {entry!r}"
        checksum, length, where = entry
        if checksum is not None and not isinstance(checksum, str):
            return f"buffer table entry {i} has a checksum that is not a str or null: " \
                   f"{checksum!r}"
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            return f"buffer table entry {i} has length {length!r}, not an int >= 0"
        if where == "inline":
            lengths.append(length)
        elif isinstance(where, int) and not isinstance(where, bool):
            if not 0 <= where < nfds:
                return (f"buffer table entry {i} refers to descriptor {where} but the frame "
                        f"carries {nfds}")
        elif not isinstance(where, (list, tuple, dict)):
            return (f"buffer table entry {i} has where={where!r}; expected 'inline', a "
                    f"descriptor index or a reference list/object")
    return None


def _kind_code(kind) -> int:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown frame kind {kind!r} (known: {', '.join(KINDS)})") from None


def encode_frame(kind: str, id: int, header: dict, inline: list, nfds: int) -> list:
    """The frame as byte chunks for ``sendmsg``: ``[prefix + JSON header, buf1, buf2, ...]``.

    Inline buffers are not copied (empty ones are left out).  Raises ValueError for an unknown
    kind, an id outside u64, more than 253 descriptors, a buffer table that does not match
    ``inline``/``nfds``, or a frame above 64 MiB; TypeError for a header JSON cannot encode.
    """
    code = _kind_code(kind)
    if type(id) is not int and (isinstance(id, bool) or not isinstance(id, int)) \
            or not 0 <= id < 1 << 64:
        raise ValueError(f"frame id must be an int in [0, 2**64), got {id!r}")
    if type(nfds) is not int and (isinstance(nfds, bool) or not isinstance(nfds, int)) \
            or not 0 <= nfds <= MAX_FDS:
        raise ValueError(f"a frame carries at most {MAX_FDS} descriptors, got {nfds!r} "
                         f"(send the rest in another frame)")
    if not isinstance(header, dict):
        raise TypeError(f"frame header must be a dict, got {type(header).__name__}")
    lengths: list = []
    problem = _table_problem(header, nfds, lengths) if "buffers" in header else None
    views = []
    if problem is None:
        if len(lengths) != len(inline):
            problem = (f"the buffer table lists {len(lengths)} inline buffers but "
                       f"{len(inline)} were given")
        else:
            for i, buf in enumerate(inline):
                view = _flat(buf, i)
                if lengths[i] != view.nbytes:
                    problem = (f"inline buffer {i} has {view.nbytes} bytes but its buffer "
                               f"table entry says {lengths[i]}")
                    break
                views.append(view)
    if problem is not None:
        raise ValueError(f"cannot encode {kind} frame {id}: {problem}")
    try:
        hjson = _encode_json(header)
    except TypeError as exc:
        raise TypeError(f"{kind} frame {id}: header is not JSON serializable ({exc})") from None
    length = _AFTER_LENGTH + len(hjson) + sum(lengths)
    if length > MAX_FRAME:
        raise ValueError(f"{kind} frame {id} would be {length} bytes, above the {MAX_FRAME}-byte "
                         f"frame limit (send large buffers as segments)")
    prefix = _PREFIX.pack(length, code, nfds, 0, id, len(hjson)) + hjson
    return [prefix, *(v for v in views if v.nbytes)]


# --- channel ---------------------------------------------------------------------------------

class _Pending:
    """Stands in for a body that ``_parse`` takes whole from the read buffer (only its size)."""

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


class _Out:
    """One queued chunk and the descriptors to attach no later than its first byte."""

    __slots__ = ("view", "fds")

    def __init__(self, view: memoryview, fds: list):
        self.view = view
        self.fds = fds


class Channel:
    """Frames over one connected ``AF_UNIX``/``SOCK_STREAM`` socket (blocking or not)."""

    def __init__(self, sock: socket.socket):
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"Channel needs a connected AF_UNIX SOCK_STREAM socket, got "
                             f"{sock!r}")
        self._sock = sock
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._out: collections.deque = collections.deque()
        self._send_error: BaseException | None = None
        self._fifo: collections.deque = collections.deque()
        self._ready: collections.deque = collections.deque()
        self._rbuf = bytearray()
        self._rpos = 0
        self._scratch = bytearray(_READ_CHUNK)
        self._cur: tuple | None = None          # (kind, nfds, id, hlen) of a frame in progress
        self._body: bytearray | None = None
        self._filled = 0
        self._eof = False
        self._error: ProtocolError | None = None
        self._closed = False

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    # --- sending ---

    def send(self, frames) -> None:
        """Send ``frames``, a list of ``(kind, id, header, inline, fds)``, in order.

        As few ``sendmsg`` calls as possible (at most 253 descriptors and IOV_MAX chunks each);
        returns once everything is in the kernel, waiting for room on a non-blocking socket.
        """
        entries = []
        small = None  # the chunk that small frames are being joined into (a bytearray)
        for frame in frames:
            kind, fid, header, inline, fds = frame
            if fds:
                fds = [_check_fd(fd) for fd in fds]
            chunks = encode_frame(kind, fid, header, inline, len(fds))
            if len(chunks) == 1 or sum(len(c) for c in chunks) <= _JOIN_MAX:
                # Small frames travel as one chunk: fewer buffers to track and one
                # iovec.  A frame's descriptors go with the first byte of the chunk it
                # joins, which is no later than its own first byte.
                if small is not None and (not fds or not small.fds) \
                        and len(small.view) < _JOIN_MAX:
                    small.view.extend(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                    if fds:
                        small.fds = fds
                    continue
                small = _Out(bytearray().join(chunks), fds)
                entries.append(small)
                continue
            small = None
            entries.append(_Out(memoryview(chunks[0]), fds))
            entries.extend(_Out(memoryview(c), []) for c in chunks[1:])
        for entry in entries:
            if type(entry.view) is bytearray:
                entry.view = memoryview(entry.view)
        with self._send_lock:
            if self._closed:
                raise ValueError("cannot send on a closed channel")
            if self._send_error is not None:
                raise ProtocolError(
                    f"cannot send: an earlier send on this channel failed midway "
                    f"({type(self._send_error).__name__}: {self._send_error})")
            self._out.extend(entries)
            self._send_queued()

    def send_encoded(self, data) -> None:
        """Send bytes that already are whole frames without descriptors (``encode_frame``
        output, joined), waiting until they are all in the kernel."""
        with self._send_lock:
            if self._closed:
                raise ValueError("cannot send on a closed channel")
            self._out.append(_Out(memoryview(data), []))
            self._send_queued()

    def feed(self, data) -> list:
        """Frames from bytes that did not come through the socket (frames a dead worker held
        back in shared memory); a frame cut short at the end is left out."""
        self._rbuf += data
        frames: list = []
        self._parse(frames)
        if self._error is not None:
            raise self._error
        return frames

    def _send_queued(self) -> None:
        """Send ``_out`` (the send lock held), waiting for room when the socket is full."""
        out = self._out
        try:
            while out:
                bufs = []
                fds: list = []
                batch = []
                for entry in out:
                    if len(bufs) == _IOV_MAX:
                        break
                    if entry.fds and bufs and len(fds) + len(entry.fds) > MAX_FDS:
                        break
                    bufs.append(entry.view)
                    fds.extend(entry.fds)
                    batch.append(entry)
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds \
                    else []
                try:
                    sent = self._sock.sendmsg(bufs, anc, _SEND_FLAGS)
                except BlockingIOError:
                    _wait_writable(self._sock)
                    continue
                # The descriptors went with this call's first byte.
                for entry in batch:
                    entry.fds = []
                while sent:
                    head = out[0]
                    n = head.view.nbytes
                    if sent >= n:
                        out.popleft()
                        sent -= n
                    else:
                        head.view = head.view[sent:]
                        sent = 0
        except BaseException as exc:
            # The stream may now end inside a frame: nothing more can be sent on it.
            self._send_error = exc
            out.clear()
            raise

    # --- receiving ---

    def receive(self) -> list:
        """Frames complete after reading what is available now (``[]`` if none yet).

        On a non-blocking socket this never waits; on a blocking one it waits for the first
        bytes only.  Raises ``EOFError`` on end of stream and ``ProtocolError`` on a malformed
        frame (``TruncatedFrameError``, both, when the stream ends inside a frame), each only
        once the frames before it have been returned.
        """
        with self._recv_lock:
            self._check_open()
            if self._ready:
                frames = list(self._ready)
                self._ready.clear()
                return frames
            self._raise_pending()
            frames: list = []
            for i in range(_MAX_READS):
                got = self._read_once(blocking=(i == 0))
                if got is None:
                    break
                self._parse(frames)
                if self._eof or self._error is not None:
                    break
            if frames:
                return frames
            self._raise_pending()
            return []

    def receive_blocking(self, timeout: float | None = None) -> Frame:
        """The next frame, waiting for it (at most ``timeout`` seconds: then TimeoutError).

        Extra frames read along are kept for the next call.  ``EOFError`` at end of stream.
        """
        with self._recv_lock:
            self._check_open()
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._ready:
                self._raise_pending()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not _wait_readable(self._sock, remaining):
                    raise TimeoutError(f"no frame arrived on the channel within {timeout} s")
                if self._read_once(blocking=False) is None:
                    continue
                frames: list = []
                self._parse(frames)
                self._ready.extend(frames)
            return self._ready.popleft()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("cannot receive on a closed channel")

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            if self._body is not None or len(self._rbuf) > self._rpos:
                if self._body is not None:
                    kind, _, fid, _ = self._cur
                    got = PREFIX_SIZE + self._filled
                    whole = PREFIX_SIZE + len(self._body)
                    what = f"inside {kind} frame {fid} ({got} of {whole} bytes received)"
                else:
                    got = len(self._rbuf) - self._rpos
                    what = f"inside a frame prefix ({got} of {PREFIX_SIZE} bytes received)"
                self._error = TruncatedFrameError(
                    f"the channel was closed by the peer {what}")
                raise self._error
            raise EOFError("the channel was closed by the peer")

    def _read_once(self, blocking: bool) -> bool | None:
        """One recvmsg into the body in progress or the scratch buffer.

        Returns True after data or end of stream (``_eof`` set), None if nothing was there.
        """
        direct = None
        if (self._body is not None and self._rpos == len(self._rbuf)
                and len(self._body) - self._filled > _DIRECT_READ):
            direct = memoryview(self._body)[self._filled:]
            target = direct
        else:
            target = self._scratch
        flags = _RECV_FLAGS | (0 if blocking else socket.MSG_DONTWAIT)
        try:
            n, ancdata, msg_flags, _ = self._sock.recvmsg_into([target], _ANC_SPACE, flags)
        except BlockingIOError:
            return None
        finally:
            if direct is not None:
                direct.release()
        self._take_fds(ancdata, msg_flags)
        if n == 0:
            self._eof = True
        elif direct is not None:
            self._filled += n
        else:
            with memoryview(self._scratch) as scratch:
                self._rbuf += scratch[:n]
        return True

    def _take_fds(self, ancdata, msg_flags: int) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % _FD_SIZE])
                self._fifo.extend(fds)
        if msg_flags & socket.MSG_CTRUNC and self._error is None:
            self._error = ProtocolError(
                "ancillary data was truncated (MSG_CTRUNC): descriptors sent with a frame were "
                "lost (more than 253 in one message, or this process reached its descriptor "
                "limit RLIMIT_NOFILE)")

    def _parse(self, frames: list) -> None:
        """Move complete frames from the buffers into ``frames``; record a fault in _error."""
        if self._error is not None:
            return
        try:
            with memoryview(self._rbuf) as rbuf:
                while True:
                    if self._body is None:
                        if len(rbuf) - self._rpos < PREFIX_SIZE:
                            break
                        self._start_frame(rbuf)
                        size = len(self._body)
                        if len(rbuf) - self._rpos >= size:
                            # The whole body is here: one copy out of the read buffer.
                            self._body = rbuf[self._rpos:self._rpos + size].tobytes()
                            self._rpos += size
                            frames.append(self._finish_frame())
                            continue
                    take = min(len(self._body) - self._filled, len(rbuf) - self._rpos)
                    if take:
                        self._body[self._filled:self._filled + take] = \
                            rbuf[self._rpos:self._rpos + take]
                        self._filled += take
                        self._rpos += take
                    if self._filled < len(self._body):
                        break
                    frames.append(self._finish_frame())
        except ProtocolError as exc:
            self._error = exc
        if self._rpos:
            del self._rbuf[:self._rpos]
            self._rpos = 0

    def _start_frame(self, rbuf: memoryview) -> None:
        length, code, nfds, reserved, fid, hlen = _PREFIX.unpack_from(rbuf, self._rpos)
        kind = _KIND_NAMES.get(code)
        if kind is None:
            raise ProtocolError(f"frame {fid} has unknown kind code {code} (known: 1-{len(KINDS)})")
        if length > MAX_FRAME:
            raise ProtocolError(f"{kind} frame {fid} declares {length} bytes, above the "
                                f"{MAX_FRAME}-byte (64 MiB) frame limit")
        if length < _AFTER_LENGTH:
            raise ProtocolError(f"{kind} frame {fid} declares {length} bytes, below the "
                                f"{_AFTER_LENGTH}-byte minimum")
        if nfds > MAX_FDS:
            raise ProtocolError(f"{kind} frame {fid} declares {nfds} descriptors, above the "
                                f"limit of {MAX_FDS}")
        if reserved:
            raise ProtocolError(f"{kind} frame {fid} has reserved field {reserved}, not 0")
        if hlen > length - _AFTER_LENGTH:
            raise ProtocolError(f"{kind} frame {fid} declares a {hlen}-byte header in a "
                                f"{length - _AFTER_LENGTH}-byte body")
        self._rpos += PREFIX_SIZE
        self._cur = (kind, nfds, fid, hlen)
        size = length - _AFTER_LENGTH
        # Filled piecewise unless the read buffer already holds it all (``_parse``).
        self._body = bytearray(size) if len(rbuf) - self._rpos < size else _Pending(size)
        self._filled = 0

    def _finish_frame(self) -> Frame:
        kind, nfds, fid, hlen = self._cur
        body = self._body
        self._cur = None
        self._body = None
        self._filled = 0
        if nfds > len(self._fifo):
            raise ProtocolError(f"{kind} frame {fid} declares {nfds} descriptors but only "
                                f"{len(self._fifo)} arrived with it")
        try:
            header = _decode_json(memoryview(body)[:hlen])
        except ValueError as exc:  # msgspec.DecodeError: malformed JSON or UTF-8
            raise ProtocolError(f"{kind} frame {fid} has an invalid JSON header ({exc})") from None
        if not isinstance(header, dict):
            raise ProtocolError(f"{kind} frame {fid} has a JSON header that is not an object: "
                                f"{type(header).__name__}")
        lengths: list = []
        problem = _table_problem(header, nfds, lengths)
        if problem is not None:
            raise ProtocolError(f"{kind} frame {fid}: {problem}")
        inline_bytes = len(body) - hlen
        if sum(lengths) != inline_bytes:
            raise ProtocolError(f"{kind} frame {fid}: its buffer table lists {sum(lengths)} "
                                f"inline bytes but the body holds {inline_bytes}")
        inline = []
        if lengths:
            view = memoryview(body)
            if not view.readonly:
                view = view.toreadonly()
            offset = hlen
            for n in lengths:
                inline.append(view[offset:offset + n])
                offset += n
        fds = [self._fifo.popleft() for _ in range(nfds)]
        return Frame(kind, fid, header, inline, fds)

    # --- closing ---

    def close(self) -> None:
        """Close the socket and the descriptors no frame took.

        Idempotent.  Wakes a thread blocked in ``receive_blocking`` (it sees end of stream).
        """
        if self._closed:
            return
        self._closed = True
        # Shutting down wakes a thread blocked reading or writing; ENOTCONN means the socket
        # is already disconnected, so no thread can be blocked on it.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with self._send_lock:  # a send woken by the shutdown has given up
            self._out.clear()
        with self._recv_lock:
            for frame in self._ready:
                _close_fds(frame.fds)
            self._ready.clear()
            _close_fds(self._fifo)
            self._fifo.clear()
            self._body = None
        self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_fd(fd) -> int:
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(f"descriptors must be ints >= 0, got {fd!r}")
    return fd


def _close_fds(fds) -> None:
    for fd in fds:
        os.close(fd)


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    poller.poll()


def _wait_readable(sock: socket.socket, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000.0))
