"""``seamless-run``: a bash command as a cached transformation (docs/cli.md).

This module only reads the command line: ``RunOptions`` become a ``ShellJob``, which
``seamless.shell.pipeline.run_job`` runs in this process (the same pipeline the queue server's
job runner uses). The pipeline's docstring has the flow of one job and who owns what.
"""

from __future__ import annotations

from seamless.cli.common import exit_now, run_main
from seamless.cli.options import PROG, RunOptions

__all__ = ["main", "entry", "job_of"]


def job_of(opts: RunOptions):
    """The ``ShellJob`` an invocation describes."""
    from seamless.shell.job import ShellJob

    return ShellJob(opts.text, inputs=opts.explicit_inputs, captures=opts.captures,
                    vars=opts.vars, sandbox=opts.sandbox, use_cache=opts.use_cache,
                    verbose=opts.verbose, quiet=opts.quiet)


def main(argv=None) -> int:
    from seamless.shell.pipeline import run_job

    return run_job(job_of(RunOptions(argv)))


def entry() -> None:
    exit_now(run_main(PROG, main))


if __name__ == "__main__":
    entry()
