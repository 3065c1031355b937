"""What every command shares: messages, exit codes, and finding and opening the cache.

Messages go to stderr, prefixed by the command's name (``seamless-run: error: ...``), and name
the thing at fault and the fix (docs/cli.md). An expected failure is raised as
``CommandError`` (exit 1 unless told otherwise) and printed by ``run_main``: never a traceback.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "CommandError", "USAGE", "error", "warn", "info", "warnings_as_messages", "cache_directory",
    "open_cache", "run_main", "exit_now",
]

USAGE = 2


class CommandError(Exception):
    """An expected failure: ``message`` goes to stderr, the process exits with ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _write(prog: str, text: str) -> None:
    try:
        sys.stderr.write(f"{prog}: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # stderr closed: nothing else to tell the user with


def error(prog: str, message: str) -> None:
    _write(prog, "error: " + message)


def warn(prog: str, message: str) -> None:
    _write(prog, "warning: " + message)


def info(prog: str, message: str) -> None:
    _write(prog, message)


class warnings_as_messages:
    """Within this block, Python warnings (the cache's ``CacheWarning``s) are collected and
    printed as ``<prog>: warning: ...`` lines at its end: for a command they are messages to
    the user, not tracebacks-in-waiting (``-W error`` must not turn them into a crash)."""

    def __init__(self, prog: str):
        self.prog = prog

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        from seamless.errors import SeamlessWarning

        self._catcher.__exit__(*exc)
        for w in self._caught:
            text = str(w.message)
            if not issubclass(w.category, SeamlessWarning):
                text = f"{w.category.__name__}: {text}"
            warn(self.prog, text)
        return False


def cache_directory(explicit=None) -> str:
    """The commands' cache directory (docs/cli.md), without creating it.

    ``explicit`` (``seamless-cache --cache``), else ``SEAMLESS_CACHE``; YAML is parsed (by
    ``seamless.config``) only when a project or profile file exists in the cwd, so a plain hit
    never imports YAML.
    """
    if explicit:
        return os.path.abspath(os.path.expanduser(os.fsdecode(explicit)))
    env = os.environ.get("SEAMLESS_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.path.exists("seamless.yaml") or os.path.exists("seamless.profile.yaml"):
        from seamless import config

        return config.command_cache_dir()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "seamless")
    return os.path.join(os.path.expanduser("~"), ".cache", "seamless")


def open_cache(directory: str):
    """The ``PersistentCache`` of ``directory``; an unusable one is a ``CommandError`` (exit 1)
    naming the directory and ``SEAMLESS_CACHE`` (docs/caching.md: ``CacheError``)."""
    from seamless.cache.persistent import PersistentCache
    from seamless.errors import CacheError

    try:
        cache = PersistentCache(directory)
    except CacheError as e:
        message = str(e)
        if "SEAMLESS_CACHE" not in message:
            message += " (set SEAMLESS_CACHE to a usable directory)"
        raise CommandError(message) from None
    return cache


def _guard_standard_fds() -> None:
    """Open ``/dev/null`` on a closed fd 0, 1 or 2 (``seamless-run cmd >&-``).

    Otherwise the next file we open (the cache database, a buffer) would get that number, and
    bytes meant for stdout would be written into it. A closed stdout then discards output, as
    ``>/dev/null`` would.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _asks_verbose(prog: str, argv) -> bool:
    """Whether the command line has ``-v``: only ``seamless-run`` has it (docs/cli.md). Its
    own option reader decides, so ``seamless-run echo -v`` (``-v`` is the command's) is not."""
    if prog != "seamless-run":
        return False
    from seamless.cli.options import RunOptions

    try:
        return RunOptions(argv).verbose
    except (SystemExit, CommandError):
        return False  # the command line itself is wrong: no -v to honour


def _report_seamless_error(prog: str, exc: BaseException, argv) -> int:
    """A ``SeamlessError`` (a bad seamless.yaml, an unusable cache ...) is a message for the
    user, one line, exit 1; its traceback is for ``-v`` only, printed before that line."""
    if _asks_verbose(prog, argv):
        import traceback

        try:
            traceback.print_exception(exc, file=sys.stderr)
        except (OSError, ValueError):
            return 1
    error(prog, str(exc))
    return 1


def run_main(prog: str, main, argv=None) -> int:
    """Call ``main(argv)`` and turn expected failures into a message and an exit code.

    ``CommandError`` and every ``seamless.errors.SeamlessError`` become one
    ``<prog>: error: ...`` line (the latter exit 1, with its traceback under ``-v``).
    """
    _guard_standard_fds()
    try:
        return main(argv)
    except CommandError as e:
        error(prog, str(e))
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`seamless-run cat big | head`): like a shell tool,
        # exit quietly; stdout is redirected to /dev/null so the interpreter's flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except Exception as e:
        # seamless.errors is imported only now: a cache hit that fails nothing never pays it.
        from seamless.errors import SeamlessError

        if not isinstance(e, SeamlessError):
            raise
        return _report_seamless_error(prog, e, argv)


def exit_now(code: int) -> None:
    """Flush stdout and stderr, then end the process without the interpreter's finalization.

    By the time a command returns, everything it owns is closed or removed by its ``finally``
    blocks: cache connections, sidecars, the sandbox; nothing is queued. Finalization would
    only tear down the loaded modules, about 4 ms: a sixth of a ``seamless-run`` cache hit
    (docs/cli.md, "Start-up").
    """
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        code = code or 1  # the last of our output could not be written
    os._exit(code)
