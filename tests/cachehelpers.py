"""Shared by the ``seamless-cache`` tests: checksums, a cache opened for a block, and the
fixture that checks a test leaks no descriptor or thread.

Importable from tests (pyproject.toml puts ``tests/`` on ``sys.path``); a test module uses the
fixture by importing ``no_leaks``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import pytest
from fdcheck import fd_links, no_new_descriptors

from seamless.cache.persistent import PersistentCache

__all__ = ["no_leaks", "sha", "tf_checksum", "opened"]


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test closes the caches, pseudo-terminals and pipes it opens and starts no thread."""
    before, threads = fd_links(), set(threading.enumerate())
    yield
    no_new_descriptors(before)
    assert set(threading.enumerate()) <= threads


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
