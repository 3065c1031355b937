"""The ``SEAMLESS_*`` environment variables: one layer of entries, checked as they are read.

Data flow: ``_read_env()`` reads ``os.environ`` when the settings are (re-)read and returns a
new dict (key -> ``_Entry``) that the layering owns; a bad value raises ``ConfigurationError``
naming the variable.
"""

from __future__ import annotations

import os

from seamless.errors import ConfigurationError

from .keys import (
    _CACHE_OFF_WORDS,
    _CACHE_ON_WORDS,
    ENV_VARS,
    EXECUTIONS,
    _BadValue,
    _cache_max_value,
    _Entry,
)


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
