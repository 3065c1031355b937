"""Settings: where they come from, which value is in force, and how mistakes are reported.

Documented in docs/configuration.md (sources, keys, errors).

Data flow
---------
Four sources feed one published snapshot, highest precedence first::

    Python calls (init, set_nparallel, _set_python)   -> _python          (kept across re-reads)
    environment variables SEAMLESS_*                  -> _env_layer       (read with the files)
    seamless.profile.yaml, then seamless.yaml         -> _file_layer      (list, last item wins)
      (with inherit_from_parent: the parent directory's files first, recursively)
    defaults (usable CPU count, physical memory ...)  -> computed when the snapshot is built

``_resolve()`` merges them key by key into a ``_Snapshot``: resolved values (``get()``) and
``Setting(value, source)`` pairs (``get_settings()``).  The snapshot is immutable and published by
rebinding one module global, so ``get()`` is a dict lookup without a lock once it exists.

Ownership: the layers and the snapshot belong to this module and are changed only under
``_lock`` (one ``RLock``); the record of warnings already given belongs to files.py.  Files
and environment are read on first use (the first ``get()``, ``get_nparallel()``,
``get_settings()`` or ``init()``), once per process; ``init()`` and ``set_workdir()`` make the next
use read them again.  A read that fails (``ConfigurationError``) changes nothing, so the next use
tries again and raises again until the file is fixed.  ``generation()`` is bumped whenever the
settings may have changed, so other modules (the buffer cache, the persistent cache) notice a new
``memory_cache`` or cache directory with one integer comparison.

Light: stdlib only at import.  PyYAML is imported when a YAML file actually exists.

Files of this package
---------------------
- ``__init__.py``: the state above, the public API and the internal interface below.
- ``keys.py``: the key table: names, defaults, environment variables, value checks and
  parsers, the did-you-mean message for an unknown key.
- ``arguments.py``: the checks of Python-call arguments (TypeError / ValueError).
- ``environment.py``: the ``SEAMLESS_*`` variables -> ``_env_layer``.
- ``files.py``: the YAML files -> ``_file_layer``, with file:line errors and warnings.
- ``layers.py``: ``_resolve()``: sources and defaults merged into one ``_Snapshot``.
- The machine facts behind the defaults (CPU count, physical memory) come from
  seamless.machine.

Internal interface for other modules (not part of the public API):

- ``get(key)``: the value in force, defaults resolved: ``"execution"`` -> ``"process"`` |
  ``"spawn"`` | ``"remote"``; ``"workers"``, ``"nparallel"`` -> ``int >= 1``; ``"cache"`` ->
  absolute directory ``str`` or ``None`` (on by default: ``default_cache_dir()``, with source
  ``"default"``); ``"cache_max"`` -> ``int`` bytes or ``None`` (no cap: see ``_resolve``);
  ``"memory_cache"`` -> ``int`` bytes; ``"scheduler"`` ->
  ``str`` or ``None``; ``"dask_client"`` -> the client given to ``init(dask_client=)`` or ``None``.
- ``get_setting(key)``: the ``Setting(value, source)`` of one key (e.g. to tell a default
  ``nparallel``, which under ``remote`` means "the cluster's thread count", from a chosen one).
- ``generation()``: an ``int`` bumped by every change (init, set_*, re-read, reset).
- ``command_cache_dir()``: the commands' cache directory (docs/cli.md).
- ``cache_is_implicit()``: whether the cache in force is the default directory nobody chose
  (big results then stay in memory, docs/caching.md).
- ``command_cache_max(directory)``: the size cap ``seamless-cache`` applies to a directory.
- ``_set_python(key, value)``: set (``None``: clear) a Python-call setting at rank 1, as
  ``init()`` does for one key; ``spawn(N)`` uses it to make ``N`` the ``workers`` in force.
  The caller checks its own argument first, with its own message.
- ``_reset_for_tests()``: drop every setting and read, as in a fresh process (generation still
  increases).
"""

from __future__ import annotations

import os
import threading
import types
from typing import Any

from seamless.errors import ConfigurationError

from .arguments import (
    _PY_CHECKS,
    _check_workdir,
    _py_cache,
    _py_cache_max,
    _py_dask_client,
    _py_execution,
    _py_memory_cache,
    _py_positive_int,
    _py_scheduler,
)
from .environment import _env_value
from .files import PROFILE_FILE, PROJECT_FILE, _forget_warnings, _read_files
from .files import _collect as _collect
from .keys import (
    _CACHE_OFF_WORDS,
    _CACHE_ON_WORDS,
    DEFAULT_CACHE_MAX,
    KEYS,
    Setting,
    _BadValue,
    _Entry,
    default_cache_dir,
)
from .keys import ENV_VARS as ENV_VARS
from .keys import EXECUTIONS as EXECUTIONS
from .keys import NPARALLEL_DEPTH as NPARALLEL_DEPTH
from .layers import _current_dir, _read_sources, _resolve, _Snapshot

# The "X as X" imports above keep names importable from seamless.config that this module does
# not use itself (as before it became a package).

__all__ = [
    "init", "set_nparallel", "get_nparallel", "set_workdir", "get_workdir", "get_settings",
    "Setting",
]

_lock = threading.RLock()
_snapshot: _Snapshot | None = None      # published; None = not read yet (or must be re-read)
_generation = 0
_python: dict[str, Any] = {}            # rank 1, survives re-reads
_dask_client: Any = None
_workdir: str | None = None             # set by set_workdir() / init(workdir=)
_env_layer: dict[str, _Entry] = {}
_file_layer: list[tuple[str, _Entry]] = []


def init(*, workdir=None, cache=None, execution=None, workers=None, nparallel=None,
         scheduler=None, dask_client=None, memory_cache=None, cache_max=None) -> None:
    """Read (or re-read) the files and environment, then apply the keywords at rank 1.

    A keyword left at ``None`` is not set by this call; ``cache=False`` turns the persistent cache
    off (it is on by default, docs/caching.md).  ``dask_client`` implies
    ``execution='remote'``.  Nothing changes when a check fails.
    Inside a pool worker it does nothing: workers take their settings from the parent (and
    must never open the persistent cache).
    """
    if os.environ.get("SEAMLESS_WORKER_FD"):
        return
    updates: dict[str, Any] = {}
    lookup = _check_workdir(workdir) if workdir is not None else None
    if cache is not None:
        updates["cache"] = _py_cache(cache)
    if execution is not None:
        updates["execution"] = _py_execution(execution)
    if workers is not None:
        updates["workers"] = _py_positive_int(
            "workers", workers, "seamless.config.init(workers={})")
    if nparallel is not None:
        updates["nparallel"] = _py_positive_int(
            "nparallel", nparallel, "seamless.config.init(nparallel={})")
    if scheduler is not None:
        updates["scheduler"] = _py_scheduler(scheduler)
    if memory_cache is not None:
        updates["memory_cache"] = _py_memory_cache(memory_cache)
    if cache_max is not None:
        updates["cache_max"] = _py_cache_max(cache_max)
    if dask_client is not None:
        _py_dask_client(dask_client)
        if execution is not None and execution != "remote":
            raise ValueError(
                f"dask_client implies execution='remote', got execution={execution!r} "
                f"(leave execution out, or drop dask_client)")
        if scheduler is not None:
            raise ValueError(
                f"init() got both scheduler={scheduler!r} and a dask_client; pass one "
                f"(the client already knows its scheduler)")
        updates["execution"] = "remote"
    global _snapshot, _python, _dask_client, _workdir, _env_layer, _file_layer, _generation
    with _lock:
        directory = lookup or _workdir or _current_dir()
        python = dict(_python)
        python.update(updates)
        client = dask_client if dask_client is not None else _dask_client
        try:
            env_layer, file_layer = _read_sources(directory)
            snapshot = _resolve(python, client, env_layer, file_layer, directory)
        except ConfigurationError as exc:
            raise exc.with_traceback(None) from None  # as in _ensure_loaded
        if lookup is not None:
            _workdir = lookup
        _python, _dask_client = python, client
        _env_layer, _file_layer = env_layer, file_layer
        _snapshot = snapshot
        _generation += 1


def set_nparallel(n) -> None:
    """Set ``nparallel`` at rank 1; ``None`` clears it so lower sources apply again."""
    if n is None:
        _set_python("nparallel", None)
    else:
        _set_python("nparallel", _py_positive_int(
            "nparallel", n, "seamless.config.set_nparallel({})"))


def get_nparallel() -> int:
    """The ``nparallel`` in force, defaults resolved: always a positive ``int``."""
    return get("nparallel")


def set_workdir(path) -> None:
    """Make ``path`` the directory the YAML files are read from; they are read on the next use."""
    global _workdir, _snapshot, _generation
    directory = _check_workdir(path)
    with _lock:
        _workdir = directory
        _snapshot = None
        _generation += 1


def get_workdir() -> str:
    """The lookup directory in force (absolute).

    The directory given to ``set_workdir()``/``init(workdir=)``; otherwise the directory the
    settings in force were read from; before the first read, the current working directory.
    """
    with _lock:
        if _workdir is not None:
            return _workdir
        if _snapshot is not None:
            return _snapshot.workdir
        return _current_dir()


def get_settings() -> types.MappingProxyType:
    """A read-only mapping from each key to ``Setting(value, source)``."""
    snapshot = _snapshot
    if snapshot is None:
        snapshot = _ensure_loaded()
    return snapshot.settings


def get(key: str):
    """The value of ``key`` in force, defaults resolved; reads files and environment first."""
    snapshot = _snapshot
    if snapshot is None:
        snapshot = _ensure_loaded()
    try:
        return snapshot.values[key]
    except KeyError:
        raise KeyError(f"no setting {key!r} (settings: {', '.join(KEYS)}, dask_client)") from None


def get_setting(key: str) -> Setting:
    """``Setting(value, source)`` of one key (see ``get_settings()``)."""
    settings = get_settings()
    try:
        return settings[key]
    except KeyError:
        raise KeyError(f"no setting {key!r} (settings: {', '.join(KEYS)})") from None


def generation() -> int:
    """A counter bumped every time the settings may have changed; cheap to poll."""
    return _generation


def _set_python(key: str, value) -> None:
    """Set one Python-call setting at rank 1 (``None``: clear it), keeping the other sources.

    Used by ``set_nparallel()`` and, for ``workers``, by ``spawn(N)``.  ``key`` is a setting key
    or ``"dask_client"``.  When the settings have been read, the snapshot is rebuilt at once (no
    re-read), and a combination that cannot work raises ``ConfigurationError`` without changing
    anything; otherwise the value waits for the first read.
    """
    global _snapshot, _python, _dask_client, _generation
    if key not in KEYS and key != "dask_client":
        raise KeyError(f"no setting {key!r} (settings: {', '.join(KEYS)}, dask_client)")
    if value is not None:
        value = _PY_CHECKS[key](value)
    with _lock:
        python = dict(_python)
        client = _dask_client
        if key == "dask_client":
            client = value
        elif value is None:
            python.pop(key, None)
        else:
            python[key] = value
        if _snapshot is not None:
            _snapshot = _resolve(python, client, _env_layer, _file_layer, _snapshot.workdir)
        _python, _dask_client = python, client
        _generation += 1


def command_cache_dir() -> str:
    """The persistent cache directory of the commands (docs/cli.md); not created here.

    ``SEAMLESS_CACHE`` (relative to the cwd), else ``cache:`` of ``seamless.profile.yaml`` /
    ``seamless.yaml`` in the cwd when such a file exists (``inherit_from_parent`` applies; ``false``
    or ``null`` there falls through), else the default directory.  Python-call settings and
    ``set_workdir()`` do not apply: the commands run in their working directory.
    """
    env = os.environ.get("SEAMLESS_CACHE")
    if env and env.strip().lower() not in _CACHE_OFF_WORDS + _CACHE_ON_WORDS:
        # The commands always have a cache: "off" (for the Python API) falls through.
        return os.path.abspath(os.path.expanduser(env))
    cwd = _current_dir()
    if (os.path.exists(os.path.join(cwd, PROJECT_FILE))
            or os.path.exists(os.path.join(cwd, PROFILE_FILE))):
        value = None
        for key, entry in _read_files(cwd):
            if key == "cache":
                value = entry.value
        if isinstance(value, str):
            return value
    return default_cache_dir()


def cache_is_implicit() -> bool:
    """Whether the persistent cache in force is the default directory that nobody configured
    (``cache: true`` or ``SEAMLESS_CACHE=on`` choose it explicitly)."""
    setting = get_setting("cache")
    return setting.value is not None and setting.source == "default"


def command_cache_max(directory: str):
    """The cap (bytes, or ``None``: none) of ``seamless-cache trim`` for ``directory``:
    ``SEAMLESS_CACHE_MAX``, else ``cache_max:`` of the files in the cwd, else the default cap
    when ``directory`` is the default directory (an explicit one has no cap unless given)."""
    chosen = None
    env = os.environ.get("SEAMLESS_CACHE_MAX")
    if env:
        try:
            chosen = _env_value("cache_max", env)
        except _BadValue as exc:
            raise ConfigurationError(f"environment variable SEAMLESS_CACHE_MAX: {exc.args[0]}",
                                     source="SEAMLESS_CACHE_MAX", line=None, key="cache_max",
                                     value=env) from None
    else:
        cwd = _current_dir()
        if (os.path.exists(os.path.join(cwd, PROJECT_FILE))
                or os.path.exists(os.path.join(cwd, PROFILE_FILE))):
            for key, entry in _read_files(cwd):
                if key == "cache_max":
                    chosen = entry.value
    if chosen is not None:
        return chosen or None
    same = os.path.abspath(directory) == os.path.abspath(default_cache_dir())
    return DEFAULT_CACHE_MAX if same else None


def _reset_for_tests() -> None:
    """Forget every setting, read and warning, as in a fresh process."""
    global _snapshot, _python, _dask_client, _workdir, _env_layer, _file_layer, _generation
    with _lock:
        _snapshot = None
        _python = {}
        _dask_client = None
        _workdir = None
        _env_layer = {}
        _file_layer = []
        _forget_warnings()
        _generation += 1


def _ensure_loaded() -> _Snapshot:
    global _snapshot, _env_layer, _file_layer, _generation
    with _lock:
        if _snapshot is not None:
            return _snapshot
        directory = _workdir or _current_dir()
        try:
            env_layer, file_layer = _read_sources(directory)
            snapshot = _resolve(_python, _dask_client, env_layer, file_layer, directory)
        except ConfigurationError as exc:
            # The frames below here are the file parser's, of no use to the user: the message
            # names the file, line and fix.
            raise exc.with_traceback(None) from None
        _env_layer, _file_layer = env_layer, file_layer
        _snapshot = snapshot
        _generation += 1
        return snapshot
