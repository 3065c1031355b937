"""The pipeline of one shell job, shared by ``seamless-run`` and the queue server (docs/cli.md).

``run_job(job)`` runs a ``ShellJob`` in the current process's working directory and
environment, and returns the exit status ``seamless-run`` reports. Flow, and who owns what:

1. Split the command text into words (``words.py``): outputs are the ``-c`` paths and the
   targets of output redirections, candidate inputs the other words.
2. Create the ``.FUTURE`` sidecars this run owns (its stdout file when fd 1 is a regular file,
   every output) and keep them fresh (``future.Heartbeat``). They are removed in a ``finally``:
   after the outputs are in place, on failure, on a signal. Sidecars in ``job.held_futures``
   belong to whoever created them (the queue server): not created, refreshed nor removed here.
3. Wait for the inputs that have a sidecar of someone else (or are named ``X.FUTURE``), then
   hash every input, and the piped stdin bytes the caller read (``stdin.py``; ``None``: none),
   and build the transformation checksum (``identity.py``).
4. Look it up: first in the cache's result index (``cache.result_index.read_result``: one small
   file, then the verified buffer; no database), else in the persistent cache itself
   (``cli.common.open_cache``, SQLite), which also reports and discards damaged entries. A hit
   writes the cached stdout (to fd 1, or atomically to ``job.stdout_path``) and the outputs
   (atomically, with the file modes the command gave them, ``outputs.py``) and returns 0
   without running anything.
5. A miss runs the command once (``execute.Run``, which owns the sandbox, the stdout spool and
   the file it feeds the piped stdin from, and removes them), delivers stdout and outputs the
   same way, then stores the result with the outputs' modes, streamed from the spool and output
   files (``result.ResultBytes``). A failed command is never stored.

Expected failures raise ``CommandError`` (exit 1, or 2 for a bad job); SIGINT, SIGTERM and
SIGHUP end the run with 128 + signal after the cleanup. The hit path imports only the standard
library, this package, ``cli.common`` and the cache's ``result_index`` and ``buffers``: no
``sqlite3`` (the database opens on a miss), no numpy, no ``seamless.transformer``, no YAML
unless a YAML file is in the working directory.
"""

from __future__ import annotations

import os
import stat
import time

from seamless.cli.common import (
    USAGE,
    CommandError,
    cache_directory,
    info,
    open_cache,
    warn,
    warnings_as_messages,
)
from seamless.shell import future, identity, words
from seamless.shell.job import ShellJob
from seamless.shell.outputs import (
    OutputError,
    file_mode,
    keep_mode,
    same_content,
    write_dir,
    write_file,
    write_stdout,
)
from seamless.shell.paths import display

__all__ = ["run_job", "plan_submission", "SubmitPlan", "stdout_target", "Interrupted",
           "on_signal", "PROG"]

PROG = "seamless-run"


class Interrupted(BaseException):
    """A signal to the run (SIGINT, SIGTERM, SIGHUP; ``on_signal`` raises it): the caller
    unwinds its ``finally`` blocks and exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def on_signal(signum, _frame):
    raise Interrupted(signum)


class _SignalGuard:
    """Turns SIGINT, SIGTERM and SIGHUP into ``Interrupted`` once the run owns something to
    clean up (sidecars, a wait, a running command), so ``finally`` blocks remove it.

    Installed lazily: a plain cache hit owns nothing, and importing ``signal`` would cost about
    1 ms of its start (Ctrl-C still ends it, as ``KeyboardInterrupt``).
    """

    def __init__(self):
        self.installed = False

    def _set(self, handler) -> None:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, handler if handler is not None else signal.SIG_IGN)

    def install(self) -> None:
        if not self.installed:
            self._set(on_signal)
            self.installed = True

    def ignore(self) -> None:
        """While the run tears down: a second signal must not interrupt the cleanup."""
        if self.installed:
            self._set(None)


def _info(job: ShellJob, message: str) -> None:
    if not job.quiet:
        info(PROG, message)


def _usage_error(message: str):
    raise CommandError(message, USAGE)


_CLIMB = "run from a common parent directory, or use --no-sandbox"


def _relative(path: str, what: str, job: ShellJob, allow_absolute: bool):
    """The normalised relative form of ``path``; ``None`` for an untracked absolute path."""
    if os.path.isabs(path):
        return path if allow_absolute else None
    norm = os.path.normpath(path)
    if job.sandbox and (norm == ".." or norm.startswith("../")):
        _usage_error(f"{what} {display(path)} lies outside the working directory; {_CLIMB}")
    return norm


def _outputs(split, job: ShellJob) -> list:
    """Declared outputs: ``-c`` paths and output redirection targets (absolute ones untracked,
    except ``-c`` without the sandbox)."""
    found = []
    for path in job.captures:
        if os.path.isabs(path) and job.sandbox:
            _usage_error(f"--capture {display(path)}: outputs must lie in the working "
                             "directory in sandbox mode; use a relative path, or --no-sandbox")
        rel = _relative(path, "--capture", job, allow_absolute=True)
        if rel in (".", ""):
            _usage_error(f"--capture {display(path)}: the working directory itself cannot "
                             "be an output; name a file or subdirectory")
        found.append(rel)
    for word in split.outputs:
        rel = _relative(word.text, "output", job, allow_absolute=False)
        if rel is not None and rel != ".":
            found.append(rel)
    found = list(dict.fromkeys(found))
    # A file written inside an output directory travels with that directory.
    return [o for o in found if not _inside(o, [p for p in found if p != o])]


def _untracked_writes(split) -> list:
    """Absolute redirection targets outside /dev: the command writes them, a hit does not."""
    return [w.text for w in split.outputs
            if os.path.isabs(w.text) and not w.text.startswith("/dev/")]


# Programs that run a command in their place, passing their stdout on: a redirect written
# before them (`timeout 5 seamless-run cmd > out.txt`) is this command's.
_WRAPPERS = frozenset({"timeout", "nice", "ionice", "env", "time", "nohup", "stdbuf", "taskset",
                       "chrt", "setsid", "setpriv", "runuser", "sudo", "doas", "flock",
                       "unshare", "xargs", "parallel"})


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _inherited(st) -> bool:
    """True when fd 1 is simply the stdout of the program that started us (``bash job.sh >
    log``, ``exec > log``, a Python program's own stdout): that file is the caller's log, not
    this command's result. Known wrappers (``timeout``, ``nice``, ...) between us and that
    program are looked through. An unreadable ancestor counts as a redirect for this command."""
    pid = os.getppid()
    try:
        for _ in range(8):
            ancestor = os.stat(f"/proc/{pid}/fd/1")
            if (ancestor.st_dev, ancestor.st_ino) != (st.st_dev, st.st_ino):
                return False
            with open(f"/proc/{pid}/comm", "rb") as f:
                if f.read().strip().decode("ascii", "replace") not in _WRAPPERS:
                    return True
            pid = _parent_of(pid)
    except (OSError, ValueError, IndexError):
        return False
    return False


def stdout_target():
    """The regular file fd 1 points to when this command's stdout was redirected to it
    (``seamless-run cmd > out.txt``), else ``None`` (a terminal, a pipe, ``/dev/null``, or the
    log of the script or program that started it)."""
    try:
        st = os.fstat(1)
        if not stat.S_ISREG(st.st_mode) or _inherited(st):
            return None
        path = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") else path


class _Sidecars:
    """The sidecars this run owns, kept fresh by one heartbeat thread; removed by ``close``.
    Sidecars held for the job by someone else (``ShellJob.held_futures``) count as its own for
    waiting, but are neither refreshed nor removed here."""

    def __init__(self, job: ShellJob):
        self.job = job
        self.owned = []
        self.paths = {os.path.abspath(future.sidecar_path(t)) for t in job.held_futures}
        self.heartbeat = None

    def create(self, target: str) -> None:
        try:
            sidecar = future.Sidecar.create(target)
        except OSError as e:
            warn(PROG, f"cannot create {display(future.sidecar_path(target))} "
                       f"({e.strerror or e}); readers of {display(target)} will not wait")
            return
        self.owned.append(sidecar)
        self.paths.add(os.path.abspath(sidecar.path))
        if self.heartbeat is None:
            self.heartbeat = future.Heartbeat()
        self.heartbeat.add(sidecar)

    def owns(self, target: str) -> bool:
        return os.path.abspath(future.sidecar_path(target)) in self.paths

    def set_transformation(self, checksum: str) -> None:
        for sidecar in self.owned:
            sidecar.set_transformation(checksum)

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        for sidecar in self.owned:
            sidecar.remove()
        self.owned = []


def _producers(job: ShellJob, split, sidecars: _Sidecars):
    """``(targets, future_words)``: the inputs being produced elsewhere (a ``X.FUTURE`` word, or
    a word or ``-i`` path with someone else's sidecar), and the ``X.FUTURE`` words."""
    future_words = []
    targets = []
    candidates = [w for w in (*split.words, *split.inputs, *split.appends) if not w.opaque]
    for word in candidates:
        if word.text.endswith(".FUTURE") and len(word.text) > len(".FUTURE"):
            future_words.append(word)
            targets.append(word.text[:-len(".FUTURE")])
        elif not sidecars.owns(word.text) and os.path.lexists(future.sidecar_path(word.text)):
            targets.append(word.text)
    targets.extend(p for p in job.inputs
                   if not sidecars.owns(p) and os.path.lexists(future.sidecar_path(p)))
    targets = list(dict.fromkeys(targets))
    for target in targets:
        if sidecars.owns(target):
            _usage_error(f"{display(target)}.FUTURE names an output of this same command")
    return targets, future_words


def _without_future_suffixes(job: ShellJob, future_words) -> str:
    if not future_words:
        return job.command
    return words.strip_future_suffixes(job.command, future_words)


def _wait_for_producers(job: ShellJob, split, sidecars: _Sidecars, guard) -> str:
    """Wait for the inputs being produced elsewhere; returns the command text with every
    ``X.FUTURE`` word rewritten to ``X`` (docs/cli.md)."""
    targets, future_words = _producers(job, split, sidecars)
    for target in targets:
        guard.install()
        try:
            future.wait_for(target, on_wait=lambda message: _info(job, display(message)))
        except future.StaleFuture as e:
            raise CommandError(display(str(e))) from None
    return _without_future_suffixes(job, future_words)


def _expand(word) -> list:
    """The paths an unquoted glob word matches (bash leaves a word without matches as is)."""
    if not word.glob:
        return [word.text]
    import glob

    return sorted(glob.glob(word.text)) or [word.text]


def _inside(path: str, outputs) -> bool:
    """True when ``path`` is one of ``outputs`` or lies inside one (an output directory)."""
    return any(path == o or path.startswith(o + "/") for o in outputs)


def _inputs(job: ShellJob, split, outputs: list):
    """``(inputs, untracked)``: input path -> path to read; words that may name a file the
    command reads but are not tracked (opaque words, existing absolute paths and paths inside
    an output). Words that name no file (program names, flags, plain arguments) are neither.

    A word naming an output, or a path inside an output directory, is not an input: the
    previous run's result must not feed the next one's identity.
    """
    not_inputs = set(outputs) - {os.path.normpath(w.text) for w in split.appends}
    found = {}
    untracked = []
    for word in (*split.words, *split.inputs, *split.appends):
        if word.opaque:
            untracked.append(word.text)
            continue
        for path in _expand(word):
            if not os.path.lexists(path):
                continue
            if not os.path.exists(path):
                raise CommandError(f"{display(path)} is a dangling symbolic link (or a link "
                                   "loop); fix or remove it", USAGE)
            if os.path.isabs(path):
                untracked.append(path)
                continue
            rel = _relative(path, "input", job, allow_absolute=False)
            if _inside(rel, not_inputs):
                untracked.append(path)
            else:
                found[rel] = rel
    for path in job.inputs:
        if not os.path.lexists(path):
            raise CommandError(f"--input {display(path)} does not exist; create it or fix the "
                               "path", USAGE)
        if not os.path.exists(path):
            raise CommandError(f"--input {display(path)} is a dangling symbolic link (or a "
                               "link loop); fix or remove it", USAGE)
        found[_relative(path, "--input", job, allow_absolute=True)] = path
    return found, untracked


def _identify(job: ShellJob, text: str, inputs: dict, outputs: list, stdin) -> str:
    entries = {}
    for key, path in inputs.items():
        try:
            entries[key] = identity.input_entry(path)
        except identity.InputError as e:
            raise CommandError(display(str(e))) from None
    description = identity.describe(text, entries, outputs, job.vars, job.sandbox, stdin)
    checksum = identity.transformation_checksum(description)
    if job.verbose:
        for key, entry in sorted(entries.items()):
            info(PROG, f"input {display(key)}: {entry[0]} {entry[1]}")
        if stdin is not None:
            info(PROG, f"input stdin: {len(stdin)} bytes {description['stdin']}")
    return checksum


def _indexed_hit(directory: str, tf: str, outputs: list, job: ShellJob) -> bool:
    """Serve a hit found through the result index (no database); ``False`` means "ask the
    database", which also warns about and discards anything damaged."""
    from seamless.cache.result_index import read_result

    data = read_result(directory, tf)
    if data is None:
        return False
    return _deliver_result(data, outputs, job, None)


def _deliver_hit(cache, tf: str, outputs: list, job: ShellJob) -> bool:
    """Serve a cache hit: stdout to fd 1, outputs written atomically. ``False`` on a miss."""
    with warnings_as_messages(PROG):
        found = cache.lookup(tf)
        data = None if found is None else cache.read_buffer(found[1])
    if data is None:
        return False
    return _deliver_result(data, outputs, job, f"cache entry {found[1]} for {tf}")


def _deliver_result(data, outputs: list, job: ShellJob, entry) -> bool:
    """Write a cached result's outputs and stdout; ``False`` when ``data`` is not the result of
    this job (warned about as ``entry``, unless that is ``None``)."""
    from seamless.shell.result import ShellResult

    try:
        result = ShellResult(data)
        if sorted(result.outputs) != sorted(outputs):
            raise ValueError("its outputs differ from the declared ones")
    except ValueError as e:
        if entry is not None:
            warn(PROG, f"{entry} is not a valid shell result ({e}); running the command")
        return False
    for path, content in result.outputs.items():
        mode = result.modes.get(path)
        if isinstance(content, dict):
            write_dir(path, content, mode)
        elif not same_content(path, content):
            write_file(path, content, mode)
        else:
            keep_mode(path, mode)
    _deliver_stdout(job, result.stdout)
    return True


def _deliver_stdout(job: ShellJob, source) -> None:
    """The result's stdout (bytes, or the spool file's path) to fd 1, or atomically to
    ``job.stdout_path``."""
    if job.stdout_path is not None:
        write_file(job.stdout_path, source)
    elif isinstance(source, str):
        from seamless.shell.outputs import copy_to_stdout

        copy_to_stdout(source)
    else:
        write_stdout(source)


def _collect_dir(root: str) -> dict:
    files = {}
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                files[os.path.relpath(path, root)] = path
    return files


def _failure_status(status: int, run, job: ShellJob) -> int:
    """The exit status of seamless-run for a command that failed with wait ``status``."""
    import signal

    from seamless.shell.execute import spool_size

    discarded = f"its stdout ({spool_size(run)} bytes) was discarded"
    if status > 0:
        if not job.quiet:
            info(PROG, f"the command failed with exit status {status}; {discarded}")
        return status
    if -status == signal.SIGINT:
        if not job.quiet:
            info(PROG, f"the command was interrupted (SIGINT); {discarded}")
        return 130
    hint = " (often the out-of-memory killer)" if -status == signal.SIGKILL else ""
    from seamless.pool.supervise import signal_name

    raise CommandError(f"the command was killed by {signal_name(-status)}{hint}; {discarded}")


def _produced(run, outputs: list) -> dict:
    """Where the command left each output: a file, or ``{sub path: file}`` for a directory."""
    produced = {}
    for output in outputs:
        path = run.path_of(output)
        if os.path.isdir(path):
            produced[output] = _collect_dir(path)
        elif os.path.isfile(path):
            produced[output] = path
        else:
            raise CommandError(f"the command exited 0 but did not create {display(output)}; "
                               "not cached")
    return produced


def _run_once(job: ShellJob, text: str, inputs: dict, outputs: list, cache, tf: str,
              stdin) -> int:
    """Execute the command; on success deliver its stdout and outputs, then store the result."""
    from seamless.shell import execute
    from seamless.shell.result import RESULT_KIND, ResultBytes

    env = dict(os.environ)
    env.update(job.vars)
    try:
        run = execute.Run(job.sandbox)
    except OSError as e:
        where = execute.temp_candidates()[0]
        raise CommandError(f"cannot create a private directory in {where} ({e.strerror or e}); "
                           "free space there or set TMPDIR to a writable directory") from None
    try:
        try:
            if job.sandbox:
                parents = {os.path.dirname(o) for o in outputs} - {""}
                run.place_inputs([k for k in inputs if not os.path.isabs(k)], parents)
            if stdin is not None:
                run.place_stdin(stdin)
        except OSError as e:
            raise CommandError(display(e.strerror or str(e))) from None
        started = time.monotonic()
        status = run.execute(text, env)
        duration = time.monotonic() - started
        if status != 0:
            return _failure_status(status, run, job)
        produced = _produced(run, outputs)
        if job.sandbox:  # without it, the command wrote them in place
            for output, source in produced.items():
                if isinstance(source, dict):
                    write_dir(output, source, {sub: file_mode(f) for sub, f in source.items()})
                else:
                    write_file(output, source, file_mode(source))
        try:
            _deliver_stdout(job, run.stdout_path)
        finally:  # also when the reader of our stdout went away: the result is still good
            result = ResultBytes(run.stdout_path, produced)
            with warnings_as_messages(PROG):
                cache.write_stream_now(tf, RESULT_KIND, result, result.size,
                                       duration=duration, replace=not job.use_cache,
                                       label=_cache_label(text))
        return 0
    finally:
        run.close()


def _hit(job: ShellJob, tf: str, on_identity) -> int:
    if on_identity is not None:
        on_identity(tf, True)
    if job.verbose:
        info(PROG, f"cache hit {tf}")
    return 0


def run_job(job: ShellJob, on_identity=None, stdin=None) -> int:
    """Run ``job`` here (cwd and environment of this process); its exit status.

    ``on_identity(checksum, hit)``, when given, is called once the transformation checksum is
    known and the cache looked up (the queue's job runner reports both to the server).
    ``stdin``: the piped bytes the command reads (an input), or ``None`` for ``/dev/null``.
    """
    try:
        split = words.split_command(job.command)
    except words.CommandSyntaxError as e:
        _usage_error(str(e))
    outputs = _outputs(split, job)
    sidecars = _Sidecars(job)
    guard = _SignalGuard()
    try:
        targets = list(outputs)
        if job.stdout_path is None:
            fd1_file = stdout_target()
            if fd1_file is not None:
                targets.insert(0, fd1_file)
        else:
            targets.insert(0, job.stdout_path)
        for target in targets:
            if not sidecars.owns(target):
                guard.install()
                sidecars.create(target)
        text = _wait_for_producers(job, split, sidecars, guard)
        if text != job.command:
            split = words.split_command(text)
        inputs, untracked = _inputs(job, split, outputs)
        tf = _identify(job, text, inputs, outputs, stdin)
        sidecars.set_transformation(tf)
        if job.verbose and untracked:
            info(PROG, "not tracked: " + " ".join(display(w) for w in untracked))
        directory = cache_directory()
        if job.use_cache and _indexed_hit(directory, tf, outputs, job):
            return _hit(job, tf, on_identity)
        cache = open_cache(directory)
        try:
            if job.use_cache and _deliver_hit(cache, tf, outputs, job):
                return _hit(job, tf, on_identity)
            if on_identity is not None:
                on_identity(tf, False)
            if job.verbose:
                info(PROG, f"cache {'miss' if job.use_cache else 'refresh (--no-cache)'} {tf}")
            for path in _untracked_writes(split):
                warn(PROG, f"{display(path)} is written by the command but is not a result: "
                           "a cache hit will not write it (use -c with a relative path)")
            guard.install()
            return _run_once(job, text, inputs, outputs, cache, tf, stdin)
        finally:
            cache.close()
    except OutputError as e:
        raise CommandError(str(e)) from None
    except Interrupted as e:
        return 128 + e.signum
    finally:
        guard.ignore()
        sidecars.close()


class SubmitPlan:
    """What ``seamless-run --qsubmit`` learns about a job before handing it to the queue.

    - ``targets``: the files the job will write (``stdout_path`` first when set, then the
      outputs), relative as given; the submitter creates their sidecars for the server.
    - ``candidates``: absolute paths of every word that may be an input (``X.FUTURE`` words as
      ``X``, glob matches, ``-i`` paths), existing or not: the server holds the job while one of
      them is an output of its own unfinished jobs.
    - ``pending``: the inputs being produced elsewhere right now (sidecars of others).
    - ``transformation``: the checksum, or ``None`` while inputs are pending.
    - ``hit``: the cache had the result, and stdout and outputs were written.
    """

    __slots__ = ("targets", "candidates", "pending", "transformation", "hit")

    def __init__(self, targets, candidates, pending, transformation, hit):
        self.targets = targets
        self.candidates = candidates
        self.pending = pending
        self.transformation = transformation
        self.hit = hit


def _candidate_paths(job: ShellJob, split, future_words) -> list:
    found = []
    for word in (*split.words, *split.inputs, *split.appends):
        if word.opaque:
            continue
        text = word.text
        if word in future_words:
            text = text[:-len(".FUTURE")]
        found.extend(_expand(word) if text == word.text else [text])
    found.extend(job.inputs)
    return list(dict.fromkeys(os.path.abspath(p) for p in found))


def plan_submission(job: ShellJob, stdin=None) -> SubmitPlan:
    """Inspect ``job`` for the queue without waiting for anything; on a cache hit found through
    the result index (no input pending, ``job.use_cache``), deliver it here as a plain run
    would. ``stdin``: the piped bytes the job will read, or ``None``."""
    try:
        split = words.split_command(job.command)
    except words.CommandSyntaxError as e:
        _usage_error(str(e))
    outputs = _outputs(split, job)
    targets = ([job.stdout_path] if job.stdout_path is not None else []) + outputs
    sidecars = _Sidecars(ShellJob(job.command, held_futures=targets))
    producers, future_words = _producers(job, split, sidecars)
    pending = [t for t in producers if os.path.lexists(future.sidecar_path(t))]
    candidates = _candidate_paths(job, split, future_words)
    if pending:
        return SubmitPlan(targets, candidates, pending, None, False)
    text = _without_future_suffixes(job, future_words)
    if text != job.command:
        split = words.split_command(text)
    try:
        inputs, _untracked = _inputs(job, split, outputs)
        tf = _identify(job, text, inputs, outputs, stdin)
        # The result index only: opening the database (sqlite3) would cost every submission a
        # few ms. An entry the index lacks (a row stored before there was an index) is still
        # found by the job itself, which then ends as ``cached``.
        hit = job.use_cache and _indexed_hit(cache_directory(), tf, outputs, job)
    except OutputError as e:
        raise CommandError(str(e)) from None
    return SubmitPlan(targets, candidates, [], tf, hit)


def _cache_label(command: str) -> str:
    """The command as ``seamless-cache list`` shows it: one line of valid UTF-8 (bytes that
    are not UTF-8 as escapes), at most 200 characters."""
    line = " ".join(command.split())
    line = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return line if len(line) <= 200 else line[:199] + "…"
