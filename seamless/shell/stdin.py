"""Piped stdin as an input of a shell job (docs/cli.md, "Piped stdin").

When ``seamless-run``'s fd 0 is a pipe, a FIFO, a socket or a regular file, its bytes are part of
the transformation: ``read_piped`` reads them to the end (at most ``limit()`` bytes), their
SHA-256 enters the identity under the reserved key ``stdin``, and a miss feeds them to the
command. A terminal, ``/dev/null`` (character devices), a closed fd 0 and an empty pipe give
``None``: no stdin input, the identity of a command without piped data, and stdin ``/dev/null``.

Data flow and ownership: the bytes are read into one ``bytes`` object owned by the caller
(``seamless-run``'s ``main``, or the queue's job runner, which reads them with ``read_file``
from the file the submitter wrote beside the server's socket, ``queued_file_prefix``, and the
server owns once it accepted the job). Nothing here keeps a descriptor: fd 0 is only
read, never closed; ``read_file`` closes what it opens. On the cache-hit path this module costs
an ``fstat`` and the reads: it imports only ``os`` and ``stat``.
"""

from __future__ import annotations

import os
import stat

__all__ = ["LIMIT_VARIABLE", "DEFAULT_LIMIT", "StdinError", "limit", "read_piped", "read_file",
           "queued_file_prefix"]

LIMIT_VARIABLE = "SEAMLESS_STDIN_MAX"
DEFAULT_LIMIT = 64 << 20
_PIECE = 1 << 20


class StdinError(Exception):
    """Piped stdin that cannot become an input (too large, unreadable, a bad limit)."""


def limit() -> int:
    """The largest stdin accepted, in bytes: ``SEAMLESS_STDIN_MAX``, else 64 MiB."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit():
        raise StdinError(f"{LIMIT_VARIABLE}={text!r} is not a number of bytes; set it to a "
                         f"whole number (e.g. {LIMIT_VARIABLE}={DEFAULT_LIMIT}) or unset it")
    return int(text)


def _too_large(where: str, maximum: int) -> StdinError:
    return StdinError(
        f"{where} holds more than {maximum} bytes, the {LIMIT_VARIABLE} limit; nothing was run "
        f"or cached. Raise the limit ({LIMIT_VARIABLE}=BYTES), or write the data to a file and "
        "name it in the command ('cmd < data.txt' makes the file an input)")


def _read_to_end(fd: int, maximum: int, where: str) -> bytes:
    pieces = []
    total = 0
    while True:
        piece = os.read(fd, min(_PIECE, maximum + 1 - total))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        total += len(piece)
        if total > maximum:
            raise _too_large(where, maximum)


def _is_data(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode)


def read_piped(fd: int = 0):
    """The bytes piped into ``fd`` (to its end), or ``None`` when it carries no data: a
    terminal or other character device, a closed descriptor, or nothing at all."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if not _is_data(mode):
        return None
    maximum = limit()
    try:
        data = _read_to_end(fd, maximum, "stdin")
    except OSError as e:
        raise StdinError(f"cannot read stdin ({e.strerror or e}); redirect it from a file, or "
                         "from /dev/null to give the command no input") from None
    return data or None


def queued_file_prefix(socket_path: str) -> str:
    """How the file holding a queued job's stdin is named: beside the queue server's socket, in
    the user's private directory. The submitter writes it; the server accepts no other path."""
    return socket_path + ".stdin-"


def read_file(path: str):
    """The bytes of the stdin file the queue server keeps for a job; ``None`` when empty."""
    maximum = limit()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise StdinError(f"cannot open the queued job's stdin {path} ({e.strerror or e})") \
            from None
    try:
        return _read_to_end(fd, maximum, f"the queued job's stdin {path}") or None
    finally:
        os.close(fd)
