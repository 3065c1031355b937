"""The per-process in-memory caches (docs/caching.md).

Two least-recently-used maps, each an insertion-ordered ``dict`` guarded by one lock:

- ``ResultMap``: transformation checksum -> (result kind, result checksum), bounded by entry count.
  Only successes are put here (the caller's rule; this map does not know about failures).
- ``BufferCache``: checksum -> canonical bytes, bounded by the total byte size of what it holds.
  It stores a reference to the object it is given (no copy), so the caller decides what it keeps
  alive: seamless passes ``bytes`` (or another buffer that owns its memory), never a view of a
  shared-memory segment, so the cache never keeps a segment alive. Sizes come from
  ``memoryview(buf).nbytes``; numpy is never imported.

Ownership: a map owns only its references. Evicting an entry drops the reference; the memory is
freed when nobody else (a done handle, a caller) holds it. Every method takes the lock for O(1)
work (eviction is O(evicted entries)), so the maps are safe to share between threads.
"""

from __future__ import annotations

import _thread  # not threading: a command-line hit loads this module

__all__ = ["ResultMap", "BufferCache"]


def _check_count(name: str, value, minimum: int) -> int:
    """Validate a size argument: an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an integer, got {value!r} (a {type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _plain(checksum) -> str:
    """A checksum as an exact ``str``.  Entries live long and there may be millions of them:
    a ``Checksum`` (an instance of a Python-level class) is tracked by the cyclic garbage
    collector, which would then walk every entry on each full collection; a tuple of exact
    strings is not tracked at all."""
    return checksum if type(checksum) is str else str.__str__(checksum)



def _touch(lru: dict, key) -> None:
    """Make ``key`` the newest entry (a dict keeps insertion order; not ``OrderedDict``, whose
    ``collections`` import costs a command-line cache hit about 2 ms)."""
    lru[key] = lru.pop(key)


def _pop_oldest(lru: dict):
    """Remove and return the oldest ``(key, value)``."""
    key = next(iter(lru))
    return key, lru.pop(key)

class ResultMap:
    """Thread-safe LRU map: transformation checksum -> (result kind, result checksum)."""

    def __init__(self, max_entries: int = 1_000_000):
        self._max = _check_count("max_entries", max_entries, 1)
        self._map: dict[str, tuple[str, str]] = {}
        self._lock = _thread.allocate_lock()

    @property
    def max_entries(self) -> int:
        return self._max

    def get(self, tf_cs):
        """``(kind, result_cs)`` of a transformation checksum, or ``None``; marks it used."""
        with self._lock:
            entry = self._map.get(tf_cs)
            if entry is not None:
                _touch(self._map, tf_cs)
            return entry

    def put(self, tf_cs, kind, result_cs) -> None:
        """Record a successful result; the least recently used entries beyond the bound go."""
        tf_cs = _plain(tf_cs)
        entry = (str(kind), _plain(result_cs))
        with self._lock:
            self._map[tf_cs] = entry
            _touch(self._map, tf_cs)
            while len(self._map) > self._max:
                _pop_oldest(self._map)

    def discard(self, tf_cs) -> None:
        """Forget a transformation checksum (no error when it is absent)."""
        with self._lock:
            self._map.pop(tf_cs, None)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    def __contains__(self, tf_cs) -> bool:
        """Membership test that does not count as a use."""
        with self._lock:
            return tf_cs in self._map


class BufferCache:
    """Thread-safe LRU map checksum -> buffer, bounded by the sum of the buffers' byte sizes.

    A buffer is ``bytes`` or any C-contiguous object with the buffer protocol. One larger than
    the bound is not kept. Putting a checksum that is already present only marks it used: equal
    checksums mean equal content, so the buffer already held is kept.
    """

    def __init__(self, max_bytes: int):
        self._max = _check_count("max_bytes", max_bytes, 0)
        self._map: dict[str, tuple[object, int]] = {}
        self._nbytes = 0
        self._lock = _thread.allocate_lock()

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def nbytes(self) -> int:
        """Total size in bytes of the buffers held now."""
        with self._lock:
            return self._nbytes

    def get(self, cs):
        """Return the buffer for a checksum, or ``None``; marks it used."""
        with self._lock:
            entry = self._map.get(cs)
            if entry is None:
                return None
            _touch(self._map, cs)
            return entry[0]

    def put(self, cs, buffer) -> None:
        """Keep ``buffer`` under ``cs`` unless it is larger than the bound; evict LRU entries."""
        with memoryview(buffer) as view:
            if not view.c_contiguous:
                raise ValueError(
                    f"buffer for {cs!r} must be C-contiguous (pass bytes(buffer) or a "
                    "contiguous copy)"
                )
            size = view.nbytes
        cs = _plain(cs)
        with self._lock:
            if cs in self._map:
                _touch(self._map, cs)
                return
            if size > self._max:
                return
            self._map[cs] = (buffer, size)
            self._nbytes += size
            self._evict_locked()

    def discard(self, cs) -> None:
        """Drop a checksum (no error when it is absent)."""
        with self._lock:
            entry = self._map.pop(cs, None)
            if entry is not None:
                self._nbytes -= entry[1]

    def set_max_bytes(self, n: int) -> None:
        """Change the bound; shrinking evicts least recently used buffers at once."""
        _check_count("max_bytes", n, 0)
        with self._lock:
            self._max = n
            self._evict_locked()

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._nbytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    def __contains__(self, cs) -> bool:
        """Membership test that does not count as a use."""
        with self._lock:
            return cs in self._map

    def _evict_locked(self) -> None:
        while self._nbytes > self._max:
            _, (_, size) = _pop_oldest(self._map)
            self._nbytes -= size
