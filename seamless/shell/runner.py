"""A queued job's runner: ``run(JOBFILE)`` in a process forked for the job by the queue
server's fork server (``seamless.queue.zygote``).

Data flow and ownership:

- The server writes ``JOBFILE`` (``ShellJob.to_wire()`` in ``marshal`` form: built in, so
  reading it imports nothing; the server wrote it, in its private job directory). The fork
  server starts this process in the job's working directory and environment, in a process group
  of its own, stdin and stdout ``/dev/null`` (a job's stdout is a result: it goes to
  ``job.stdout_path`` or only to the cache), stderr a per-job log file the server keeps, with a
  parent-death SIGTERM (its parent is the server), so a server killed outright takes its jobs
  down: SIGTERM reaches the pipeline's signal guard, which stops the command's own process group
  (SIGINT, SIGKILL after a grace period) and cleans up.
- ``run`` runs ``pipeline.run_job``, the very pipeline of a plain ``seamless-run``, and ends the
  process with its status. When the cache lookup is done it writes ``JOBFILE.outcome`` (``hit``
  or ``miss``, then the transformation checksum) so the server can tell ``cached`` from
  ``done``; the server reads and removes that file once this process has ended.
- A job submitted with piped stdin names the file holding those bytes (``job.stdin_path``); the
  server owns it and removes it when the job ends. ``run`` reads it whole before the pipeline
  starts (it is an input of the transformation) and the pipeline feeds the bytes to the command.
- It creates no other file; the sidecars of the job's outputs belong to the server
  (``job.held_futures``).
"""

from __future__ import annotations

import marshal
import os

from seamless.cli.common import CommandError, exit_now, run_main

__all__ = ["run", "outcome_path", "read_outcome"]

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


def _stdin_of(job):
    """The queued job's piped stdin bytes (``None``: none), from the file the server keeps."""
    if job.stdin_path is None:
        return None
    from seamless.shell.stdin import StdinError, read_file

    try:
        return read_file(job.stdin_path)
    except StdinError as e:
        raise CommandError(str(e)) from None


def _main(argv) -> int:
    from seamless.shell.pipeline import run_job

    jobfile = argv[0]
    job = _load(jobfile)
    return run_job(job, on_identity=_reporter(jobfile), stdin=_stdin_of(job))


def run(jobfile: str) -> None:
    """Run the job in ``jobfile`` here and end the process with its exit status."""
    exit_now(run_main(PROG, _main, [jobfile]))
