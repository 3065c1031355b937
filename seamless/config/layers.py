"""Layering: the sources merged key by key into one immutable ``_Snapshot``.

``_read_sources(directory)`` reads the environment layer and the file layer afresh;
``_resolve()`` takes the Python-call values and those layers (highest precedence first), fills
in the defaults (the CPU count and physical memory come from seamless.machine), and checks what
must go together (``remote`` needs a scheduler and Dask).  Data flow: nothing is kept here; the
caller (the package's ``__init__``) owns the layers it gets back and publishes the snapshot.
"""

from __future__ import annotations

import os
import types
from typing import NamedTuple

from seamless import machine
from seamless.errors import ConfigurationError

from .environment import _read_env
from .files import _read_files
from .keys import (
    _MEMORY_CACHE_CAP,
    _MEMORY_CACHE_FRACTION,
    DEFAULT_CACHE_MAX,
    KEYS,
    NPARALLEL_DEPTH,
    Setting,
    _Entry,
    default_cache_dir,
)


class _Snapshot(NamedTuple):
    values: dict                        # key -> resolved value (plus "dask_client")
    settings: types.MappingProxyType    # key -> Setting
    workdir: str                        # the lookup directory the files were read from


def _current_dir() -> str:
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise ConfigurationError(
            "the current working directory no longer exists, so seamless.yaml cannot be looked "
            "up (change to an existing directory, or call seamless.config.set_workdir(path))"
        ) from None


def _read_sources(directory: str) -> tuple[dict[str, _Entry], list[tuple[str, _Entry]]]:
    return _read_env(), _read_files(directory)


def _resolve(python: dict, client, env_layer: dict, file_layer: list, workdir: str) -> _Snapshot:
    """Merge the sources key by key, resolve defaults, and check what must go together."""
    chosen: dict[str, _Entry | None] = {key: None for key in KEYS}
    for key, entry in file_layer:
        chosen[key] = entry
    chosen.update(env_layer)
    for key, value in python.items():
        chosen[key] = _Entry(value, "python", None, None, "seamless.config.init()")

    def pick(key, default):
        entry = chosen[key]
        if entry is None:
            return Setting(default() if callable(default) else default, "default")
        if entry.value is None:
            return Setting(default() if callable(default) else default, entry.label)
        return Setting(entry.value, entry.label)

    settings = {}
    settings["execution"] = pick("execution", "process")
    settings["workers"] = pick("workers", lambda: machine.snapshot().cpus)
    settings["nparallel"] = pick("nparallel", NPARALLEL_DEPTH * settings["workers"].value)
    cache = pick("cache", True)
    if cache.value is True:
        cache = Setting(default_cache_dir(), cache.source)
    elif cache.value is False:
        cache = Setting(None, cache.source)
    settings["cache"] = cache
    cap = pick("cache_max", None)
    if cap.value is None:
        # The default directory nobody chose is capped; a configured one is as large as its
        # owner lets it grow, unless cache_max says otherwise.
        implicit = cache.value is not None and cache.source == "default"
        cap = Setting(DEFAULT_CACHE_MAX if implicit else None, cap.source)
    elif cap.value == 0:
        cap = Setting(None, cap.source)
    settings["cache_max"] = cap
    settings["scheduler"] = pick("scheduler", None)
    memory = chosen["memory_cache"]
    if memory is None or memory.value is None:
        phys = machine.snapshot().physical_memory
        default = min(_MEMORY_CACHE_CAP, phys // _MEMORY_CACHE_FRACTION)
        settings["memory_cache"] = Setting(default, memory.label if memory else "default")
    else:
        kind, amount = memory.value
        if kind == "percent":
            amount = int(machine.snapshot().physical_memory * amount / 100)
        settings["memory_cache"] = Setting(amount, memory.label)

    if settings["execution"].value == "remote" and client is None:
        entry = chosen["execution"]
        assert entry is not None, "'remote' is never the default execution"
        if settings["scheduler"].value is None:
            raise ConfigurationError(
                f"execution is 'remote' (from {entry.where}) but no Dask scheduler is set "
                f"(set SEAMLESS_SCHEDULER, add '- scheduler: tcp://host:8786' to seamless.yaml, "
                f"or call seamless.config.init(dask_client=client))",
                source=entry.path, line=entry.line, key="execution", value="remote")
        if not _dask_available():
            raise ConfigurationError(
                'execution: remote needs Dask: pip install "seamless[dask]"',
                source=entry.path, line=entry.line, key="execution", value="remote")

    values = {key: setting.value for key, setting in settings.items()}
    values["dask_client"] = client
    ordered = {key: settings[key] for key in KEYS}
    return _Snapshot(values, types.MappingProxyType(ordered), workdir)


def _dask_available() -> bool:
    """Whether the ``dask`` extra is installed (looked up without importing it)."""
    import importlib.util
    return importlib.util.find_spec("distributed") is not None
