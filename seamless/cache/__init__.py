"""The caches of this process, as module-level singletons (docs/caching.md).

- ``memory_results``: a ``ResultMap`` (transformation checksum -> (kind, result checksum)).
- ``memory_buffers``: a ``BufferCache`` whose byte bound follows ``seamless.config``'s
  ``memory_cache``: every ``get``/``put`` compares ``config.generation()`` with the generation it
  last applied and, when it changed, re-reads the bound (shrinking evicts at once).
- ``persistent()``: the ``PersistentCache`` of ``config.get("cache")`` (on by default: the
  default directory), or ``None`` when the persistent cache is off. It also hands the instance
  its size cap, ``config.get("cache_max")``, which its writer thread enforces. One instance per
  directory, opened on first use and kept for the life of the process (a directory that was
  configured earlier may still have queued writes). A directory that cannot be opened gives one
  ``CacheWarning`` and ``None`` for the rest of the process; the Python API then works from
  memory only.
- ``store_result(...)``: what the dispatcher calls for every new result: a queued write to
  ``persistent()``, except results above ``IMPLICIT_RESULT_MAX`` bytes while the directory is
  the implicit default (they stay in memory: a user who configured nothing should not find
  multi-gigabyte arrays copied to their home directory; configuring a directory stores all).
- ``flush()``: waits for the queued writes of every open persistent cache; registered with
  ``atexit`` (and called by ``seamless.close()``).

Naming: ``seamless.cache.persistent`` as an attribute is the function ``persistent()``; the module
of the same name is reached with ``from seamless.cache.persistent import PersistentCache`` or
``importlib.import_module("seamless.cache.persistent")``.

Light package: importing it loads the memory caches only. ``PersistentCache`` (and with it
``sqlite3``, about 11 ms) loads on first use: ``persistent()``, or the ``PersistentCache``
attribute (PEP 562). So the command line's cache-hit path can import ``result_index`` and
``buffers`` from here without the database. Importing the module ``seamless.cache.persistent``
would normally rebind the package attribute ``persistent`` to that module; ``_Package`` keeps the
function under that name. Never numpy or ``seamless._ipc``; ``seamless.config`` on first use.
"""

from __future__ import annotations

import _thread  # not threading: a command-line hit loads this package
import atexit
import sys

from seamless.cache.memory import BufferCache, ResultMap

__all__ = [
    "memory_results", "memory_buffers", "persistent", "store_result", "flush",
    "ResultMap", "BufferCache", "PersistentCache",
]


class _Package(type(sys)):
    """This package's module type: binding the submodule ``persistent`` (the import system does
    so when it is first imported) leaves the function ``persistent()`` in place."""

    def __setattr__(self, name, value):
        if name == "persistent" and isinstance(value, type(sys)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name == "PersistentCache":
        from seamless.cache.persistent import PersistentCache

        return PersistentCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config():
    """The ``seamless.config`` module, imported on first use (it may read files)."""
    global _config_module
    if _config_module is None:
        from seamless import config as module
        _config_module = module
    return _config_module


_config_module = None


def _default_memory_bytes() -> int:
    """The smaller of 2 GiB and 25 % of physical memory (the configuration's default, used
    while the configuration cannot be read)."""
    from seamless import machine

    return min(2 << 30, machine.snapshot().physical_memory // 4)


class _ConfiguredBufferCache(BufferCache):
    """A ``BufferCache`` whose bound tracks ``config.get("memory_cache")``."""

    def __init__(self):
        # No bound until the first _sync() sets one (every use syncs first), so importing this
        # package reads nothing from the machine: the seamless-run hit path stays short.
        super().__init__(0)
        self._generation = None

    def _sync(self) -> None:
        config = _config()
        generation = config.generation()
        if generation == self._generation:
            return
        from seamless.errors import ConfigurationError

        try:
            bound = config.get("memory_cache")
        except ConfigurationError as e:
            # The call that reads the configuration for the transformation raises this error
            # to the user; here the current bound stays.
            from seamless.cache.persistent import _log

            _log.debug("memory cache bound unchanged (%s)", e)
            if self._generation is None:
                self.set_max_bytes(_default_memory_bytes())
        else:
            self.set_max_bytes(bound)
        self._generation = generation

    @property
    def max_bytes(self) -> int:
        self._sync()
        return self._max

    def get(self, cs):
        self._sync()
        return super().get(cs)

    def put(self, cs, buffer) -> None:
        self._sync()
        super().put(cs, buffer)


memory_results = ResultMap()
memory_buffers = _ConfiguredBufferCache()

# Results larger than this are not written to the implicit default directory. Not a setting:
# configuring the directory (cache: DIR, or cache: true) is how to say "store everything".
IMPLICIT_RESULT_MAX = 64 << 20

_lock = _thread.allocate_lock()
_caches: dict = {}  # directory -> PersistentCache
_failed: set[str] = set()
# (config generation, what persistent() returned for it, whether that is the implicit default)
_last = (None, None, False)


def persistent():
    """The persistent cache configured now, or ``None`` (off, or unusable: warned once)."""
    return _persistent_and_implicit()[0]


def _persistent_and_implicit():
    """``(persistent(), whether it is the implicit default directory)``."""
    global _last
    config = _config()
    generation = config.generation()
    last_generation, last, implicit = _last
    if generation == last_generation:
        return last, implicit
    directory = config.get("cache")
    error = None
    cache = None
    if directory is not None:
        from seamless.cache.persistent import PersistentCache, warn_cache
        from seamless.errors import CacheError

        with _lock:
            cache = _caches.get(directory)
            if cache is None and directory not in _failed:
                try:
                    cache = PersistentCache(directory)
                except CacheError as e:
                    _failed.add(directory)
                    error = e
                else:
                    _caches[directory] = cache
    if cache is not None:
        cache.max_bytes = config.get("cache_max")
    implicit = cache is not None and config.cache_is_implicit()
    _last = (generation, cache, implicit)
    if error is not None:
        warn_cache(
            f"could not open the persistent cache at {directory} ({error}); results stay in "
            "memory only for the rest of this process (fix the directory, or choose another "
            "one with SEAMLESS_CACHE or seamless.config.init(cache=...))"
        )
    return cache, implicit


def store_result(tf_cs, kind, result_cs, buffer, duration, label) -> None:
    """Queue a new result for the persistent cache in force (see the module docstring)."""
    store, implicit = _persistent_and_implicit()
    if store is None:
        return
    if implicit and memoryview(buffer).nbytes > IMPLICIT_RESULT_MAX:
        from seamless.cache.persistent import _log

        _log.debug("result %s of %s (%d bytes) stays in memory: larger than %d bytes and the "
                   "cache directory is the implicit default", result_cs, label,
                   memoryview(buffer).nbytes, IMPLICIT_RESULT_MAX)
        return
    store.write(tf_cs, kind, result_cs, buffer, duration, label=label)


def flush() -> None:
    """Wait until every open persistent cache of this process has written its queued results."""
    module = sys.modules.get("seamless.cache.persistent")
    if module is None:  # never loaded: no cache was opened
        return
    for cache in list(module._instances):
        cache.flush()


atexit.register(flush)


def _reset_for_tests() -> None:
    """Back to a fresh process's state: empty memory caches, no persistent cache opened, no
    cache failure remembered (the caches this module opened are flushed and closed)."""
    global _last
    with _lock:
        opened = list(_caches.values())
        _caches.clear()
        _failed.clear()
        _last = (None, None, False)
    for cache in opened:
        cache.close()
    memory_results.clear()
    memory_buffers.clear()
    memory_buffers._generation = None
    module = sys.modules.get("seamless.cache.persistent")
    if module is not None:
        with module._reported_lock:
            module._reported.clear()
