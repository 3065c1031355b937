"""``seamless-queue [--workers N] [--quiet]``: the local job server of a directory (docs/cli.md).

This module reads the command line and the ``SEAMLESS_WORKERS`` default, then hands over to
``seamless.queue.server.Server``, which owns the socket, lock and info files, the connections
and the job processes (its docstring has the data flow). Messages go to stderr prefixed
``seamless-queue:``; ``--quiet`` keeps only errors.

Exit status: 0 after a finish drain; 1 when the server cannot start (unsafe socket directory,
another server for the directory); 2 usage; 128 + signal when stopped by a signal.
"""

from __future__ import annotations

import argparse
import os

from seamless.cli.common import USAGE, CommandError, error, exit_now, info, run_main

__all__ = ["main", "entry", "parse_workers"]

PROG = "seamless-queue"


def parse_workers(text: str, source: str) -> int:
    """A positive worker count from ``text``; ``CommandError`` (exit 2) naming ``source`` and
    the value otherwise."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise CommandError(f"{source} must be a positive integer, got {text!r} "
                           "(e.g. --workers 4)", USAGE)
    return int(digits)


def _parser() -> argparse.ArgumentParser:
    from seamless import __version__

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run seamless-run jobs submitted with --qsubmit, N at a time, for the "
                    "current directory; stop it with seamless-queue-finish.")
    p.add_argument("--workers", metavar="N",
                   help="at most N jobs run at once (default: SEAMLESS_WORKERS, else the "
                        "number of usable CPUs)")
    p.add_argument("--quiet", action="store_true",
                   help="log only errors, not each job's start and end")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def _default_workers() -> int:
    env = os.environ.get("SEAMLESS_WORKERS")
    if env is not None and env.strip():
        return parse_workers(env, "SEAMLESS_WORKERS")
    from seamless import machine

    return machine.snapshot().cpus


def _log(message: str, is_error: bool) -> None:
    (error if is_error else info)(PROG, message)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.workers is not None:
        workers = parse_workers(args.workers, "--workers")
    else:
        workers = _default_workers()
    from seamless.queue import location
    from seamless.queue.server import Server, ServerError

    server = Server(location.server_files(os.getcwd()), workers, _log, quiet=args.quiet)
    try:
        server.start()
    except ServerError as e:
        raise CommandError(str(e)) from None
    return server.serve()


def entry() -> None:
    exit_now(run_main(PROG, main))


if __name__ == "__main__":
    entry()
