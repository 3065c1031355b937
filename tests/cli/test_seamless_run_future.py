"""`seamless-run`: ``.FUTURE`` sidecars, waiting readers, stale sidecars and signals, end to end
(docs/cli.md, ".FUTURE sidecars").

Every test runs the installed console script as real subprocesses (``cli`` fixture,
conftest.py). Ordering is made deterministic without sleeps: a command blocks in a loop until a
*go* file appears (``Gate``) and reports its pid through a file; both live in a side directory
outside the working directory, named by absolute path (absolute paths are not tracked, so they
work as side channels and do not change identities).

Ownership: each test starts its processes through ``_running``, which kills and reaps
seamless-run when the test fails; the ``gate`` fixture releases every blocked command and
SIGKILLs the command pids it recorded at teardown, so nothing outlives the test. All files lie
under ``tmp_path``. No assertion is on elapsed time: waits poll a condition every 20 ms and fail
only after a generous timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

POLL_S = 0.02
TIMEOUT_S = 30.0  # for a condition to hold
EXIT_S = 60.0  # for a process to end once told to
HOST = os.uname().nodename


def _wait_until(predicate, what: str, proc=None, timeout: float = TIMEOUT_S):
    """Poll ``predicate`` until it is true. A test failure naming ``what`` after ``timeout``,
    or at once when ``proc`` (a seamless-run it depends on) has exited meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"seamless-run exited {proc.returncode} before {what}; its stderr: "
                        f"{proc.stderr_path.read_bytes()!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(b")") + 2:].startswith(b"Z")


def _wait_gone(*pids, timeout: float = 10.0) -> None:
    """Wait until every one of ``pids`` (a command's processes) has ended."""
    _wait_until(lambda: all(map(_gone, pids)), f"the command's processes {pids} to end",
                timeout=timeout)


class Gate:
    """Side channels of one test: a go file that releases blocked commands, and pid files."""

    def __init__(self, side):
        self.side = side
        self.go = side / "go"
        self.pids = []
        self.runs = 0

    @property
    def block(self) -> str:
        """Shell text that waits until ``release()``."""
        return f"while [ ! -e {shlex.quote(str(self.go))} ]; do sleep {POLL_S}; done"

    def release(self) -> None:
        self.go.touch()

    def report(self, name: str, what: str = "$$") -> str:
        """Shell text writing ``what`` (pids, one line) to the side file ``name``."""
        return f'echo "{what}" > {shlex.quote(str(self.side / name))}'

    def read_pids(self, name: str, proc) -> list:
        """The pids the command of ``proc`` reported in ``name``, once it has written them."""
        path = self.side / name

        def written():
            data = path.read_bytes() if path.exists() else b""
            return data.endswith(b"\n") and data

        data = _wait_until(written, f"the command to write {path}", proc)
        pids = [int(p) for p in data.split()]
        self.pids.extend(pids)
        return pids

    def cleanup(self) -> None:
        self.release()
        for pid in self.pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def gate(tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    g = Gate(side)
    yield g
    g.cleanup()


@contextlib.contextmanager
def _running(cli, gate, *args, **kw):
    """``seamless-run ARGS`` started with its stderr in a side file (``proc.stderr_path``);
    on the way out killed if still running, reaped, and its stdout pipe (if any) closed."""
    gate.runs += 1
    stderr_path = gate.side / f"stderr-{gate.runs}"
    with open(stderr_path, "wb") as stderr:
        proc = cli.start("seamless-run", *args, stderr=stderr, **kw)
    proc.stderr_path = stderr_path
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=EXIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def _record(sidecar) -> dict:
    """The one JSON line of a sidecar."""
    data = sidecar.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    return json.loads(data)


def _futures(directory) -> list:
    return sorted(p.name for p in directory.rglob("*.FUTURE"))


def _assert_owned(sidecar, proc) -> None:
    record = _record(sidecar)
    assert set(record) == {"pid", "host", "started", "transformation", "job"}
    assert record["pid"] == proc.pid
    assert record["host"] == HOST
    assert isinstance(record["started"], float)
    assert re.fullmatch(r"[0-9a-f]{64}", record["transformation"]), record
    assert record["job"] is None


def _stale_message(target: str, why: str) -> str:
    return (f"{target}.FUTURE is stale ({why}); check that {target} is complete and delete "
            f"{target}.FUTURE, or rerun the job that produces {target}")


# 1. seamless-run CMD > out.txt

def test_stdout_file_has_a_sidecar_while_the_command_runs(cli, gate):
    out = cli.work / "out.txt"
    command = f"{gate.report('pid')}; {gate.block}; echo result"
    with open(out, "wb") as stdout, _running(cli, gate, command, stdout=stdout) as proc:
        gate.read_pids("pid", proc)
        sidecar = cli.work / "out.txt.FUTURE"
        assert sidecar.exists()
        _assert_owned(sidecar, proc)
        gate.release()
        assert proc.wait(timeout=EXIT_S) == 0
    assert not sidecar.exists()
    assert out.read_bytes() == b"result\n"
    assert _futures(cli.work) == []


# 2. -c outputs and redirections inside a quoted command

@pytest.mark.parametrize("form", ["capture", "redirection"])
def test_output_has_a_sidecar_while_the_command_runs(cli, gate, form):
    made = cli.work / "made.txt"
    command = f"{gate.report('pid')}; {gate.block}; echo made > made.txt"
    args = ["-c", "made.txt", command] if form == "capture" else [command]
    with _running(cli, gate, *args, stdout=subprocess.DEVNULL) as proc:
        gate.read_pids("pid", proc)
        sidecar = cli.work / "made.txt.FUTURE"
        _assert_owned(sidecar, proc)
        assert not made.exists()  # written only when the command has succeeded
        gate.release()
        assert proc.wait(timeout=EXIT_S) == 0
    assert made.read_bytes() == b"made\n"
    assert _futures(cli.work) == []


# 3. The stdout sidecar goes after a failure and after SIGINT / SIGTERM

@pytest.mark.parametrize("ending, status", [
    ("exit 3", 3), (signal.SIGINT, 130), (signal.SIGTERM, 143),
], ids=["failure", "SIGINT", "SIGTERM"])
def test_stdout_sidecar_is_removed_however_the_run_ends(cli, gate, ending, status):
    out = cli.work / "out.txt"
    tail = ending if isinstance(ending, str) else "echo never"
    command = f"{gate.report('pid')}; {gate.block}; {tail}"
    with open(out, "wb") as stdout, _running(cli, gate, command, stdout=stdout) as proc:
        gate.read_pids("pid", proc)
        assert (cli.work / "out.txt.FUTURE").exists()
        if isinstance(ending, str):
            gate.release()
        else:
            proc.send_signal(ending)
        assert proc.wait(timeout=EXIT_S) == status
    if status == 3:
        assert b"the command failed with exit status 3" in proc.stderr_path.read_bytes()
    assert _futures(cli.work) == []
    assert out.read_bytes() == b""  # on failure nothing is written
    assert os.listdir(cli.tmp) == []


# 4. A reader waits for the producer

def _produce(gate) -> str:
    """The producer's command: report its pid, block at the gate, print ``data``."""
    return f"{gate.report('producer')}; {gate.block}; echo data"


@contextlib.contextmanager
def _producer(cli, gate):
    """``seamless-run PRODUCE > x.txt`` running, blocked at the gate, its sidecar in place."""
    with open(cli.work / "x.txt", "wb") as stdout, \
            _running(cli, gate, _produce(gate), stdout=stdout) as proc:
        gate.read_pids("producer", proc)
        assert (cli.work / "x.txt.FUTURE").exists()
        yield proc


def _waiting_message(proc, target="x.txt") -> bytes:
    return (f"seamless-run: waiting for {target} ({target}.FUTURE, pid {proc.pid} on {HOST})\n"
            .encode())


def _checksum(stderr: bytes, word: bytes) -> bytes:
    """The transformation checksum of a ``-v`` run's ``cache hit/miss <checksum>`` line."""
    found = re.search(rb"seamless-run: cache " + word + rb" ([0-9a-f]{64})\n", stderr)
    assert found, stderr
    return found.group(1)


@pytest.mark.parametrize("word", ["x.txt", "x.txt.FUTURE"])
def test_a_reader_waits_for_the_producer(cli, gate, word):
    with _producer(cli, gate) as producer:
        with _running(cli, gate, "-v", "cat", word, stdout=subprocess.PIPE) as reader:
            message = _waiting_message(producer)
            _wait_until(lambda: message in reader.stderr_path.read_bytes(),
                        "the reader's waiting message", reader)
            assert reader.poll() is None
            gate.release()
            out, _ = reader.communicate(timeout=EXIT_S)
            assert reader.returncode == 0, reader.stderr_path.read_bytes()
        assert producer.wait(timeout=EXIT_S) == 0
    assert out == b"data\n"
    stderr = reader.stderr_path.read_bytes()
    assert stderr.count(b"waiting for") == 1
    assert (cli.work / "x.txt").read_bytes() == b"data\n"
    assert _futures(cli.work) == []
    # Both word forms name the same transformation: `cat x.txt` over x.txt's final content.
    again = cli.run("seamless-run", "-v", "cat", "x.txt", check=0)
    assert again.stdout == b"data\n"
    assert _checksum(again.stderr, b"hit") == _checksum(stderr, b"miss")


def test_an_unparseable_fresh_sidecar_is_waited_for(cli, gate):
    (cli.work / "x.txt").write_bytes(b"done\n")
    sidecar = cli.work / "x.txt.FUTURE"
    sidecar.write_bytes(b"0123abcd.x.txt\n")  # another tool's sidecar: judged by mtime alone
    with _running(cli, gate, "cat", "x.txt", stdout=subprocess.PIPE) as reader:
        message = b"seamless-run: waiting for x.txt (x.txt.FUTURE)\n"
        _wait_until(lambda: message in reader.stderr_path.read_bytes(),
                    "the reader's waiting message", reader)
        sidecar.unlink()
        out, _ = reader.communicate(timeout=EXIT_S)
        assert reader.returncode == 0, reader.stderr_path.read_bytes()
    assert out == b"done\n"


def test_ctrl_c_while_waiting_exits_130_and_removes_only_its_own_sidecar(cli, gate):
    with _producer(cli, gate) as producer:
        with open(cli.work / "y.txt", "wb") as stdout, \
                _running(cli, gate, "cat", "x.txt", stdout=stdout) as reader:
            _wait_until(lambda: _waiting_message(producer) in reader.stderr_path.read_bytes(),
                        "the reader's waiting message", reader)
            assert (cli.work / "y.txt.FUTURE").exists()
            reader.send_signal(signal.SIGINT)
            assert reader.wait(timeout=EXIT_S) == 130
        assert _futures(cli.work) == ["x.txt.FUTURE"]  # the producer's, still running
        assert producer.poll() is None
        gate.release()
        assert producer.wait(timeout=EXIT_S) == 0
    assert (cli.work / "y.txt").read_bytes() == b""
    assert _futures(cli.work) == []


# 5. Stale sidecars

def test_a_killed_producer_leaves_a_stale_sidecar_that_a_rerun_takes_over(cli, gate):
    with _producer(cli, gate) as producer:
        [command_pid] = gate.pids
        producer.kill()
        assert producer.wait(timeout=EXIT_S) == -signal.SIGKILL
    _wait_gone(command_pid)  # by the parent-death signal
    assert _record(cli.work / "x.txt.FUTURE")["pid"] == producer.pid
    reader = cli.run("seamless-run", "cat", "x.txt", check=1)
    why = f"writer pid {producer.pid} on {HOST} is gone"
    assert reader.stderr == f"seamless-run: error: {_stale_message('x.txt', why)}\n".encode()
    assert reader.stdout == b""
    assert (cli.work / "x.txt.FUTURE").exists()  # a reader never deletes it
    gate.release()
    with open(cli.work / "x.txt", "wb") as stdout:
        cli.run("seamless-run", _produce(gate), stdout=stdout, check=0)
    assert (cli.work / "x.txt").read_bytes() == b"data\n"
    assert _futures(cli.work) == []
    assert cli.run("seamless-run", "cat", "x.txt", check=0).stdout == b"data\n"


def test_an_unparseable_sidecar_without_heartbeat_is_stale(cli):
    (cli.work / "x.txt").write_bytes(b"half")
    sidecar = cli.work / "x.txt.FUTURE"
    sidecar.write_bytes(b"0123abcd.x.txt\n")
    old = time.time() - 95
    os.utime(sidecar, (old, old))
    reader = cli.run("seamless-run", "cat", "x.txt", check=1)
    why = re.escape(_stale_message("x.txt", "@")).replace("@", r"no heartbeat for (\d+) s")
    found = re.fullmatch(rb"seamless-run: error: " + why.encode() + rb"\n", reader.stderr)
    assert found, reader.stderr
    assert int(found.group(1)) >= 95
    assert reader.stdout == b""
    assert sidecar.exists()


# 6, 7. Ctrl-C and SIGTERM during a long command

@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_command_and_removes_everything(cli, gate, signum, status):
    out, log = cli.work / "out.txt", cli.work / "log.txt"
    out.write_bytes(b"old output\n")
    log.write_bytes(b"earlier stdout\n")
    command = (f"sleep 1000 & {gate.report('pids', '$$ $!')}; {gate.block}; "
               "echo new > out.txt; echo new")
    with open(log, "ab") as stdout, _running(cli, gate, command, stdout=stdout) as proc:
        shell, background = gate.read_pids("pids", proc)
        assert _futures(cli.work) == ["log.txt.FUTURE", "out.txt.FUTURE"]
        proc.send_signal(signum)
        assert proc.wait(timeout=EXIT_S) == status
    _wait_gone(shell, background)
    assert os.listdir(cli.tmp) == []  # sandbox and stdout spool removed
    assert _futures(cli.work) == []
    assert sorted(os.listdir(cli.work)) == ["log.txt", "out.txt"]  # no temporary file
    assert out.read_bytes() == b"old output\n"
    assert log.read_bytes() == b"earlier stdout\n"


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_command_ignoring_sigint_is_killed_after_the_grace(cli, gate, signum, status):
    command = f"trap '' INT; {gate.report('pid')}; {gate.block}; echo never"
    with _running(cli, gate, "-c", "out.txt", command, stdout=subprocess.PIPE) as proc:
        [shell] = gate.read_pids("pid", proc)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=EXIT_S)
        assert proc.returncode == status
    assert out == b""
    _wait_gone(shell)
    assert os.listdir(cli.tmp) == []
    assert _futures(cli.work) == []


# 8. A command killed by another signal

@pytest.mark.parametrize("name, hint", [("TERM", b""),
                                        ("KILL", b" (often the out-of-memory killer)")])
def test_a_command_killed_by_a_signal_exits_1_naming_it(cli, name, hint):
    with open(cli.work / "out.txt", "wb") as stdout:
        proc = cli.run("seamless-run", f"echo partial; kill -{name} $$", stdout=stdout, check=1)
    assert proc.stderr == (b"seamless-run: error: the command was killed by SIG"
                           + name.encode() + hint
                           + b"; its stdout (8 bytes) was discarded\n")
    assert (cli.work / "out.txt").read_bytes() == b""
    assert _futures(cli.work) == []
    assert os.listdir(cli.tmp) == []
