"""Private compiled core of seamless: picks the compiled module or its pure-Python twin, per module.

Data flow: on first use of a name in ``_MODULES`` (attribute access, or ``from seamless._ipc
import <name>``) this package imports ``seamless._ipc.<name>`` (the Cython extension) or
``seamless._ipc._pure.<name>`` and binds the chosen one as the attribute ``<name>`` of this
package.  Lazy per module: a handle's completion flags load ``flags`` without the numpy that
``shm_array`` needs.  Callers
use ``from seamless._ipc import shm_array`` (never ``import
seamless._ipc.shm_array``, which names the compiled module whatever was chosen).

- ``SEAMLESS_PUREPYTHON`` (1/true/yes on; 0/false/no/empty off) forces every
  twin; one record at WARNING on the ``seamless`` logger says so (a choice, not
  a warning).  Any other value raises ConfigurationError.
- A compiled module that fails to import is replaced by its twin with one
  BackendWarning per module naming the failure and how to rebuild.
- A module that ships no compiled form (no extension file and no ``.pyx`` source next to
  this file) uses its twin silently.

``BACKEND`` is ``"cython"`` only when every module is compiled, else ``"python"``;
``backends()`` gives the choice per module (both load every module).  Light on purpose: no
numpy here.

The counters, ``trim()`` and ``prewarm()`` of the chosen
``shm_array`` are re-exported here as thin functions (``bytes_copied()``, ``bytes_hashed()``,
``live_segments()``, ``reset_counters()``, ``trim()``, ``prewarm(nbytes)``), so tests and the
pool need not know which backend is loaded.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import logging
import os
import threading
import warnings
from types import ModuleType

from seamless.errors import BackendWarning, ConfigurationError

__all__ = ["BACKEND", "backends", "shm_array", "flags", "window", "bytes_copied", "bytes_hashed",
           "live_segments", "reset_counters", "trim", "prewarm"]

# Every module of the core, in import order (a module may cimport or import an earlier one).
_MODULES = ("shm_array", "flags", "window")

shm_array: ModuleType  # bound on first use by _module()
flags: ModuleType
window: ModuleType

_ON = frozenset({"1", "true", "yes"})
_OFF = frozenset({"", "0", "false", "no"})
_ENV = "SEAMLESS_PUREPYTHON"


def _purepython_requested(environ=os.environ) -> bool:
    """Read SEAMLESS_PUREPYTHON; a bad value is a configuration error (docs/configuration.md)."""
    raw = environ.get(_ENV, "")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigurationError(
        f"{_ENV} must be one of 1, true, yes (pure-Python core) or 0, false, no, empty "
        f"(compiled core), got {raw!r} (unset it to use the compiled core)",
        source=_ENV, value=raw)


def _has_compiled(name: str) -> bool:
    """Whether module ``name`` ships a compiled form: its extension file or its Cython source.

    A file check, so no import hook runs; a ``.pyx`` without its extension (a build that
    failed or was skipped) counts, so that case still warns when the import fails.
    """
    suffixes = (*importlib.machinery.EXTENSION_SUFFIXES, ".pyx")
    return any(os.path.exists(os.path.join(directory, name + suffix))
               for directory in __path__ for suffix in suffixes)


def _load(name: str, pure: bool):
    """Import one module of the core; return (module, "cython" | "python")."""
    if not pure and _has_compiled(name):
        try:
            return importlib.import_module(f"{__name__}.{name}"), "cython"
        except ImportError as exc:
            warnings.warn(BackendWarning(
                f"{__name__}.{name}: compiled module not available "
                f"({type(exc).__name__}: {exc}); using the slower pure-Python twin "
                f"(reinstall from source with Cython>=3.0,<4: pip install --force-reinstall .)"),
                stacklevel=4)  # _load, _module, __getattr__, the user of the module
    return importlib.import_module(f"{__name__}._pure.{name}"), "python"


_PURE = _purepython_requested()  # read once, at import: a bad value fails early
_BACKENDS: dict = {}
_load_lock = threading.RLock()


def _module(name: str) -> ModuleType:
    """The chosen module ``name``, imported on first use and bound as this package's attribute.

    Lazy, so that the completion flags of a handle do not pull in numpy with ``shm_array``.
    """
    with _load_lock:
        if name not in _BACKENDS:
            if _PURE and not _BACKENDS:
                logging.getLogger("seamless").warning(
                    "%s=%s: using the pure-Python core (seamless._ipc.BACKEND = 'python'), "
                    "slower than the compiled one", _ENV, os.environ.get(_ENV, ""))
            module, kind = _load(name, _PURE)
            globals()[name] = module
            _BACKENDS[name] = kind
        return globals()[name]


def __getattr__(name: str):
    if name in _MODULES:
        return _module(name)
    if name == "BACKEND":
        return "cython" if set(backends().values()) == {"cython"} else "python"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Private hook of the benchmark gate's self-test (bench/conftest.py): when True, every
# input sent to a worker is copied once more into a new segment, and counted, so the
# structural check on bytes_copied() must fail.  Not a setting; set only by bench/conftest.py.
_inject_extra_copy = False


def backends() -> dict:
    """Which implementation each module of the core uses, e.g.
    {"shm_array": "cython", "flags": "cython"} (loads every module)."""
    for name in _MODULES:
        _module(name)
    return {name: _BACKENDS[name] for name in _MODULES}


def bytes_copied() -> int:
    """Bytes copied into or out of segments for this process's transformations so far."""
    return _module("shm_array").bytes_copied()


def bytes_hashed() -> int:
    """Bytes hashed while filling segments (worker-side hashing included) so far."""
    return _module("shm_array").bytes_hashed()


def live_segments() -> int:
    """Segments of this process whose descriptor is still open."""
    return _module("shm_array").live_segments()


def reset_counters() -> None:
    """Set bytes_copied() and bytes_hashed() back to 0."""
    _module("shm_array").reset_counters()


def trim() -> None:
    """Empty this process's segment free list and run the registered trim hooks."""
    _module("shm_array").trim()


def prewarm(nbytes: int) -> None:
    """Put one segment of ``nbytes``, every page touched, on this process's free list."""
    _module("shm_array").prewarm(nbytes)
