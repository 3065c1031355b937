"""Checks of the values given to the Python calls (``init``, ``set_nparallel``, ``spawn`` ...).

Unlike a bad file or environment value (``ConfigurationError`` naming its source), a bad
argument is the caller's programming error: TypeError or ValueError, with the call that would
work.  ``_PY_CHECKS`` maps each key to its check.  Data flow: pure functions.
"""

from __future__ import annotations

import operator
import os

from .keys import (
    _CACHE_MAX_TEXT,
    _MEMORY_TEXT,
    _PY_CACHE_TEXT,
    _SCHEDULER_TEXT,
    EXECUTIONS,
    _BadValue,
    _cache_max_value,
    _int_like,
    _memory_value,
    _type_note,
)


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


def _py_size(value, text: str, parse, fix: str):
    """A size setting given to ``init()``: bytes as an int, or a string with a unit."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{text}, got {value!r} ({_type_note(value)}; {fix})")
    try:
        return parse(value)
    except _BadValue as exc:
        raise ValueError(f"{exc.args[0]} ({fix})") from None


def _py_memory_cache(value):
    return _py_size(value, _MEMORY_TEXT, _memory_value,
                    "use seamless.config.init(memory_cache='512MiB')")


def _py_cache_max(value):
    return _py_size(value, _CACHE_MAX_TEXT, _cache_max_value,
                    "use seamless.config.init(cache_max='5GiB')")


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
