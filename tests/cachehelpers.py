"""Shared by the cache tests: checksums, a cache opened for a block, and ``FakeConfig``.

Importable from tests (pyproject.toml puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import hashlib

from seamless.cache.persistent import PersistentCache

__all__ = ["FakeConfig", "sha", "tf_checksum", "opened"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tf_checksum(n: int) -> str:
    """Any 64-hex transformation checksum, distinct per ``n``."""
    return sha(b"transformation %d" % n)


@contextlib.contextmanager
def opened(directory):
    cache = PersistentCache(directory)
    try:
        yield cache
    finally:
        cache.close()


class FakeConfig:
    """Stands in for seamless.config where seamless.cache reads it (``cache._config``): ``get``
    (each read recorded in ``reads``), ``generation`` and ``cache_is_implicit``; ``set`` changes
    a value and starts a new generation."""

    def __init__(self, **values):
        self.values = {"cache": None, "memory_cache": 1 << 20, "cache_max": None, **values}
        self.gen = 1
        self.reads: list = []

    def get(self, key):
        self.reads.append(key)
        return self.values[key]

    def cache_is_implicit(self):
        return False

    def generation(self):
        return self.gen

    def set(self, key, value):
        self.values[key] = value
        self.gen += 1
