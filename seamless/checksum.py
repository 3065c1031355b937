"""The ``Checksum`` type: a SHA-256 as 64 lowercase hex characters, and ``new_sha256``.

Light module (stdlib only): the command line's cache-hit path imports it. ``hashlib`` is imported
on first use: it loads OpenSSL, about 2.5 ms of a process start, which a cache hit of
``seamless-run`` (small inputs, a small result) does not need.
"""

from __future__ import annotations

try:  # CPython's own SHA-256, compiled in: no OpenSSL to load (``_sha2`` from Python 3.12)
    from _sha256 import sha256 as _builtin_sha256
except ImportError:
    try:
        from _sha2 import sha256 as _builtin_sha256
    except ImportError:
        _builtin_sha256 = None

__all__ = ["Checksum", "sha256_hex", "new_sha256", "SMALL_HASH"]

# Below this many bytes the built-in SHA-256 is used; above, OpenSSL's, which is several times
# faster per byte on CPUs with SHA extensions.
SMALL_HASH = 1 << 20

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


def new_sha256(nbytes: int):
    """A fresh SHA-256 object for about ``nbytes`` of data (see ``SMALL_HASH``)."""
    if nbytes < SMALL_HASH and _builtin_sha256 is not None:
        return _builtin_sha256()
    import hashlib

    return hashlib.sha256()


def sha256_hex(data) -> Checksum:
    """SHA-256 of a bytes-like object, as a ``Checksum``."""
    view = memoryview(data)
    hasher = new_sha256(view.nbytes)
    hasher.update(view)
    return _trusted(hasher.hexdigest())
