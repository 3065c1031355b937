"""The queue's wire format: length-prefixed JSON frames over a Unix stream socket (docs/cli.md).

A frame is a 4-byte big-endian length N (1 <= N <= ``MAX_FRAME``) followed by N bytes of a UTF-8
JSON object that has a string ``"type"``. Never pickle, never ``eval``: a frame is data. Strings
that came from non-UTF-8 bytes (commands, paths, environment) carry surrogate escapes; ``encode``
writes every non-ASCII character as a four-digit ``\\u`` escape (``\\udcff``), so they
round-trip exactly. Text is written and read by the shell result's small JSON codec (keys
sorted, the same JSON), not by ``json``, whose ``re`` and ``enum`` imports would cost every
``--qsubmit`` about 6 ms.

Two ways to read:

- ``FrameReader``: incremental, for the server's non-blocking loop. ``feed(data)`` takes what
  ``recv`` gave and returns the complete messages; a bad length prefix or body raises
  ``FrameError`` at once, before an oversized body is read or buffered. It never holds more
  than one frame's bytes.
- ``send`` / ``receive``: blocking, for the clients (``seamless-run --qsubmit``,
  ``seamless-queue-finish``), with an optional overall timeout.

Ownership: neither owns a socket; callers open and close them.
"""

from __future__ import annotations

import time

from seamless.shell.result import canonical_json, parse_json

__all__ = [
    "MAX_FRAME", "PROTOCOL_VERSION", "FrameError", "FrameReader", "encode", "decode", "send",
    "receive",
]

PROTOCOL_VERSION = 1
# A client sends each frame within this many seconds of connecting or of its previous frame
# (unless it waits for an answer), or the server drops the connection.
FRAME_TIMEOUT_S = 10.0
MAX_FRAME = 1 << 20
_PREFIX = 4


class FrameError(ValueError):
    """A frame that breaks the wire format: its text says what was wrong."""


def encode(message: dict) -> bytes:
    """One frame for ``message`` (a dict with a ``"type"``); ``FrameError`` when too large."""
    if not isinstance(message.get("type"), str):
        raise FrameError(f"a message needs a string 'type', got {message.get('type')!r}")
    text = canonical_json(message)
    body = (text if text.isascii() else _ascii(text)).encode("ascii")
    if len(body) > MAX_FRAME:
        raise FrameError(f"a {message['type']!r} message of {len(body)} bytes is larger than "
                         f"the frame limit of {MAX_FRAME} bytes")
    return len(body).to_bytes(_PREFIX, "big") + body


def _ascii(text: str) -> str:
    """JSON text with every non-ASCII character escaped (astral ones as a surrogate pair)."""
    out = []
    for c in text:
        n = ord(c)
        if n < 0x80:
            out.append(c)
        elif n < 0x10000:
            out.append(f"\\u{n:04x}")
        else:
            n -= 0x10000
            out.append(f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}")
    return "".join(out)


def decode(body: bytes) -> dict:
    """The message in a frame's body; ``FrameError`` unless it is a JSON object with a type."""
    try:
        message = parse_json(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise FrameError(f"the frame is not UTF-8 JSON ({type(e).__name__}: {e})"[:300]) from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("the frame is not a JSON object with a string 'type'")
    return message


def _length(prefix: bytes) -> int:
    n = int.from_bytes(prefix, "big")
    if not 1 <= n <= MAX_FRAME:
        raise FrameError(f"frame length {n} is outside 1..{MAX_FRAME}")
    return n


class FrameReader:
    """Incremental frame parser for a non-blocking reader (one per connection)."""

    __slots__ = ("_buffer", "_needed")

    def __init__(self):
        self._buffer = bytearray()
        self._needed = None  # body length once the prefix is in

    @property
    def partial(self) -> bool:
        """True while a frame has begun but not completed."""
        return bool(self._buffer) or self._needed is not None

    def wanted(self) -> int:
        """How many bytes complete the current prefix or body (a bound for ``recv``)."""
        if self._needed is None:
            return _PREFIX - len(self._buffer)
        return self._needed - len(self._buffer)

    def feed(self, data: bytes) -> list[dict]:
        """The messages completed by ``data``; ``FrameError`` on the first bad frame."""
        messages = []
        view = memoryview(data)
        while view:
            take = min(self.wanted(), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if self.wanted():
                break
            if self._needed is None:
                self._needed = _length(bytes(self._buffer))
                self._buffer.clear()
            else:
                body = bytes(self._buffer)
                self._buffer.clear()
                self._needed = None
                messages.append(decode(body))
        return messages


def send(sock, message: dict) -> None:
    """Send one message on a blocking socket."""
    sock.sendall(encode(message))


def _recv_exactly(sock, n: int, deadline) -> bytes:
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete answer from the server in time")
            sock.settimeout(left)
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(sock, timeout: float | None = None) -> dict:
    """Read one message from a blocking socket; ``None`` timeout waits as long as it takes.

    ``ConnectionError`` when the peer closes, ``TimeoutError`` after ``timeout`` seconds,
    ``FrameError`` for a malformed frame.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if timeout is None:
        sock.settimeout(None)
    n = _length(_recv_exactly(sock, _PREFIX, deadline))
    return decode(_recv_exactly(sock, n, deadline))
