"""seamless: run Python functions and shell commands as cached, content-addressed transformations.

    from seamless import delayed, spawn, parallel

    spawn(4)                          # 4 worker processes, started in the background

    @delayed
    def double(x):
        return x * 2

    assert double(21).run() == 42     # computed once; the same call again is a cache hit
    for tf in parallel([double(i) for i in range(100)]):
        print(tf.value)               # in input order, at most nparallel at a time

Documentation: docs/index.md (in the source tree and on the project page).

This module stays light: ``import seamless`` loads neither numpy nor the compiled core, so the
command line's cache-hit path stays close to a bare interpreter start.  ``Checksum``, ``close``,
the submodules ``config``, ``errors`` and ``transformer``, and the API of
``seamless.transformer`` (``delayed``, ``spawn``, ``parallel`` ...) load on first attribute access.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_API = ("direct", "delayed", "spawn", "has_spawned", "parallel", "parallel_async",
        "TransformationList", "Transformation")
__all__ = ["Checksum", "close", "config", "errors", "transformer", *_API]

_SUBMODULES = {"config", "errors", "transformer", "cache"}


def close():
    """Stop the executors, flush pending persistent-cache writes, empty the segment free list.

    Safe to call more than once; also runs at interpreter exit (for the cache flush).
    """
    import sys

    dispatch = sys.modules.get("seamless.execution.dispatch")
    if dispatch is not None:
        dispatch.close()
    cache = sys.modules.get("seamless.cache")
    if cache is not None:
        cache.flush()
    ipc = sys.modules.get("seamless._ipc")
    shm_array = None if ipc is None else vars(ipc).get("shm_array")  # not loaded: no segments
    if shm_array is not None:  # segments kept for reuse go back to the system
        shm_array.trim()


def __getattr__(name):
    if name == "Checksum":
        from .checksum import Checksum

        return Checksum
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.transformer"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'seamless' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
