"""The ``Checksum`` type: a SHA-256 as 64 lowercase hex characters.

Light module (stdlib only): the command line's cache-hit path imports it.
"""

from __future__ import annotations

import hashlib

__all__ = ["Checksum", "sha256_hex"]

_HEX = frozenset("0123456789abcdef")


class Checksum(str):
    """A ``str`` holding 64 lowercase hex characters; JSON-serialisable as is."""

    __slots__ = ()

    def __new__(cls, value):
        if type(value) is cls:
            return value
        if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
            raise ValueError(
                f"a checksum must be 64 lowercase hex characters (a SHA-256), got {value!r}"
            )
        return str.__new__(cls, value)

    def __repr__(self):
        return f"Checksum({str.__repr__(self)})"

    @property
    def short(self) -> str:
        """The first 12 hex characters, as messages show them."""
        return self[:12]


def _trusted(hexdigest: str) -> Checksum:
    """Wrap a hexdigest we computed ourselves, skipping validation (hot path)."""
    return str.__new__(Checksum, hexdigest)


def sha256_hex(data) -> Checksum:
    """SHA-256 of a bytes-like object, as a ``Checksum``."""
    return _trusted(hashlib.sha256(data).hexdigest())
