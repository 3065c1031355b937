"""Child processes we supervise: start one, watch it without polling, reap it, explain its end.

Used by the worker pool (a worker per child) and meant for any other server of ours that runs
children (a queue of shell jobs).  One ``Child`` owns, from ``start`` until ``release``:

- the ``Popen`` object: reaped by ``reap()`` as soon as the pidfd reports the death, so no
  zombie outlives it;
- a pidfd (readable when the process has ended; the owner registers it in its selector);
- the read end of the child's stderr pipe: ``read_stderr()`` forwards the bytes to our own
  stderr and keeps the last ``STDERR_TAIL`` bytes, which explain a crash or a failed start.

``release()`` closes the pidfd and the pipe; the owner closes what else it gave the child.
Nothing here blocks except ``reap()`` (called once the pidfd said the process ended) and
``stop()`` (bounded by its grace period).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess

from seamless import machine

__all__ = ["Child", "describe_signal", "signal_name", "raise_nofile_limit"]

STDERR_TAIL = 64 * 1024
_COMPILED_CRASHES = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)


def signal_name(signum: int) -> str:
    """``SIGKILL``, or ``signal 77`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_signal(signum: int) -> str:
    name = signal_name(signum)
    return name if name.startswith("signal ") else f"signal {signum} ({name})"


def raise_nofile_limit():
    """Soft RLIMIT_NOFILE up to the hard limit: a server holds descriptors per child (and the
    pool one per live segment it may resend)."""
    soft, hard = machine.open_files_limit()
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return  # a hard limit this platform will not grant: keep the soft one


class Child:
    """One supervised child process (see the module docstring for what it owns)."""

    __slots__ = ("proc", "pid", "pidfd", "stderr_tail", "returncode")

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = os.pidfd_open(proc.pid)
        self.stderr_tail = bytearray()
        self.returncode = None
        os.set_blocking(proc.stderr.fileno(), False)

    @classmethod
    def start(cls, argv: list, env: dict, pass_fds=(), new_group: bool = False,
              stdin=subprocess.DEVNULL, stdout=None, cwd=None) -> "Child":
        """Start ``argv``; stderr comes to us through a pipe.  Raises OSError when it cannot
        start.  ``new_group`` puts it in a process group of its own (a shell job)."""
        proc = subprocess.Popen(argv, pass_fds=tuple(pass_fds), env=env, stdin=stdin,
                                stdout=stdout, stderr=subprocess.PIPE, close_fds=True,
                                start_new_session=new_group, cwd=cwd)
        return cls(proc)

    @property
    def stderr_fd(self) -> int:
        return self.proc.stderr.fileno()

    def read_stderr(self, forward_fd: int | None = 2) -> bool:
        """Take what the child wrote to stderr (forwarded to ``forward_fd``); False at EOF."""
        while True:
            try:
                data = os.read(self.stderr_fd, 65536)
            except BlockingIOError:
                return True
            except (OSError, ValueError):
                return False
            if not data:
                return False
            self.stderr_tail += data
            del self.stderr_tail[:-STDERR_TAIL]
            if forward_fd is not None:
                try:
                    os.write(forward_fd, data)
                except OSError:
                    forward_fd = None  # our own stderr is gone; the tail still explains

    def tail_text(self) -> str:
        return self.stderr_tail.decode("utf-8", "replace").strip()

    def kill(self, signum: int = signal.SIGKILL) -> bool:
        """Send a signal; False when the process is already gone."""
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def reap(self) -> int:
        """Wait for the process (it has ended, or was just killed) and keep its return code."""
        self.returncode = self.proc.wait()
        return self.returncode

    def stop(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the process to end by itself, then kill it."""
        try:
            self.returncode = self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            self.returncode = self.proc.wait()
        return self.returncode

    def release(self):
        """Close the pidfd and the stderr pipe (after ``reap`` or ``stop``)."""
        os.close(self.pidfd)
        self.proc.stderr.close()

    def explain_exit(self, rss: int = 0) -> tuple:
        """``(exitcode, signal, how, cause)`` for a child that ended unexpectedly: ``how`` says
        how it ended ("exited with code 3"), ``cause`` what most likely happened."""
        code = self.returncode
        if code is None or code >= 0:
            return (code, None, f"exited with code {code}",
                    "the code called os._exit() or a library ended the process")
        sig = -code
        if sig == signal.SIGKILL:
            cause = ("killed from outside, most often by the kernel's out-of-memory killer"
                     + (f" (last seen using {rss / (1 << 30):.1f} GiB)" if rss else ""))
        elif sig in _COMPILED_CRASHES:
            cause = "a crash in compiled code (see the faulthandler traceback below)"
        else:
            cause = "a signal from outside"
        return None, sig, f"was killed by {describe_signal(sig)}", cause
