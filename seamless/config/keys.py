"""The key table: every setting's name, default, environment variable and value check.

What a value may be is decided here once for every source: ``_file_value`` checks a YAML value
(a ``_BadValue`` carries the message body; the caller adds the file and line),
``_memory_value`` / ``_cache_max_value`` parse sizes, and ``_unknown_key`` words the
did-you-mean message for a key that is not in the table.  The Python-call checks, which raise
TypeError/ValueError instead, are in arguments.py.  Data flow: pure functions and constants.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

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


class _BadValue(Exception):
    """A value failed its check; ``args[0]`` is the message body (without file and line)."""


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/seamless`` (when absolute), else ``~/.cache/seamless``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "seamless")
    return os.path.join(os.path.expanduser("~"), ".cache", "seamless")


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
