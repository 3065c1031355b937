"""`seamless-run` with piped stdin (docs/cli.md, "Piped stdin"), and `-v` listing only real
inputs.

Every run is the installed console script in a subprocess (``cli`` fixture) with a timeout. A
command proves it ran by writing a line to its stderr (passed through live); a hit prints
nothing there. Identities are recomputed here from the documented description (SHA-256 of its
canonical JSON), so a change to the identity of commands without stdin fails a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from leaks import run_in_session

from seamless.shell.job import ShellJob

TIMEOUT_S = 120
RAN = b"ran\n"


def _piped(cli, data: bytes, *args, env=None, check=None):
    """seamless-run ARGS with ``data`` on a pipe as its stdin."""
    return cli.run("seamless-run", *args, input=data, stdin=None, env=env, check=check,
                   timeout=TIMEOUT_S)


def _checksum(command: str, stdin=None) -> str:
    """The transformation checksum of ``command`` with no file inputs or outputs, sandboxed."""
    description = {"command": command, "encoding": 1, "inputs": {}, "language": "bash",
                   "outputs": [], "result": "bash-v1", "sandbox": True, "vars": {}}
    if stdin is not None:
        description["stdin"] = hashlib.sha256(stdin).hexdigest()
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reported(stderr: bytes) -> tuple:
    """``(hit, checksum)`` from a ``-v`` run's stderr."""
    for line in stderr.splitlines():
        for kind in (b"hit", b"miss"):
            prefix = b"seamless-run: cache " + kind + b" "
            if line.startswith(prefix):
                return kind == b"hit", line[len(prefix):].decode()
    raise AssertionError(f"no cache hit/miss line in {stderr!r}")


COUNT = "echo ran >&2; wc -l"


def test_piped_lines_are_counted_and_a_second_identical_pipe_is_a_hit(cli):
    first = _piped(cli, b"1\n2\n3\n", COUNT, check=0)
    assert first.stdout.strip() == b"3"
    assert first.stderr == RAN
    second = _piped(cli, b"1\n2\n3\n", COUNT, check=0)
    assert second.stdout == first.stdout
    assert second.stderr == b""  # not run
    other = _piped(cli, b"1\n2\n3\n4\n", COUNT, check=0)
    assert other.stdout.strip() == b"4"
    assert other.stderr == RAN


def test_the_stdin_checksum_is_part_of_the_identity(cli):
    data = b"a\nb\n"
    proc = _piped(cli, data, "-v", "wc -l", check=0)
    assert _reported(proc.stderr) == (False, _checksum("wc -l", data))
    assert (f"seamless-run: input stdin: {len(data)} bytes "
            f"{hashlib.sha256(data).hexdigest()}").encode() in proc.stderr.splitlines()


def _no_stdin_runs(cli):
    """seamless-run -v with each kind of stdin that carries no data; the stderr of each."""
    argv = cli.argv("seamless-run", "-v", "wc -l")

    def run(command, **kw):
        return subprocess.run(command, check=False, cwd=cli.work, env=cli.env,
                              capture_output=True, timeout=TIMEOUT_S, **kw)

    runs = {"devnull": run(argv, stdin=subprocess.DEVNULL),
            "closed": run(["bash", "-c", '"$@" 0<&-', "bash", *argv]),
            "empty pipe": run(argv, input=b"")}
    leader, follower = pty.openpty()
    try:
        runs["terminal"] = run(argv, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)
    return runs


def test_without_piped_data_the_identity_is_unchanged(cli):
    expected = _checksum("wc -l")
    runs = _no_stdin_runs(cli)
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.strip() == b"0", name  # the command read /dev/null
        assert _reported(proc.stderr)[1] == expected, name
        assert b"input stdin" not in proc.stderr, name
    # The first of them stored the result; every other was a hit on that same entry.
    assert sum(not _reported(p.stderr)[0] for p in runs.values()) == 1


def test_a_regular_file_on_stdin_is_an_input(cli):
    (cli.work / "lines.txt").write_bytes(b"x\ny\nz\n")
    with open(cli.work / "lines.txt", "rb") as f:
        proc = cli.run("seamless-run", "-v", COUNT, stdin=f, check=0, timeout=TIMEOUT_S)
    assert proc.stdout.strip() == b"3"
    assert _reported(proc.stderr) == (False, _checksum(COUNT, b"x\ny\nz\n"))
    again = _piped(cli, b"x\ny\nz\n", COUNT, check=0)  # the same bytes through a pipe: a hit
    assert again.stderr == b"" and again.stdout == proc.stdout


def test_stdin_over_the_limit_is_an_error_and_nothing_is_cached(cli):
    env = dict(cli.env, SEAMLESS_STDIN_MAX="100")
    proc = _piped(cli, b"y\n" * 1000, COUNT, env=env, check=1)
    assert proc.stdout == b""
    assert RAN not in proc.stderr
    message = proc.stderr.decode()
    assert "more than 100 bytes, the SEAMLESS_STDIN_MAX limit" in message
    assert "Raise the limit" in message
    assert not cli.cache.exists() or not any((cli.cache / "buffers").rglob("*"))
    # At the limit it is accepted.
    assert _piped(cli, b"y\n" * 50, COUNT, env=env, check=0).stdout.strip() == b"50"


@pytest.mark.parametrize("value", ["lots", "-5", "1.5"])
def test_a_bad_limit_names_the_variable(cli, value):
    env = dict(cli.env, SEAMLESS_STDIN_MAX=value)
    proc = _piped(cli, b"1\n", COUNT, env=env, check=1)
    assert f"SEAMLESS_STDIN_MAX={value!r} is not a number of bytes".encode() in proc.stderr
    assert RAN not in proc.stderr


def test_a_command_that_does_not_read_stdin_still_ends(cli):
    proc = _piped(cli, b"z" * (1 << 20), "echo done", check=0)
    assert proc.stdout == b"done\n"


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=4096))
def test_the_command_reads_exactly_the_piped_bytes(cli, data):
    first = _piped(cli, data, "cat", check=0)
    assert first.stdout == data
    hit, checksum = _reported(_piped(cli, data, "-v", "cat", check=0).stderr)
    assert hit and checksum == _checksum("cat", data)


@given(stdin_path=st.none() | st.text(st.characters(blacklist_categories=("Cs",))),
       command=st.text(min_size=1).filter(str.strip))
def test_a_job_with_a_stdin_file_round_trips(stdin_path, command):
    job = ShellJob(command, vars={}, stdin_path=stdin_path)
    wire = job.to_wire()
    assert wire["stdin_path"] == stdin_path
    assert ShellJob.from_wire(json.loads(json.dumps(wire))) == job


def test_verbose_lists_only_real_inputs(cli):
    (cli.work / "foo").write_bytes(b"1\n2\n")
    proc = cli.run("seamless-run", "-v", "wc", "-l", "foo", check=0)
    assert proc.stdout == b"2 foo\n"
    lines = proc.stderr.decode().splitlines()
    assert [line.split(":")[1] for line in lines if line.startswith("seamless-run: input ")] \
        == [" input foo"]
    assert not any("not tracked" in line for line in lines), lines


def _run_bash(cli, text: str, timeout: float):
    """``text`` under ``bash -eu`` in a session of its own (console scripts first on PATH);
    whatever it leaves running is stopped, and fails the test."""
    env = dict(cli.env)
    env["PATH"] = os.path.dirname(cli.argv("seamless-run")[0]) + os.pathsep + env["PATH"]
    proc, out, err, left = run_in_session(["bash", "-euc", text], timeout, cwd=cli.work,
                                          env=env)
    assert not left, f"the script left processes running: {left}\n{err!r}"
    return proc.returncode, err.decode(errors="replace")


QSUBMIT = """
seamless-queue --workers 2 &
server=$!
head -c 3000000 /dev/urandom > big.bin
seq 5 | seamless-run --qsubmit 'sleep 1; wc -l > n.txt'
printf 'b\\na\\n' | seamless-run --qsubmit 'sort > sorted.txt'
seamless-run --qsubmit 'sha256sum > big.sum' < big.bin
seamless-run --qsubmit 'wc -c > none.txt' < /dev/null
seamless-queue-finish > report.txt
wait "$server"
seq 5 | seamless-run -v 'sleep 1; wc -l > n.txt' 2> hit.log
"""


def test_qsubmit_takes_the_piped_bytes_along(cli):
    code, stderr = _run_bash(cli, QSUBMIT, timeout=300)
    assert code == 0, stderr
    runtime = cli.tmp / f"seamless-{os.getuid()}"  # the server's files, and the stdin files
    assert not (runtime.exists() and list(runtime.iterdir())), list(runtime.iterdir())
    work = cli.work
    assert (work / "report.txt").read_text() == "4 jobs: 4 done, 0 failed\n"
    assert (work / "n.txt").read_text().strip() == "5"
    assert (work / "sorted.txt").read_text() == "a\nb\n"
    digest = hashlib.sha256((work / "big.bin").read_bytes()).hexdigest()
    assert (work / "big.sum").read_text().split()[0] == digest
    assert (work / "none.txt").read_text().strip() == "0"
    # The queued job and a plain run with the same bytes are one transformation.
    assert "cache hit" in (work / "hit.log").read_text()


def _submit_message(cli, stdin_path) -> dict:
    return {"type": "submit", "command": "wc -l > n.txt", "cwd": str(cli.work),
            "env": dict(cli.env), "inputs": [], "outputs": [str(cli.work / "n.txt")],
            "stdout_path": None, "vars": {}, "sandbox": True, "cache": True,
            "transformation": None, "futures": [], "captures": [], "explicit_inputs": [],
            "stdin_path": stdin_path}


def test_the_server_owns_only_stdin_files_beside_its_socket(cli, monkeypatch):
    from seamless.queue import client, location
    from seamless.shell.stdin import queued_file_prefix

    for name in ("XDG_RUNTIME_DIR", "SEAMLESS_QUEUE_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(cli.tmp))
    files = location.server_files(str(cli.work))
    location.check_private_dir(os.path.dirname(files.socket), create=True)
    stale = queued_file_prefix(files.socket) + "left-by-a-killed-server"
    with open(stale, "wb") as f:
        f.write(b"old\n")
    victim = cli.tmp.parent / "precious.txt"
    victim.write_bytes(b"keep me\n")
    server = cli.start("seamless-queue", "--workers", "1", stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not os.path.exists(files.info):  # written once it listens
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.05)
        assert not os.path.exists(stale)
        for path in (str(victim), queued_file_prefix(files.socket) + "../precious.txt"):
            with client.connect(str(cli.work)) as conn, \
                    pytest.raises(client.Refused) as refused:
                conn.request(_submit_message(cli, path), "accepted")
            assert refused.value.code == 2
            assert "field 'stdin_path' must be a file" in str(refused.value)
        assert victim.read_bytes() == b"keep me\n"
        proc = cli.run("seamless-queue-finish", timeout=TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr
        assert server.wait(TIMEOUT_S) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(TIMEOUT_S)
        server.stderr.close()
    assert not os.listdir(os.path.dirname(files.socket))
