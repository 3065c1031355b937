"""Writing results where the user sees them: stdout and the output files (docs/cli.md).

Every output appears by ``rename`` only: a temp file in the target's own directory is written,
``fsync``ed and renamed onto the target, so a reader sees the old file or the new one, never half
of one, and two runs writing the same output at once both succeed and leave one complete file.
A directory output is assembled beside the target and swapped in (``renameat2`` exchange where
the kernel has it, else two renames). The temp file or directory belongs to the call that made it
and is removed by it on any failure; the old target then stays intact.

Sources are bytes-like (a cache hit: slices of the verified buffer) or files (a fresh run: the
sandbox's files), both written the same way. A file gets the permission bits the job gave it
when they are known (``mode``: read from the sandbox's file on a run, from the result on a hit),
as ``open`` would create it (the umask applies); otherwise an existing target keeps its bits.
"""

from __future__ import annotations

import errno
import os

from seamless.shell.paths import display

__all__ = ["OutputError", "write_stdout", "copy_to_stdout", "write_file", "write_dir",
           "same_content", "file_mode", "keep_mode", "unlink_quietly"]

_TEMP = ".seamless-tmp-"
_CHUNK = 1 << 20
_RENAME_EXCHANGE = 2


class OutputError(Exception):
    """An output could not be written; the message names the file and the cause."""


def _describe(e: OSError) -> str:
    return e.strerror or str(e)


def _stdout_error(e: OSError) -> OutputError:
    return OutputError(f"could not write the command's stdout ({_describe(e)}); check where "
                       "seamless-run's output goes (a full disk, a closed terminal)")


def write_stdout(data) -> None:
    """Write ``data`` to fd 1, byte for byte (``BrokenPipeError`` propagates)."""
    view = memoryview(data)
    offset = 0
    try:
        while offset < view.nbytes:
            offset += os.write(1, view[offset:offset + (1 << 30)])
    except BrokenPipeError:
        raise
    except OSError as e:
        raise _stdout_error(e) from None


def copy_to_stdout(path: str) -> None:
    """Copy a file to fd 1 (sendfile where it works, else read and write)."""
    try:
        _copy_to_stdout(path)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise _stdout_error(e) from None


def _copy_to_stdout(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        try:
            while offset < size:
                sent = os.sendfile(1, f.fileno(), offset, min(size - offset, 1 << 30))
                if sent == 0:
                    break
                offset += sent
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EBADF) or offset:
                raise
        for piece in iter(lambda: f.read(_CHUNK), b""):
            write_stdout(piece)


def _temp_beside(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f"{_TEMP}{name}-{os.getpid()}-{os.urandom(4).hex()}")


def _fill(fd: int, source) -> None:
    """Write ``source`` (bytes-like, or the path of a file) into ``fd``."""
    if isinstance(source, str):
        with open(source, "rb", buffering=0) as f:
            for piece in iter(lambda: f.read(_CHUNK), b""):
                _fill(fd, piece)
        return
    view = memoryview(source)
    offset = 0
    while offset < view.nbytes:
        offset += os.write(fd, view[offset:offset + (1 << 30)])


def _write_temp(temp: str, source, mode: int) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _fill(fd, source)
        os.fsync(fd)
    finally:
        os.close(fd)


def same_content(target: str, data) -> bool:
    """True when ``target`` is a regular file holding exactly ``data`` (left untouched then)."""
    view = memoryview(data)
    try:
        with open(target, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != view.nbytes:
                return False
            offset = 0
            while offset < view.nbytes:
                piece = f.read(_CHUNK)
                if not piece or piece != view[offset:offset + len(piece)]:
                    return False
                offset += len(piece)
            return True
    except OSError:
        return False


def file_mode(path: str) -> int:
    """The permission bits (``0o777``) of the file at ``path``."""
    return os.stat(path).st_mode & 0o777


def _mode_for(target: str, mode) -> int:
    """``mode`` (the job's bits) when known, else an existing target's bits, else 0o666."""
    if mode is not None:
        return mode
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        return 0o666


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for every thread);
    without ``/proc`` (or before Linux 4.7), changed and restored at once."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return _swap_umask()
    return _swap_umask()


def _swap_umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def keep_mode(target: str, mode) -> None:
    """Give a target left in place (same content) the job's bits ``mode``, umask applied."""
    if mode is None:
        return
    wanted = mode & ~_umask()
    try:
        if os.stat(target).st_mode & 0o777 != wanted:
            os.chmod(target, wanted)
    except OSError as e:
        raise OutputError(f"could not set the mode of {display(target)} ({_describe(e)}); "
                          "check who owns it") from None


def write_file(target: str, source, mode=None) -> None:
    """Put ``source`` (bytes-like or a file path) at ``target`` atomically, with the permission
    bits ``mode`` when given (else those of the target it replaces)."""
    directory = os.path.dirname(target) or "."
    temp = _temp_beside(target)
    try:
        os.makedirs(directory, exist_ok=True)
        _write_temp(temp, source, _mode_for(target, mode))
        os.replace(temp, target)
    except OSError as e:
        unlink_quietly(temp)
        raise OutputError(f"could not write {display(target)} ({_describe(e)}); "
                          "the previous file, if any, is unchanged") from None
    except BaseException:
        unlink_quietly(temp)
        raise


def unlink_quietly(path: str) -> None:
    """Remove a temporary file we may or may not have created (not contextlib: its import
    costs a cache hit about 3 ms)."""
    try:
        os.unlink(path)
    except OSError:
        return


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


def write_dir(target: str, files: dict, modes=None) -> None:
    """Put a directory output at ``target``: ``files`` maps sub paths to sources, ``modes``
    (when known) sub paths to permission bits."""
    temp = _temp_beside(target)
    try:
        os.makedirs(temp, mode=0o777)
        for sub, source in files.items():
            path = os.path.join(temp, sub)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_temp(path, source, 0o666 if modes is None else modes.get(sub, 0o666))
        if os.path.isdir(target) and not os.path.islink(target):
            if not _exchange(temp, target):
                old = _temp_beside(target)
                os.rename(target, old)
                os.rename(temp, target)
                temp = old
        else:
            os.replace(temp, target)
            temp = None
    except OSError as e:
        raise OutputError(f"could not write directory {display(target)} ({_describe(e)}); "
                          "the previous directory, if any, is unchanged") from None
    finally:
        if temp is not None:
            import shutil

            shutil.rmtree(temp, ignore_errors=True)
