"""Running a command once: the sandbox, the process and its signals (docs/cli.md).

Ownership. ``Run`` owns one private (0700) directory under ``$TMPDIR``:
``<private>/stdout`` (the spooled stdout), ``<private>/stdin`` (the piped stdin bytes, when the
job has them) and, in sandbox mode, ``<private>/work/`` (the copies of
the inputs, the parent directories of the outputs; the command's cwd). ``Run.close()`` removes it
all; the caller calls it in a ``finally``, so it goes on success, failure and interruption.

The command is ``/bin/bash -c TEXT`` in its own process group, stdin ``/dev/null`` (or the
``<private>/stdin`` file: the command reads the piped bytes, then EOF), stdout the spool file,
stderr inherited (passed through live). A parent-death signal kills it if seamless-run itself is
killed. When the wait is interrupted (the caller turns SIGINT, SIGTERM and
SIGHUP into exceptions), ``Run.execute`` sends SIGINT to the command's group, SIGKILL after
``GRACE_S`` seconds, reaps it and re-raises, so the caller removes what it owns and exits
128 + signal. Processes the command left running in its group when it ended get SIGTERM: a
transformation leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess

from seamless.shell.paths import display

__all__ = ["Run", "GRACE_S", "spool_size"]

GRACE_S = 2.0
_FICLONE = 0x40049409
PR_SET_PDEATHSIG = 1


def _reflink_or_copy(source: str, target: str) -> None:
    """Copy a file, sharing its blocks (``FICLONE``) where the file system can."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            import fcntl

            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except OSError:
            for piece in iter(lambda: src.read(1 << 20), b""):
                dst.write(piece)


def _copy_into(source: str, target: str) -> None:
    """Copy an input (file, or directory tree with links kept as links) keeping mode bits."""
    st = os.stat(source)
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(target, exist_ok=True)
        with os.scandir(source) as it:
            for entry in it:
                inner = os.path.join(target, entry.name)
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), inner)
                else:
                    _copy_into(entry.path, inner)
        os.chmod(target, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    _reflink_or_copy(source, target)
    os.chmod(target, stat.S_IMODE(st.st_mode))


def _child_setup(prctl):
    """In the child, before exec: its own process group; die with seamless-run.

    A ``preexec_fn`` is unsafe when another thread may hold a lock the child needs. The only
    other thread here is the sidecar heartbeat, and this function takes no lock and imports
    nothing: ``prctl`` was looked up in the parent.
    """
    def setup():
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return setup


def libc_prctl():
    """libc's ``prctl`` through ctypes (Python has no binding), or ``None`` where unavailable."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _remove_tree(top: str) -> None:
    """Remove ``top`` and everything in it, best effort, never following a symbolic link (the
    command may have left links to anywhere). Through directory descriptors (``os.fwalk``), as
    ``shutil.rmtree`` does, whose imports (re, bz2, lzma) would cost every job about 3 ms."""
    try:
        for _root, dirs, files, rootfd in os.fwalk(top, topdown=False):
            for name in files:
                _quietly(os.unlink, name, dir_fd=rootfd)
            for name in dirs:  # links to directories are listed here too
                try:
                    os.rmdir(name, dir_fd=rootfd)
                except NotADirectoryError:
                    _quietly(os.unlink, name, dir_fd=rootfd)
                except OSError:
                    continue
        os.rmdir(top)
    except OSError:
        return  # what is left is in our private directory under TMPDIR


def _quietly(operation, *args, **kwargs) -> None:
    try:
        operation(*args, **kwargs)
    except OSError:
        return


def temp_candidates() -> list:
    """Where a private directory may go, in ``tempfile.gettempdir``'s order: ``TMPDIR``,
    ``TEMP``, ``TMP``, then the usual system directories."""
    found = [os.environ[name] for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)]
    return found + ["/tmp", "/var/tmp", "/usr/tmp"]


def _private_dir(prefix: str) -> str:
    """A new 0700 directory in the first usable temp directory (``tempfile.mkdtemp`` without
    its import, which with ``shutil`` and ``random`` costs every job about 3 ms)."""
    error = None
    for root in temp_candidates():
        for _ in range(8):
            path = os.path.abspath(os.path.join(root, prefix + os.urandom(6).hex()))
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as e:
                error = error or e
                break
            return path
    raise error or FileExistsError(errno.EEXIST, "no unused private directory name")


class Run:
    """One execution of a command, in a sandbox or in the working directory."""

    def __init__(self, sandbox: bool):
        self.private = _private_dir("seamless-run-")
        self.stdout_path = os.path.join(self.private, "stdout")
        self.stdin_path = None
        self.cwd = os.path.join(self.private, "work") if sandbox else os.getcwd()
        if sandbox:
            os.mkdir(self.cwd, 0o700)

    def close(self) -> None:
        _remove_tree(self.private)

    def place_inputs(self, paths, output_parents) -> None:
        """Copy the relative input ``paths`` into the sandbox; make the output directories."""
        for path in paths:
            try:
                _copy_into(path, os.path.join(self.cwd, path))
            except OSError as e:
                raise OSError(e.errno, f"cannot copy input {display(path)} into the sandbox "
                              f"({e.strerror}); check TMPDIR's free space") from None
        for parent in output_parents:
            os.makedirs(os.path.join(self.cwd, parent), exist_ok=True)

    def path_of(self, output: str) -> str:
        """Where the command wrote ``output``."""
        return os.path.join(self.cwd, output)

    def place_stdin(self, data: bytes) -> None:
        """Write the piped stdin bytes to ``<private>/stdin``, the command's stdin."""
        path = os.path.join(self.private, "stdin")
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the piped stdin into {self.private} "
                          f"({e.strerror}); check TMPDIR's free space") from None
        self.stdin_path = path

    def execute(self, command: str, env: dict) -> int:
        """Run the command to its end (stdin: ``place_stdin``'s file, else ``/dev/null``); its
        wait status as ``Popen.returncode``."""
        source = subprocess.DEVNULL if self.stdin_path is None else open(self.stdin_path, "rb")
        try:
            with open(self.stdout_path, "wb") as spool:
                # `--`: a command text may start with a dash; it must not be read as an option.
                proc = subprocess.Popen(
                    [b"/bin/bash", b"-c", b"--", os.fsencode(command)], cwd=self.cwd, env=env,
                    stdin=source, stdout=spool, stderr=None,
                    preexec_fn=_child_setup(libc_prctl()),
                )
        finally:
            if source is not subprocess.DEVNULL:
                source.close()
        try:
            status = proc.wait()
        except BaseException:
            self._stop(proc)
            raise
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        return status

    @staticmethod
    def _stop(proc) -> None:
        """SIGINT to the command's group, SIGKILL after the grace period; reap it."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also stragglers of an exited leader
        with contextlib.suppress(ChildProcessError):
            proc.wait()


def spool_size(run: Run) -> int:
    try:
        return os.stat(run.stdout_path).st_size
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0
        raise
