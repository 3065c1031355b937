"""The persistent cache directory, shared with the workers when they see it at the same path.

The client puts a cache id file (``dask-cache-id``: random hex, written once, never changed)
in its cache directory and sends ``(directory, id)`` with every task.  A worker that finds the
same id in the file at that path (checked once per process and directory) reads input buffers
from ``buffers/`` and writes large result buffers there (``BufferStore``: temp file, fsync,
rename; every read re-hashes), so those bytes need not travel through Dask.  A worker that
does not see the file, or sees another id (another machine's directory of the same name), uses
Dask for every byte.  Workers never open ``seamless.db``: the client records the rows.
"""

from __future__ import annotations

import os

from ..cache.buffers import BufferCorrupt, BufferMissing, BufferStore

__all__ = ["ID_FILE", "client_token", "visible", "read", "write", "has"]

ID_FILE = "dask-cache-id"
_visible: dict = {}  # (directory, id) -> bool, per worker process


def client_token(directory: str) -> str:
    """The directory's cache id, made if it has none (by whichever process comes first)."""
    path = os.path.join(directory, ID_FILE)
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = os.urandom(16).hex()
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(token + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it meanwhile: theirs wins
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
    finally:
        os.unlink(tmp)
    return token


def visible(directory: str, token: str) -> bool:
    """Whether this process sees the client's cache directory (the same id at the same path)."""
    key = (directory, token)
    seen = _visible.get(key)
    if seen is None:
        try:
            with open(os.path.join(directory, ID_FILE), encoding="ascii") as f:
                seen = f.read().strip() == token
        except OSError:
            seen = False
        _visible[key] = seen
    return seen


def read(directory: str, checksum: str):
    """The verified bytes of ``checksum`` from the directory, or None when absent or corrupt."""
    try:
        data, _stat = BufferStore(directory).read_file(checksum)
    except (BufferMissing, BufferCorrupt, OSError):
        return None
    return data


def write(directory: str, checksum: str, buffer) -> bool:
    """Store a result's bytes; False when the directory refused them (Dask carries them)."""
    try:
        BufferStore(directory).write_file(checksum, buffer)
    except OSError:
        return False
    return True


def has(directory: str, checksum: str, nbytes: int) -> bool:
    """Whether the directory holds a file of ``nbytes`` for ``checksum`` (not verified here:
    the reader verifies)."""
    return BufferStore(directory).size_on_disk(checksum) == nbytes
