"""The process the queue server starts for one job: ``python -m seamless.shell.runner JOBFILE``.

Data flow and ownership:

- The server writes ``JOBFILE`` (``ShellJob.to_wire()`` in ``marshal`` form: built in, so
  reading it imports nothing; the server wrote it, in its private directory) in its private job
  directory and starts this process in the job's working directory and environment, in a process
  group of its own, stdin and stdout ``/dev/null`` (a job's stdout is a result: it goes to
  ``job.stdout_path`` or only to the cache), stderr a per-job log file the server keeps. The
  server also asks the kernel for a parent-death signal (SIGTERM) before this program starts, so
  a server killed outright takes its jobs down: SIGTERM reaches the pipeline's signal guard,
  which stops the command's own process group (SIGINT, SIGKILL after a grace period) and cleans
  up.
- This process runs ``pipeline.run_job``, the very pipeline of a plain ``seamless-run``, and
  exits with its status. When the cache lookup is done it writes ``JOBFILE.outcome`` (``hit`` or
  ``miss``, then the transformation checksum) so the server can tell ``cached`` from ``done``;
  the server reads and removes that file once this process has ended.
- It creates no other file; the sidecars of the job's outputs belong to the server
  (``job.held_futures``).

It imports what ``seamless-run`` imports and no more: starting a queued job costs about one
interpreter start (docs/cli.md, "Start-up").
"""

from __future__ import annotations

import marshal
import os
import sys

from seamless.cli.common import CommandError, error, exit_now, run_main

__all__ = ["main", "outcome_path", "read_outcome"]

PROG = "seamless-run"
_OUTCOME = ".outcome"


def outcome_path(jobfile: str) -> str:
    return jobfile + _OUTCOME


def read_outcome(jobfile: str):
    """``(hit, checksum)`` the runner of ``jobfile`` reported, or ``(False, None)`` when it
    ended before the cache lookup. Removes the file."""
    path = outcome_path(jobfile)
    try:
        with open(path, "rb") as f:
            words = f.read(256).split()
        os.unlink(path)
    except OSError:
        return False, None
    if not words:
        return False, None
    checksum = words[1].decode("ascii", "replace") if len(words) > 1 else None
    return words[0] == b"hit", checksum


def _reporter(jobfile: str):
    def on_identity(checksum, hit):
        with open(outcome_path(jobfile), "wb") as f:
            f.write(b"%s %s\n" % (b"hit" if hit else b"miss", str(checksum).encode("ascii")))
    return on_identity


def _load(jobfile: str):
    from seamless.shell.job import JobFormatError, ShellJob

    try:
        with open(jobfile, "rb") as f:
            data = marshal.loads(f.read())
        return ShellJob.from_wire(data)
    except (OSError, ValueError, EOFError, TypeError, JobFormatError) as e:
        raise CommandError(f"cannot read the queued job from {jobfile} ({e})") from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        error(PROG, "usage: python -m seamless.shell.runner JOBFILE (started by seamless-queue)")
        return 2
    from seamless.shell.pipeline import run_job

    jobfile = argv[0]
    return run_job(_load(jobfile), on_identity=_reporter(jobfile))


def entry() -> None:
    exit_now(run_main(PROG, main))


if __name__ == "__main__":
    entry()
