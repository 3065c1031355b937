"""The result value of a shell transformation: a canonical ``tree`` (docs/transformations.md
and 2.1) ``{"exit": 0, "outputs": {path: bytes | {sub path: bytes}}, "stdout": bytes}``.

Why a codec of its own: ``seamless.encoding`` needs numpy, which the command line never imports.
This one handles the only leaves a shell result has (bytes) and produces the same canonical bytes
(tested against ``seamless.encoding``).

Data flow. Encoding streams: ``ResultBytes`` yields the header, then each leaf read from its
file (the command's stdout spool, an output file) in 1 MiB pieces, then zero padding; the caller
(the persistent cache) writes and hashes them, so a result is never held in memory whole.
Decoding (``ShellResult``) indexes a buffer that the caller read and verified; leaves are
``memoryview`` slices of it, valid while the buffer lives.
"""

from __future__ import annotations

import json
import os
import struct

from seamless.shell.paths import from_json_key, json_key

__all__ = ["Leaf", "ResultBytes", "ShellResult", "RESULT_KIND"]

RESULT_KIND = "tree"
_MAGIC = b"SMLS"
_VERSION = 1
_CHUNK = 1 << 20
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                        allow_nan=True)


class Leaf:
    """A bytes leaf to encode from a file: ``path`` in the tree, ``source`` file, ``size``."""

    __slots__ = ("path", "source", "size")

    def __init__(self, path: tuple, source: str, size: int):
        self.path, self.source, self.size = path, source, size


def _padded(n: int) -> int:
    return -(-n // 64) * 64


def _tree_leaves(stdout_source: str, outputs: dict) -> tuple[dict, list]:
    """Skeleton and depth-first leaves for ``outputs`` ({path: file | {sub: file}})."""
    leaves = []
    skeleton_outputs = {}
    for path in sorted(outputs, key=json_key):
        key = json_key(path)
        item = outputs[path]
        if isinstance(item, dict):
            skeleton_outputs[key] = {json_key(sub): None for sub in item}
            for sub in sorted(item, key=json_key):
                leaves.append(Leaf(("outputs", key, json_key(sub)), item[sub],
                                   os.stat(item[sub]).st_size))
        else:
            skeleton_outputs[key] = None
            leaves.append(Leaf(("outputs", key), item, os.stat(item).st_size))
    leaves.append(Leaf(("stdout",), stdout_source, os.stat(stdout_source).st_size))
    return {"exit": 0, "outputs": skeleton_outputs, "stdout": None}, leaves


def _prefix(header: dict) -> bytes:
    text = _JSON.encode(header).encode("utf-8")
    h = _padded(10 + len(text)) - 10
    return _MAGIC + bytes([_VERSION]) + b"T" + struct.pack("<I", h) + text + b" " * (h - len(text))


class ResultBytes:
    """The canonical bytes of a successful run's result, read from files piece by piece.

    ``stdout_source``: the file holding the command's stdout; ``outputs``: output path ->
    file, or -> {sub path: file} for a directory output. ``size`` is the exact total;
    iterating yields the pieces and raises ``OSError`` if a file is unreadable or shrinks
    while being read.
    """

    def __init__(self, stdout_source: str, outputs: dict):
        skeleton, self._leaves = _tree_leaves(stdout_source, outputs)
        header = {"leaves": [[list(leaf.path), "bytes", leaf.size] for leaf in self._leaves],
                  "skeleton": skeleton}
        self._prefix = _prefix(header)
        self.size = len(self._prefix) + sum(_padded(leaf.size) for leaf in self._leaves)

    def __iter__(self):
        yield self._prefix
        for leaf in self._leaves:
            remaining = leaf.size
            with open(leaf.source, "rb") as f:
                while remaining:
                    piece = f.read(min(_CHUNK, remaining))
                    if not piece:
                        raise OSError(f"{leaf.source} shrank while its result was stored")
                    remaining -= len(piece)
                    yield piece
            pad = _padded(leaf.size) - leaf.size
            if pad:
                yield bytes(pad)


class ShellResult:
    """A decoded shell result: ``stdout`` and ``outputs`` as ``memoryview`` slices of ``buffer``.

    ``outputs`` maps each output path to its bytes, or to ``{sub path: bytes}`` for a directory.
    Raises ``ValueError`` for a buffer that is not a shell result (then the cache entry belongs
    to something else and is treated as a miss).
    """

    def __init__(self, buffer):
        view = memoryview(buffer)
        if bytes(view[:4]) != _MAGIC or view[4] != _VERSION or bytes(view[5:6]) != b"T":
            raise ValueError("not a canonical seamless tree")
        (h,) = struct.unpack("<I", view[6:10])
        header = json.loads(bytes(view[10:10 + h]))
        skeleton = header["skeleton"]
        if set(skeleton) != {"exit", "outputs", "stdout"} or skeleton["exit"] != 0:
            raise ValueError("not the result of a shell command")
        pos = 10 + h
        found = {}
        for path, kind, size in header["leaves"]:
            if kind != "bytes" or pos + size > len(view):
                raise ValueError("malformed shell result")
            found[tuple(path)] = view[pos:pos + size]
            pos += _padded(size)
        self.stdout = found[("stdout",)]
        self.outputs = {}
        for key, item in skeleton["outputs"].items():
            if isinstance(item, dict):
                self.outputs[from_json_key(key)] = {
                    from_json_key(sub): found[("outputs", key, sub)] for sub in item
                }
            else:
                self.outputs[from_json_key(key)] = found[("outputs", key)]
