"""``seamless-run``: a bash command as a cached transformation (docs/cli.md).

This module only reads the command line and the piped stdin: ``RunOptions`` become a
``ShellJob``, which ``seamless.shell.pipeline.run_job`` runs in this process (the same pipeline
the queue server's job runner uses), with the bytes piped into fd 0 (``seamless.shell.stdin``:
read whole, before anything is created, so a stdin over the limit leaves nothing behind) as an
input. The pipeline's docstring has the flow of one job and who owns what.

With ``--qsubmit`` the job goes to the queue server instead (``seamless.queue.client.submit_job``,
whose docstring has that flow): this process only plans it, creates its sidecars for the server
and exits. The queue modules (``socket``, ``json``) are imported only then, so a plain cache hit
stays as light as before.
"""

from __future__ import annotations

from seamless.cli.common import CommandError, exit_now, info, run_main, warn
from seamless.cli.options import PROG, RunOptions

__all__ = ["main", "entry", "job_of"]


def job_of(opts: RunOptions, stdout_path=None):
    """The ``ShellJob`` an invocation describes."""
    from seamless.shell.job import ShellJob

    return ShellJob(opts.text, inputs=opts.explicit_inputs, captures=opts.captures,
                    vars=opts.vars, sandbox=opts.sandbox, use_cache=opts.use_cache,
                    stdout_path=stdout_path, verbose=opts.verbose, quiet=opts.quiet)


def _appending(fd: int) -> bool:
    """True when ``fd`` was opened with ``O_APPEND`` (``>> file``)."""
    import os

    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & os.O_APPEND)
    except (OSError, ValueError, IndexError):
        return False
    return False


def _stdout_path():
    """The absolute path of the regular file fd 1 points to, else None. A file opened for
    appending is refused: the job replaces its stdout file atomically, which would drop what
    the file held."""
    import os

    from seamless.shell.pipeline import stdout_target

    path = stdout_target()
    if path is None:
        return None
    if _appending(1):
        raise CommandError(f"--qsubmit: stdout is {path}, opened for appending (>>); a queued "
                           "job replaces its stdout file atomically, which would drop its "
                           "content; redirect with > instead, or append inside the command "
                           "('cmd >> file')", 2)
    return os.path.abspath(path)


def _qsubmit(opts: RunOptions, stdin) -> int:
    """``--qsubmit``: plan the job here, then record a hit or hand the job to the server."""
    import _signal  # not signal: its enum import would cost a submission about 3 ms

    from seamless.errors import QueueError
    from seamless.queue import client
    from seamless.shell.pipeline import Interrupted, on_signal

    # SIGTERM or SIGHUP while submitting unwinds like Ctrl-C, so the sidecars are removed.
    for signum in (_signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, on_signal)
    try:
        submitted = client.submit_job(job_of(opts, _stdout_path()), stdin=stdin)
    except client.Refused as e:
        raise CommandError(str(e), e.code) from None
    except QueueError as e:
        raise CommandError(str(e)) from None
    except Interrupted as e:
        return 128 + e.signum
    for text in submitted.warnings:
        warn(PROG, text)
    if submitted.hit:
        if opts.verbose:
            info(PROG, f"cache hit {submitted.transformation}; recorded as job {submitted.job}")
    elif not opts.quiet:
        info(PROG, f"queued job {submitted.job}")
    return 0


def _piped_stdin():
    """The bytes piped into this process (an input of the job), or ``None``."""
    from seamless.shell.stdin import StdinError, read_piped

    try:
        return read_piped(0)
    except StdinError as e:
        raise CommandError(str(e)) from None


def main(argv=None) -> int:
    opts = RunOptions(argv)
    stdin = _piped_stdin()
    if opts.qsubmit:
        return _qsubmit(opts, stdin)
    from seamless.shell.pipeline import run_job

    return run_job(job_of(opts), stdin=stdin)


def entry() -> None:
    exit_now(run_main(PROG, main))


if __name__ == "__main__":
    entry()
