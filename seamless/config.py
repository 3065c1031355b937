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

Ownership: everything here belongs to this module and is changed only under ``_lock`` (one
``RLock``).  Files and environment are read on first use (the first ``get()``, ``get_nparallel()``,
``get_settings()`` or ``init()``), once per process; ``init()`` and ``set_workdir()`` make the next
use read them again.  A read that fails (``ConfigurationError``) changes nothing, so the next use
tries again and raises again until the file is fixed.  ``generation()`` is bumped whenever the
settings may have changed, so other modules (the buffer cache, the persistent cache) notice a new
``memory_cache`` or cache directory with one integer comparison.

Light: stdlib only at import.  PyYAML is imported when a YAML file actually exists.

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

import logging
import operator
import os
import re
import sys
import threading
import types
import warnings
from typing import Any, NamedTuple

from seamless.errors import ConfigurationError, SeamlessWarning
from seamless import machine

__all__ = [
    "init", "set_nparallel", "get_nparallel", "set_workdir", "get_workdir", "get_settings",
    "Setting",
]

logger = logging.getLogger("seamless")

PROJECT_FILE = "seamless.yaml"
PROFILE_FILE = "seamless.profile.yaml"

KEYS = ("cache", "cache_max", "execution", "memory_cache", "nparallel", "scheduler", "workers")
# The default nparallel is this many items per worker at most (docs/parallel.md):
# ``parallel()`` pulls fewer while the items it holds have large inputs, never fewer than
# ``workers``; ``get_nparallel()`` reports this upper bound.
NPARALLEL_DEPTH = 8
EXECUTIONS = ("process", "spawn", "remote")
ENV_VARS = {
    "cache": "SEAMLESS_CACHE",
    "cache_max": "SEAMLESS_CACHE_MAX",
    "execution": "SEAMLESS_EXECUTION",
    "nparallel": "SEAMLESS_NPARALLEL",
    "scheduler": "SEAMLESS_SCHEDULER",
    "workers": "SEAMLESS_WORKERS",
}
_ACCEPTED_KEYS = ", ".join(sorted(KEYS + ("inherit_from_parent",)))
_IGNORED_UPSTREAM = ("project", "subproject", "node", "record")
_UPSTREAM_SERVICES = {
    "cluster": "an upstream Seamless cluster",
    "clusters": "upstream Seamless clusters",
    "queue": "an upstream Seamless job queue",
}
_DASK_HINT = "for a Dask cluster use '- execution: remote' and '- scheduler: tcp://host:8786'"
_STAGE_KEY = re.compile(r"stage\s+\S.*")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}

# memory_cache: a default cap, and the units of a size string
_MEMORY_CACHE_CAP = 2 * 2**30
_MEMORY_CACHE_FRACTION = 4      # default: at most a quarter of physical memory
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]+)\s*")
_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*%\s*")
_MEMORY_TEXT = ("memory_cache must be a number of bytes, a size with a unit such as '512MiB' or "
                "'2GB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), or a percentage of "
                "physical memory such as '10%'")
_SCHEDULER_TEXT = "scheduler must be a Dask scheduler address such as 'tcp://host:8786'"
_CACHE_TEXT = "cache must be a directory path, true or false"
_PY_CACHE_TEXT = "cache must be a directory path, True or False"
# The persistent cache is on by default (docs/caching.md). SEAMLESS_CACHE accepts these words
# besides a directory (a directory of such a name is written "./off").
_CACHE_OFF_WORDS = ("off", "false", "no", "0", "none")
_CACHE_ON_WORDS = ("on", "true", "yes", "1")
# cache_max: the cap of the implicit default directory, as ccache's default (5 GiB) and for
# the same reason: large enough for a working set of results, small enough that a user who
# never configured anything does not find gigabytes more of their disk gone.
DEFAULT_CACHE_MAX = 5 * 2**30
_CACHE_MAX_TEXT = ("cache_max must be a number of bytes or a size with a unit such as '5GiB' or "
                   "'500MB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB); 0 means no cap")


class Setting(NamedTuple):
    """One key's value in force and where it came from.

    ``source`` is ``"default"``, ``"python"``, an environment variable's name, or
    ``"<file>:<line>"`` (the file named as in error messages).
    """

    value: Any
    source: str


class _Entry(NamedTuple):
    """A value as one source gave it (checked, paths made absolute, defaults not resolved)."""

    value: Any          # None: "the default", explicitly
    label: str          # Setting.source
    path: str | None    # ConfigurationError.source: absolute file path or variable name
    line: int | None
    where: str          # for messages: "seamless.yaml, line 2", "SEAMLESS_EXECUTION", ...


class _Snapshot(NamedTuple):
    values: dict                        # key -> resolved value (plus "dask_client")
    settings: types.MappingProxyType    # key -> Setting
    workdir: str                        # the lookup directory the files were read from


class _BadValue(Exception):
    """A value failed its check; ``args[0]`` is the message body (without file and line)."""


_lock = threading.RLock()
_snapshot: _Snapshot | None = None      # published; None = not read yet (or must be re-read)
_generation = 0
_python: dict[str, Any] = {}            # rank 1, survives re-reads
_dask_client: Any = None
_workdir: str | None = None             # set by set_workdir() / init(workdir=)
_env_layer: dict[str, _Entry] = {}
_file_layer: list[tuple[str, _Entry]] = []
_warned: set = set()                    # (file path, key, line) already warned about

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep     # .../seamless/


# ---------------------------------------------------------------------------------------------
# public API


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


# ---------------------------------------------------------------------------------------------
# internal interface


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


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/seamless`` (when absolute), else ``~/.cache/seamless``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "seamless")
    return os.path.join(os.path.expanduser("~"), ".cache", "seamless")


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
        _warned.clear()
        _generation += 1


# ---------------------------------------------------------------------------------------------
# reading and resolving


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


def _read_env() -> dict[str, _Entry]:
    layer = {}
    for key, var in ENV_VARS.items():
        raw = os.environ.get(var)
        if not raw:
            continue
        try:
            value = _env_value(key, raw)
        except _BadValue as exc:
            raise ConfigurationError(
                f"environment variable {var}: {exc.args[0]}",
                source=var, line=None, key=key, value=raw) from None
        layer[key] = _Entry(value, var, var, None, var)
    return layer


def _env_value(key: str, raw: str):
    if key in ("workers", "nparallel"):
        text = raw.strip()
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise _BadValue(f"{key} must be a positive integer, got {raw!r}")
        return int(text)
    if key == "execution":
        if raw not in EXECUTIONS:
            raise _BadValue(f"execution must be one of {', '.join(EXECUTIONS)}, got {raw!r}")
        return raw
    if key == "cache":
        word = raw.strip().lower()
        if word in _CACHE_OFF_WORDS:
            return False
        if word in _CACHE_ON_WORDS:
            return True
        return os.path.abspath(os.path.expanduser(raw))
    if key == "cache_max":
        return _cache_max_value(raw.strip())
    return raw      # scheduler


def _read_files(lookup_dir: str) -> list[tuple[str, _Entry]]:
    """The file items in the order they apply (later wins), parents first when inherited."""
    return _collect(lookup_dir, lookup_dir)


def _collect(directory: str, lookup_dir: str) -> list[tuple[str, _Entry]]:
    parsed = []
    inherit = False
    for name in (PROJECT_FILE, PROFILE_FILE):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            entries, file_inherits = _parse_file(path, _display_name(path, lookup_dir))
            parsed.append(entries)
            inherit = inherit or file_inherits
    result: list[tuple[str, _Entry]] = []
    if inherit:
        parent = os.path.dirname(directory)
        if parent != directory:
            result.extend(_collect(parent, lookup_dir))
    for entries in parsed:
        result.extend(entries)
    return result


def _display_name(path: str, lookup_dir: str) -> str:
    """Relative to the lookup directory when inside it, otherwise absolute."""
    prefix = lookup_dir.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        return path[len(prefix):]
    return path


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


# ---------------------------------------------------------------------------------------------
# YAML files


def _parse_file(path: str, display: str) -> tuple[list[tuple[str, _Entry]], bool]:
    """Check one file and return its items in order, and whether it says inherit_from_parent."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None else str(exc)
        raise ConfigurationError(f"{display}: cannot read the file ({reason})",
                                 source=path, line=None, key=None, value=None) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{display}: cannot read the file as UTF-8 ({exc}); save it "
                                 f"as UTF-8", source=path, line=None, key=None,
                                 value=None) from None
    import yaml  # only here: no YAML file, no yaml import

    loader = yaml.SafeLoader(text)
    try:
        return _FileParser(loader, path, display).parse()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, display) from None
    finally:
        loader.dispose()


def _yaml_error(exc, path: str, display: str) -> ConfigurationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        text = problem
        if context:
            context_mark = getattr(exc, "context_mark", None)
            where = (f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
                     if context_mark is not None and context_mark is not mark else "")
            text = f"{problem} ({context}{where})"
    else:
        text = context or str(exc)
    if mark is not None:
        line = mark.line + 1
        message = f"{display}, line {line}, column {mark.column + 1}: not valid YAML: {text}"
    else:
        line = None
        message = f"{display}: not valid YAML: {text}"
    return ConfigurationError(message, source=path, line=line, key=None, value=None)


class _FileParser:
    """Walks the composed nodes of one file, so every item knows its line."""

    def __init__(self, loader, path: str, display: str):
        self.loader = loader
        self.path = path
        self.display = display
        self.directory = os.path.dirname(path)
        self.entries: list[tuple[str, _Entry]] = []
        self.inherit = False
        self.warned_keys: set[str] = set()

    def construct(self, node):
        return self.loader.construct_object(node, deep=True)

    def error(self, line, text, key=None, value=None) -> ConfigurationError:
        where = self.display if line is None else f"{self.display}, line {line}"
        return ConfigurationError(f"{where}: {text}", source=self.path, line=line, key=key,
                                  value=value)

    def parse(self):
        import yaml

        root = self.loader.get_single_node()
        if root is None:
            return self.entries, self.inherit
        if isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null":
            return self.entries, self.inherit
        if not isinstance(root, yaml.SequenceNode):
            if isinstance(root, yaml.MappingNode):
                got = "a mapping"
            else:
                got = f"a single value {self.construct(root)!r}"
            raise self.error(None, "the file must be a YAML list of single-key items such as "
                                   f"'- nparallel: 4', got {got}")
        for item in root.value:
            line = item.start_mark.line + 1
            if isinstance(item, yaml.ScalarNode):
                word = self.construct(item)
                if word == "inherit_from_parent":
                    self.inherit = True
                elif isinstance(word, str):
                    self.item(word, None, line, bare=True)
                else:
                    raise self.error(line, "each item must be a single-key mapping such as "
                                           f"'- nparallel: 4', got {word!r}", value=word)
            elif isinstance(item, yaml.SequenceNode):
                raise self.error(line, "each item must be a single-key mapping such as "
                                       "'- nparallel: 4', got a list", value=self.construct(item))
            else:
                if len(item.value) != 1:
                    keys = [str(self.construct(k)) for k, _ in item.value]
                    n = len(keys)
                    if n == 0:
                        text = "each item must have exactly one key, got 0 (an empty mapping)"
                    else:
                        text = (f"each item must have exactly one key, got {n} "
                                f"({', '.join(keys)}); write them as "
                                f"{_NUMBER_WORDS.get(n, n)} items")
                    raise self.error(line, text, value=self.construct(item))
                key_node, value_node = item.value[0]
                self.item(self.construct(key_node), value_node, key_node.start_mark.line + 1)
        return self.entries, self.inherit

    def item(self, key, value_node, line, bare=False):
        """Check one ``key: value`` item (``value_node`` None for a bare word)."""
        if not isinstance(key, str):
            raise self.error(line, _unknown_key(key), key=key)
        if _STAGE_KEY.fullmatch(key):
            self.warn(line, key, f"{key!r} block is an upstream Seamless stage and is skipped; "
                                 f"there are no stages here")
            return
        value = None if value_node is None else self.construct(value_node)
        if key in KEYS:
            if bare:
                raise self.error(line, f"key {key!r} needs a value: write '- {key}: VALUE' "
                                       f"('- {key}: null' for the default)", key=key)
            try:
                parsed = _file_value(key, value, self.directory)
            except _BadValue as exc:
                raise self.error(line, exc.args[0], key=key, value=value) from None
            self.entries.append((key, _Entry(parsed, f"{self.display}:{line}", self.path, line,
                                             f"{self.display}, line {line}")))
        elif key == "inherit_from_parent":
            if value is None or value is True:
                self.inherit = True
            elif value is not False:
                raise self.error(line, f"inherit_from_parent must be true or false when given "
                                       f"a value, got {value!r} (or write the bare word "
                                       f"'- inherit_from_parent')", key=key, value=value)
        elif key in _IGNORED_UPSTREAM:
            self.warn(line, key, f"key {key!r} is an upstream Seamless setting and is ignored "
                                 f"here")
        elif key == "persistent":
            self.warn(line, key, "key 'persistent' is an upstream Seamless setting and is "
                                 "ignored here; the persistent cache is on by default "
                                 "('- cache: DIR' chooses its directory, '- cache: off' "
                                 "turns it off)")
        elif key == "remote" and value == "daskserver":
            self.warn(line, key, "'remote: daskserver' is an upstream Seamless setting and is "
                                 "ignored here; Dask is the only remote backend (use "
                                 "'- execution: remote' and '- scheduler: tcp://host:8786')")
        elif key == "remote":
            raise self.error(line, f"key 'remote' with value {value!r} names an upstream "
                                   f"Seamless remote service, which this version does not have "
                                   f"({_DASK_HINT})", key=key, value=value)
        elif key in _UPSTREAM_SERVICES:
            raise self.error(line, f"key {key!r} names {_UPSTREAM_SERVICES[key]}, which this "
                                   f"version does not have ({_DASK_HINT})", key=key, value=value)
        else:
            raise self.error(line, _unknown_key(key, bare), key=key, value=value)

    def warn(self, line, key, text):
        """One SeamlessWarning per file and key; repeats (also on re-reads) go to DEBUG."""
        if key in self.warned_keys:
            return
        self.warned_keys.add(key)
        message = f"{self.display}, line {line}: {text}"
        with _lock:
            cause = (self.path, key, line)
            if cause in _warned:
                logger.debug("%s", message)
                return
            _warned.add(cause)
        warnings.warn(message, SeamlessWarning, stacklevel=_user_stacklevel())


def _unknown_key(key, bare=False) -> str:
    """The message for a key we do not know, with the likely fix: a close key name
    (``workrs``, ``Workers`` -> ``workers``), or the colon a ``- nparallel 4`` item lacks."""
    import difflib

    accepted = f"accepted keys: {_ACCEPTED_KEYS}"
    if not isinstance(key, str):
        return f"unknown key {key!r} ({accepted})"
    names = KEYS + ("inherit_from_parent",)
    word, _, rest = key.strip().partition(" ")
    if bare and rest.strip() and word.lower() in names:
        name = word.lower()
        return (f"'- {key}' lacks the colon after the key; write '- {name}: {rest.strip()}' "
                f"(YAML reads '{key}' as one word)")
    close = difflib.get_close_matches(key.lower(), names, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}? ({accepted})"
    return f"unknown key {key!r} ({accepted})"


def _user_stacklevel() -> int:
    """The stacklevel (for a warnings.warn in our caller) of the first frame outside seamless."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _type_note(value) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _int_like(value):
    """The positive int a wrongly-typed value stands for (``'4'``, ``4.0``), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        n = int(value.strip())
        return n if n > 0 else None
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def _file_value(key: str, value, directory: str):
    """Check a YAML value; return it parsed (None: the default).  Raises _BadValue."""
    if value is None:
        return None
    if key in ("workers", "nparallel"):
        if isinstance(value, bool) or not isinstance(value, int):
            hint = _int_like(value)
            fix = f"; write {hint} without quotes" if isinstance(value, str) and hint else (
                f"; write {hint}" if hint else "")
            raise _BadValue(f"{key} must be a positive integer, got {value!r} "
                            f"({_type_note(value)}{fix})")
        if value < 1:
            raise _BadValue(f"{key} must be a positive integer, got {value!r}")
        return value
    if key == "execution":
        if value not in EXECUTIONS or not isinstance(value, str):
            raise _BadValue(f"execution must be one of {', '.join(EXECUTIONS)}, got {value!r}")
        return value
    if key == "scheduler":
        if not isinstance(value, str) or not value.strip():
            raise _BadValue(f"{_SCHEDULER_TEXT}, got {value!r}")
        return value
    if key == "cache":
        if isinstance(value, bool):
            return value
        if not isinstance(value, str) or not value.strip():
            raise _BadValue(f"{_CACHE_TEXT}, got {value!r}")
        if value.strip().lower() in ("off", "none"):
            return False
        return os.path.normpath(os.path.join(directory, os.path.expanduser(value)))
    if key == "cache_max":
        return _cache_max_value(value)
    return _memory_value(value)


def _memory_value(value):
    """``memory_cache``: ("bytes", n) or ("percent", p).  Raises _BadValue."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _BadValue(f"{_MEMORY_TEXT}, got {value!r}")
        return ("bytes", value)
    if isinstance(value, str):
        m = _PERCENT.fullmatch(value)
        if m:
            percent = float(m.group(1))
            if percent <= 100:
                return ("percent", percent)
            raise _BadValue(f"{_MEMORY_TEXT}, got {value!r} (a percentage is at most 100%)")
        m = _SIZE.fullmatch(value)
        if m and m.group(2).lower() in _UNITS:
            return ("bytes", round(float(m.group(1)) * _UNITS[m.group(2).lower()]))
        raise _BadValue(f"{_MEMORY_TEXT}, got {value!r}")
    raise _BadValue(f"{_MEMORY_TEXT}, got {value!r} ({_type_note(value)})")


def _cache_max_value(value) -> int:
    """``cache_max``: bytes (0: no cap).  Raises _BadValue; a percentage is refused because
    the size of the file system under a shared directory is not a fixed quantity."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    try:
        parsed = _memory_value(value)
    except _BadValue:
        raise _BadValue(f"{_CACHE_MAX_TEXT}, got {value!r}") from None
    if parsed[0] != "bytes":
        raise _BadValue(f"{_CACHE_MAX_TEXT}, got {value!r} (a percentage is not accepted)")
    return parsed[1]


# ---------------------------------------------------------------------------------------------
# Python argument checks: TypeError / ValueError, never ConfigurationError


def _py_positive_int(name: str, value, call: str) -> int:
    """``call`` is the fix, with ``{}`` for the number: 'seamless.config.set_nparallel({})'."""
    n = None
    if not isinstance(value, (bool, str, float)):
        try:
            n = operator.index(value)
        except TypeError:
            n = None
    if n is None:
        hint = _int_like(value)
        raise TypeError(f"{name} must be a positive integer, got {value!r} "
                        f"({_type_note(value)}; use {call.format(hint if hint else 'N')})")
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r} "
                         f"(use {call.format('N')})")
    return n


def _check_workdir(path) -> str:
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise TypeError(f"workdir must be an existing directory, got {path!r} "
                        f"({_type_note(path)}; pass a path as a str or os.PathLike)")
    if not os.path.exists(text):
        raise ValueError(f"workdir must be an existing directory, got {text!r} "
                         f"(no such directory)")
    if not os.path.isdir(text):
        raise ValueError(f"workdir must be an existing directory, got {text!r} "
                         f"(not a directory)")
    return os.path.abspath(text)


def _py_cache(value):
    if isinstance(value, bool):
        return value
    try:
        text = os.fspath(value)
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise TypeError(f"{_PY_CACHE_TEXT}, got {value!r} ({_type_note(value)}; use "
                        f"seamless.config.init(cache='DIR') or init(cache=True))")
    if not text.strip():
        raise ValueError(f"{_PY_CACHE_TEXT}, got {text!r} (use "
                         f"seamless.config.init(cache='DIR') or init(cache=True))")
    return os.path.abspath(os.path.expanduser(text))


def _py_execution(value) -> str:
    choices = ", ".join(EXECUTIONS)
    if not isinstance(value, str):
        raise TypeError(f"execution must be one of {choices}, got {value!r} "
                        f"({_type_note(value)}; use seamless.config.init(execution='spawn'))")
    if value not in EXECUTIONS:
        raise ValueError(f"execution must be one of {choices}, got {value!r} "
                         f"(use seamless.config.init(execution='spawn'))")
    return value


def _py_scheduler(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{_SCHEDULER_TEXT}, got {value!r} ({_type_note(value)}; use "
                        f"seamless.config.init(scheduler='tcp://host:8786'))")
    if not value.strip():
        raise ValueError(f"{_SCHEDULER_TEXT}, got {value!r} (use "
                         f"seamless.config.init(scheduler='tcp://host:8786'))")
    return value


def _py_memory_cache(value):
    fix = "use seamless.config.init(memory_cache='512MiB')"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{_MEMORY_TEXT}, got {value!r} ({_type_note(value)}; {fix})")
    try:
        return _memory_value(value)
    except _BadValue as exc:
        raise ValueError(f"{exc.args[0]} ({fix})") from None


def _py_cache_max(value):
    fix = "use seamless.config.init(cache_max='5GiB')"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{_CACHE_MAX_TEXT}, got {value!r} ({_type_note(value)}; {fix})")
    try:
        return _cache_max_value(value)
    except _BadValue as exc:
        raise ValueError(f"{exc.args[0]} ({fix})") from None


def _py_dask_client(value):
    if isinstance(value, str):
        raise TypeError(f"dask_client must be a distributed.Client, got {value!r} (a str; for "
                        f"a scheduler address use seamless.config.init(scheduler={value!r}))")
    if not callable(getattr(value, "submit", None)):
        raise TypeError(f"dask_client must be a distributed.Client, got {value!r} "
                        f"({_type_note(value)}; use seamless.config.init("
                        f"dask_client=distributed.Client(address)))")
    return value


_PY_CHECKS = {
    "cache": _py_cache,
    "cache_max": _py_cache_max,
    "execution": _py_execution,
    "memory_cache": _py_memory_cache,
    "nparallel": lambda v: _py_positive_int("nparallel", v, "seamless.config.init(nparallel={})"),
    "scheduler": _py_scheduler,
    "workers": lambda v: _py_positive_int("workers", v, "seamless.config.init(workers={})"),
    "dask_client": _py_dask_client,
}
