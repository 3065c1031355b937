"""The identity of a shell command: the checksum of its bash description
(docs/transformations.md, "Identity"; docs/cli.md).

``describe()`` hashes every input by content (a file: its bytes and executable bit; a directory:
the index of its whole tree, links by their target text, empty directories included; piped
stdin: its bytes, ``stdin.py``) and builds the canonical JSON description; its SHA-256 is the
transformation checksum. Nothing here writes anything: inputs are only read.
"""

from __future__ import annotations

import os
import stat

from seamless.checksum import SMALL_HASH, sha256_hex
from seamless.shell.paths import json_key, json_value
from seamless.shell.result import canonical_json

__all__ = ["InputError", "file_digest", "input_entry", "describe", "transformation_checksum"]

_READ = 1 << 20


class InputError(Exception):
    """An input that cannot be identified (unreadable, a dangling link, a special file)."""


def file_digest(path: str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size < SMALL_HASH:
            return sha256_hex(f.read())
        import hashlib

        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for piece in iter(lambda: f.read(_READ), b""):
            h.update(piece)
        return h.hexdigest()


def _is_exec(mode: int) -> bool:
    return bool(mode & stat.S_IXUSR)


def _dir_index(root: str) -> dict:
    """``{relative path: entry}`` over the tree below ``root``; links stay links."""
    index = {}
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as it:
            entries = list(it)
        if not entries and prefix:
            index[json_key(prefix[:-1])] = ["dir", None]
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                index[json_key(rel)] = ["link", json_value(os.readlink(entry.path))]
            elif entry.is_dir(follow_symlinks=False):
                pending.append((rel + "/", entry.path))
            elif entry.is_file(follow_symlinks=False):
                mode = entry.stat(follow_symlinks=False).st_mode
                index[json_key(rel)] = ["file", file_digest(entry.path), _is_exec(mode)]
            else:
                raise InputError(f"{os.path.join(root, rel)} is not a regular file, directory "
                                 "or symbolic link (seamless-run cannot track it)")
    return index


def input_entry(path: str) -> list:
    """The identity entry of an input file or directory (symbolic links followed)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            index = _dir_index(path)
            return ["dir", sha256_hex(canonical_json(index).encode("utf-8"))]
        if stat.S_ISREG(st.st_mode):
            return ["file", file_digest(path), _is_exec(st.st_mode)]
    except OSError as e:
        raise InputError(f"cannot read input {path} ({e.strerror or e})") from None
    raise InputError(f"input {path} is not a regular file or directory")


def describe(command: str, inputs: dict, outputs, vars_: dict, sandbox: bool,
             stdin=None) -> dict:
    """The bash description: ``inputs`` maps each path to its ``input_entry``; ``vars_`` maps
    each ``--var`` name to its value; ``stdin`` is the piped bytes, or ``None``.

    Piped stdin adds the key ``stdin`` (the SHA-256 of its bytes); without it the description
    has no such key, so the identity of a command run without piped data never changes."""
    description = {
        "command": json_value(command),
        "encoding": 1,
        "inputs": {json_key(p): entry for p, entry in inputs.items()},
        "language": "bash",
        "outputs": [json_value(p) for p in sorted(set(outputs), key=os.fsencode)],
        "result": "bash-v1",
        "sandbox": bool(sandbox),
        "vars": {name: sha256_hex(os.fsencode(value)) for name, value in vars_.items()},
    }
    if stdin is not None:
        description["stdin"] = str(sha256_hex(stdin))
    return description


def transformation_checksum(description: dict) -> str:
    return str(sha256_hex(canonical_json(description).encode("utf-8")))
