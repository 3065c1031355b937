"""How shell transformations write paths into canonical JSON (docs/transformations.md, "Identity").

Paths arrive as ``str`` with surrogate escapes for non-UTF-8 bytes (``os.fsdecode``). A path that
is valid UTF-8 is a JSON string; one that is not is ``{"hex": ...}`` as a value, and ``"\\0"`` +
the same hex as an object key, so names stay byte-exact while the JSON stays valid UTF-8.
"""

from __future__ import annotations

import os

__all__ = ["json_value", "json_key", "from_json_key", "display"]


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_value(path: str):
    """``path`` as a canonical JSON value."""
    return path if _is_utf8(path) else {"hex": os.fsencode(path).hex()}


def json_key(path: str) -> str:
    """``path`` as a canonical JSON object key."""
    return path if _is_utf8(path) else "\0" + os.fsencode(path).hex()


def from_json_key(key: str) -> str:
    """The inverse of ``json_key``."""
    return os.fsdecode(bytes.fromhex(key[1:])) if key.startswith("\0") else key


def display(path: str) -> str:
    """``path`` for a message: undecodable bytes shown as ``\\xNN``, never an encoding error."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
