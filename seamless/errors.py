"""Every exception and warning of seamless (docs/transformations.md, "Failures").

Why the stdlib bases: existing ``except ValueError`` / ``except RuntimeError`` code keeps
catching our errors.  Every class pickles with its attributes intact, because the queue and the
Dask backend carry them across processes: ``__reduce__`` rebuilds them from their keyword
attributes instead of ``args``.
"""

from __future__ import annotations

__all__ = [
    "SeamlessError", "ConfigurationError", "TransformationError", "WorkerCrashedError",
    "TransformationCancelledError", "SharedMemoryError", "CacheError", "QueueError",
    "SeamlessWarning", "CacheWarning", "BackendWarning", "RemoteTraceback",
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
    """A transformation failed; ``.traceback`` holds its failure text (docs/transformations.md)."""

    def __init__(self, message: str, *, checksum=None, traceback=None, name=None, index=None):
        super().__init__(message)
        self.checksum = checksum
        self.traceback = traceback
        self.name = name
        self.index = index

    def _kw(self):
        return dict(checksum=self.checksum, traceback=self.traceback, name=self.name,
                    index=self.index)

    def __reduce__(self):
        return _rebuild, (type(self), (self.args[0] if self.args else "",), self._kw())


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
