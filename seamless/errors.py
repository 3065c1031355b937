"""Every exception and warning of seamless (docs/transformations.md, "Failures").

Why the stdlib bases: existing ``except ValueError`` / ``except RuntimeError`` code keeps
catching our errors.  Every class pickles with its attributes intact, because the queue and the
Dask backend carry them across processes: ``__reduce__`` rebuilds them from their keyword
attributes instead of ``args``.
"""

from __future__ import annotations

import importlib

__all__ = [
    "SeamlessError", "ConfigurationError", "TransformationError", "WorkerCrashedError",
    "TransformationCancelledError", "SharedMemoryError", "CacheError", "QueueError",
    "SeamlessWarning", "CacheWarning", "BackendWarning", "RemoteTraceback", "error_class",
]


class SeamlessError(Exception):
    """Failures of the machinery itself (pool cannot start, malformed frame, ...)."""


class ConfigurationError(SeamlessError, ValueError):
    """A YAML file, environment variable or settings combination is wrong."""

    def __init__(self, message: str, *, source=None, line=None, key=None, value=None):
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key
        self.value = value

    def __reduce__(self):
        kw = dict(source=self.source, line=self.line, key=self.key, value=self.value)
        return _rebuild, (type(self), (str(self),), kw)


class RemoteTraceback(Exception):
    """The failure text of a transformation, shown as the ``__cause__`` of its error.

    Python's default display prints the cause first, so the user reads the traceback of the
    place where the body failed before our one-line summary.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


class TransformationError(SeamlessError, RuntimeError):
    """A transformation failed; ``.traceback`` holds its failure text (docs/transformations.md).

    ``.exception_type`` is the qualified name of the class the body raised (``"KeyError"``,
    ``"mylib.ParseError"``), or of this error's own class when no body raised.  What
    ``.run()`` raises for a body's exception is also an instance of that class when the caller
    can import it (``error_class``), so ``except KeyError:`` catches it.
    """

    def __init__(self, message: str, *, checksum=None, traceback=None, name=None, index=None,
                 exception_type=None):
        super().__init__(message)
        self.checksum = checksum
        self.traceback = traceback
        self.name = name
        self.index = index
        self.exception_type = exception_type or qualified_name(type(self))

    def __str__(self):
        # Ours, not the mixed-in class's: KeyError's would show the message as a repr.
        return str(self.args[0]) if self.args else ""

    def _kw(self):
        return dict(checksum=self.checksum, traceback=self.traceback, name=self.name,
                    index=self.index, exception_type=self.exception_type)

    def __reduce__(self):
        args = (self.args[0] if self.args else "",)
        original = type(self).__dict__.get("_seamless_original")
        if original is not None:  # a generated class: rebuilt from the class it mirrors
            return _rebuild_mixed, (original, args, self._kw())
        return _rebuild, (type(self), args, self._kw())


class WorkerCrashedError(TransformationError):
    """The process running the transformation died."""

    def __init__(self, message: str, *, exitcode=None, signal=None, pid=None, **kw):
        super().__init__(message, **kw)
        self.exitcode = exitcode
        self.signal = signal
        self.pid = pid

    def _kw(self):
        return dict(super()._kw(), exitcode=self.exitcode, signal=self.signal, pid=self.pid)


class TransformationCancelledError(TransformationError):
    """The value of a cancelled handle was asked for."""


class SharedMemoryError(SeamlessError, MemoryError):
    """A shared-memory segment could not be allocated; ``.size`` is the byte count asked for."""

    def __init__(self, message: str, *, size=None):
        super().__init__(message)
        self.size = size

    def __reduce__(self):
        return _rebuild, (type(self), (str(self),), dict(size=self.size))


class CacheError(SeamlessError, OSError):
    """A persistent cache that the commands require is unusable.

    Built like ``OSError(errno, strerror, filename)`` so ``.errno``/``.strerror``/``.filename``
    are set; ``message`` replaces the default ``[Errno N] ...`` text.
    """

    def __init__(self, message: str, errno=None, strerror=None, filename=None):
        super().__init__(errno, strerror, filename)
        self.message = message

    def __str__(self):
        return self.message

    def __reduce__(self):
        return type(self), (self.message, self.errno, self.strerror, self.filename)


class QueueError(SeamlessError):
    """Between a command and the queue server: no server, refusal, lost connection."""


class SeamlessWarning(UserWarning):
    """Base of seamless's warnings; also used for ignored upstream configuration keys."""


class CacheWarning(SeamlessWarning):
    """A persistent-cache write failed, a corrupt buffer was discarded, or the cache is off."""


class BackendWarning(SeamlessWarning):
    """A compiled module of seamless._ipc failed to import; its pure-Python twin is used."""


def _rebuild(cls, args, kw):
    return cls(*args, **kw)


def _rebuild_mixed(original, args, kw):
    return _mixed(original)(*args, **kw)


def qualified_name(cls: type) -> str:
    """``KeyError`` for a builtin, ``module.QualName`` for any other class."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def error_class(exception_type: str | None) -> type:
    """The class to raise for a body that raised ``exception_type`` (a qualified name).

    The generated subclass of ``TransformationError`` and that class when the class can be
    imported here, is an ``Exception`` and can be combined with ours (as Dask and loky
    re-raise the remote type); else ``TransformationError``.  The failure itself travels as
    text, so the original exception's own attributes are not carried over.
    """
    original = _find_class(exception_type) if exception_type else None
    return TransformationError if original is None else _mixed(original)


def _find_class(qualified: str):
    """The exception class named ``qualified``, imported like pickle would; None if absent."""
    parts = qualified.split(".")
    if len(parts) == 1:
        splits = [("builtins", parts)]
    else:
        splits = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    for module_name, path in splits:
        found: object
        try:
            found = importlib.import_module(module_name)
        except Exception:  # not importable here (or its import failed): try a shorter prefix
            continue
        for attr in path:
            found = getattr(found, attr, None)
        if isinstance(found, type) and issubclass(found, Exception) \
                and not issubclass(found, TransformationError):
            return found
    return None


_mixed_classes: dict = {}


def _mixed(original: type) -> type:
    """``TransformationError[KeyError]``: made once per class; TransformationError when the
    two cannot be combined (instance layouts, a constructor that needs other arguments)."""
    cls = _mixed_classes.get(original)
    if cls is None:
        name = f"TransformationError[{original.__qualname__}]"
        try:
            cls = type(name, (TransformationError, original),
                       {"__module__": __name__, "__qualname__": name,
                        "_seamless_original": original})
            cls("probe")
        except Exception:
            cls = TransformationError
        _mixed_classes[original] = cls
    return cls
