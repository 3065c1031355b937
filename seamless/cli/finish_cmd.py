"""``seamless-queue-finish``: drain the queue server and report, or list its jobs (docs/cli.md).

Flow of a finish: connect (``seamless.queue.client``; no server is an error at once), take a
``status`` snapshot on one connection, then send ``finish`` on another and wait, without a
timeout, for ``finished``: the server answers once every queued, waiting and running job has
ended, then removes its files and exits. The report goes to stdout: each failed job with the
last lines of its stderr, then the summary ``N jobs: D done, C cached, F failed`` (the cached
part only when some job was a cache hit: a hit completed by the submitter, or a queued job the
cache answered). If the server goes away before answering, the jobs the snapshot had not seen
end are listed as unaccounted for.

Exit status (GNU parallel's convention): 0 when every job succeeded, else the number of failed
jobs capped at 253; 255 for this command's own errors (no server, a server that died before
answering, a protocol error, a usage error); 130 on Ctrl-C, after which the server keeps
draining. ``--status`` prints one ``ID STATE EXIT SECONDS COMMAND`` line per job (or, with
``--json``, the server's status as one JSON object) and changes nothing.

Ownership: this command owns only its connections; nothing it does stops the server early.
"""

from __future__ import annotations

import sys

from seamless.cli.common import error, exit_now, info

__all__ = ["main", "entry", "PROG", "OWN_ERROR", "MAX_FAILED"]

PROG = "seamless-queue-finish"
OWN_ERROR = 255
MAX_FAILED = 253
_ENDED = ("done", "cached", "failed")


def build_parser():
    import argparse

    from seamless import __version__

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # small exit codes count failed jobs: usage errors are 255
            self.print_usage(sys.stderr)
            self.exit(OWN_ERROR, f"{self.prog}: error: {message}\n")

    p = Parser(
        prog=PROG,
        description="Wait until the seamless-queue server of this directory has run every job "
                    "submitted to it, report the failed ones, and stop the server.",
        epilog="Exit status: 0 when every job succeeded, else the number of failed jobs "
               f"(at most {MAX_FAILED}); {OWN_ERROR} when there is no server, it died before "
               "answering, or for a usage error; 130 on Ctrl-C (the server keeps draining).",
    )
    p.add_argument("--status", action="store_true",
                   help="list the jobs (ID STATE EXIT SECONDS COMMAND) and change nothing")
    p.add_argument("--json", action="store_true",
                   help="with --status: print the server's status as one JSON object")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def _out(text: str) -> None:
    """One line to stdout, byte-exact for commands with non-UTF-8 bytes (surrogate escapes)."""
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")


def _one_line(command: str) -> str:
    """A command on one line: newlines shown as ``\\n`` (display only)."""
    return command.replace("\n", "\\n").replace("\r", "\\r")


def _how(exit_code, signum) -> str:
    if signum is not None:
        from seamless.pool.supervise import describe_signal

        return f"killed by {describe_signal(signum)}"
    if exit_code is not None:
        return f"exit {exit_code}"
    return "not run"


def _exit_column(job: dict) -> str:
    if job.get("signal") is not None:
        import signal

        try:
            return signal.Signals(job["signal"]).name
        except ValueError:
            return f"SIG{job['signal']}"
    return "-" if job.get("exit") is None else str(job["exit"])


def _seconds_column(job: dict) -> str:
    seconds = job.get("seconds")
    return "-" if not isinstance(seconds, (int, float)) else f"{seconds:.2f}"


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        import json

        body = {key: value for key, value in status.items() if key != "type"}
        sys.stdout.write(json.dumps(body, indent=1) + "\n")
        return
    rows = [(str(j.get("job")), str(j.get("state")), _exit_column(j), _seconds_column(j),
             _one_line(str(j.get("command", "")))) for j in status.get("jobs", [])]
    header = ("ID", "STATE", "EXIT", "SECONDS", "COMMAND")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        _out(" ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + " " + row[4])


def _summary(jobs: list, failed: int) -> str:
    counts = {}
    for job in jobs:
        state = job.get("state")
        counts[state] = counts.get(state, 0) + 1
    parts = [f"{counts.pop('done', 0)} done"]
    cached = counts.pop("cached", 0)
    if cached:
        parts.append(f"{cached} cached")
    counts.pop("failed", None)
    parts.append(f"{failed} failed")
    parts.extend(f"{n} {state}" for state, n in sorted(counts.items(), key=str))
    noun = "job" if len(jobs) == 1 else "jobs"
    return f"{len(jobs)} {noun}: " + ", ".join(parts)


def _report(finished: dict) -> int:
    jobs = finished.get("jobs") or []
    failed = finished.get("failed") or []
    for job in failed:
        _out(f"job {job.get('job')} failed ({_how(job.get('exit'), job.get('signal'))}): "
             f"{_one_line(str(job.get('command', '')))}")
        tail = str(job.get("stderr_tail") or "").rstrip("\n")
        for line in tail.split("\n")[-20:] if tail else []:
            _out("    " + line)
    _out(_summary(jobs, len(failed)))
    return min(len(failed), MAX_FAILED)


def _unaccounted(snapshot: dict | None) -> list:
    if snapshot is None:
        return ["(no job list: the status request failed too)"]
    return [f"job {j.get('job')} {j.get('state')}: {_one_line(str(j.get('command', '')))}"
            for j in snapshot.get("jobs", []) if j.get("state") not in _ENDED]


def _finish(client) -> int:
    with client.connect() as conn:
        snapshot = conn.request({"type": "status"}, "status")
    try:
        with client.connect() as conn:
            finished = conn.request({"type": "finish"}, "finished", timeout=None)
    except (client.ServerGone, client.Refused) as e:
        error(PROG, str(e))
        lost = _unaccounted(snapshot)
        if lost:
            info(PROG, f"{len(lost)} job(s) not accounted for (state when finish began):")
            for line in lost:
                info(PROG, "  " + line)
        return OWN_ERROR
    return _report(finished)


def main(argv=None) -> int:
    from seamless.errors import SeamlessError
    from seamless.queue import client

    args = build_parser().parse_args(argv)
    if args.json and not args.status:
        build_parser().error("--json goes with --status (seamless-queue-finish --status --json)")
    try:
        if args.status:
            with client.connect() as conn:
                _print_status(conn.request({"type": "status"}, "status"), args.json)
            return 0
        return _finish(client)
    except SeamlessError as e:  # the queue's errors, and any other of ours: one line
        error(PROG, str(e))
        return OWN_ERROR
    except KeyboardInterrupt:
        if not args.status:
            info(PROG, "interrupted; the server keeps draining (run seamless-queue-finish "
                       "again to wait for its report)")
        return 130


def entry() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # before main's own handler was reached
        code = 130
    except BrokenPipeError:
        code = OWN_ERROR
    exit_now(code)


if __name__ == "__main__":
    entry()
