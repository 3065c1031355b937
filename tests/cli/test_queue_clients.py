"""The queue's clients: ``seamless-run --qsubmit`` and ``seamless-queue-finish``
(docs/cli.md, "Queue").

Two kinds of test, all with real processes:

- without a server, and against a scripted stand-in server (a thread of this test process
  listening on ``SEAMLESS_QUEUE_SOCKET``): what the clients do with no server, a server of
  another protocol version, a refusal, a server that dies before answering, a finish report;
- against the real ``seamless-queue`` (the ``queue`` fixture starts it; it is always stopped by
  the test: a finish, else SIGTERM and a wait in the finalizer): waiting for a starting server,
  hits recorded, each kind of target, non-UTF-8 commands, jobs refused.

Every subprocess runs with a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from seamless.cli.options import build_parser, scan
from seamless.queue import location, wire

HANG_S = 60  # an upper bound that only a hang exceeds


# ---------------------------------------------------------------- no server at all

def _sidecars(root) -> list:
    return sorted(str(p) for p in root.rglob("*.FUTURE"))


def test_qsubmit_without_a_server_fails_at_once_creating_nothing(cli):
    (cli.work / "a.txt").write_text("a\n")
    with open(cli.work / "out.txt", "wb") as out:
        started = time.monotonic()
        proc = cli.run("seamless-run", "--qsubmit", "sort a.txt > sorted.txt", stdout=out)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert err.startswith("seamless-run: error: no seamless-queue server for ")
    assert "start one with `seamless-queue &`" in err and ".sock)" in err
    assert elapsed < 5, f"{elapsed:.1f} s: no server must fail at once, not wait"
    assert _sidecars(cli.work) == []
    assert sorted(p.name for p in cli.work.iterdir()) == ["a.txt", "out.txt"]
    assert (cli.work / "out.txt").read_bytes() == b""


@pytest.mark.parametrize("args", [(), ("--status",), ("--status", "--json")])
def test_finish_without_a_server_exits_255_at_once(cli, args):
    started = time.monotonic()
    proc = cli.run("seamless-queue-finish", *args, timeout=HANG_S)
    assert time.monotonic() - started < 5
    assert proc.returncode == 255
    assert b"no seamless-queue server for " in proc.stderr
    assert b"seamless-queue &" in proc.stderr and proc.stdout == b""


@pytest.mark.parametrize("args", [("--bogus",), ("--json",), ("extra",)])
def test_finish_usage_errors_exit_255(cli, args):
    proc = cli.run("seamless-queue-finish", *args)
    assert proc.returncode == 255
    assert b"seamless-queue-finish: error:" in proc.stderr


def test_finish_help_and_version(cli):
    import seamless

    assert b"--status" in cli.run("seamless-queue-finish", "-h", check=0).stdout
    version = cli.run("seamless-queue-finish", "--version", check=0).stdout
    assert version.strip() == f"seamless-queue-finish {seamless.__version__}".encode()


QSUBMIT_ARGVS = [
    ["--qsubmit", "paste", "a", "b"],
    ["-q", "--qsubmit", "-c", "out", "cmd > out"],
    ["--qsubmit", "--", "--weird"],
    ["--qsub", "cmd"],  # abbreviation: argparse decides
    ["cmd", "--qsubmit"],  # an argument of the command, not an option
]


@pytest.mark.parametrize("argv", QSUBMIT_ARGVS, ids=[" ".join(a) for a in QSUBMIT_ARGVS])
def test_scan_and_argparse_agree_on_qsubmit(argv, capsys):
    fast = scan(argv)
    if fast is not None:
        assert fast == vars(build_parser().parse_args(argv))
    assert scan(["--qsubmit", "true"])["qsubmit"] is True
    assert scan(["true", "--qsubmit"])["qsubmit"] is False
    capsys.readouterr()


def test_a_plain_run_does_not_load_the_queue_client(cli):
    """The queue's modules (socket, json frames) load only with --qsubmit."""
    cli.run("seamless-run", "echo", "hi", check=0)
    probe = (
        "import sys\n"
        "from seamless.cli import run\n"
        "assert run.main(['echo', 'hi']) == 0\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m == 'socket' or m.startswith('seamless.queue'))\n"
        "sys.stderr.write('QUEUE=%r\\n' % loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cli.work, env=cli.env,
                          capture_output=True, timeout=HANG_S)
    assert proc.returncode == 0 and proc.stdout == b"hi\n", proc.stderr
    assert b"QUEUE=[]" in proc.stderr


# ---------------------------------------------------------------- a scripted stand-in server

class StandIn:
    """A one-thread server on ``path`` that greets with ``hello`` and answers each request with
    ``answer(message)`` (a dict to send, or None to close without answering). Records what it
    received. ``stop()`` closes it and joins the thread."""

    def __init__(self, path, answer, hello=None):
        self.path = str(path)
        self.answer = answer
        self.hello = hello or {"type": "hello", "v": wire.PROTOCOL_VERSION, "pid": os.getpid(),
                               "host": os.uname().nodename, "dir": "/stand-in", "workers": 1,
                               "version": "test"}
        self.received = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        location.bind(self.listener, self.path)
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(HANG_S)
                try:
                    wire.send(conn, self.hello)
                    message = wire.receive(conn, HANG_S)
                except (OSError, wire.FrameError):
                    continue
                self.received.append(message)
                reply = self.answer(message)
                if reply is not None:
                    wire.send(conn, reply)

    def stop(self):
        self.stopped.set()
        self.thread.join(HANG_S)
        self.listener.close()
        os.unlink(self.path)


@pytest.fixture
def stand_in(cli, tmp_path):
    """``start(answer, hello=None)``: a stand-in server the clients of ``cli`` will find."""
    private = tmp_path / "sock"
    private.mkdir(mode=0o700)
    path = private / "q.sock"
    cli.env["SEAMLESS_QUEUE_SOCKET"] = str(path)
    servers = []

    def start(answer, hello=None):
        servers.append(StandIn(path, answer, hello))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _status(jobs, accepting=True):
    return {"type": "status", "accepting": accepting, "workers": 2, "jobs": jobs}


def _job(n, state, command, exit=None, seconds=None, sig=None):
    return {"job": n, "state": state, "exit": exit, "signal": sig, "seconds": seconds,
            "command": command}


def test_a_client_of_another_protocol_version_exits_1(cli, stand_in):
    hello = {"type": "hello", "v": 2, "pid": os.getpid(), "host": "h", "dir": "/d",
             "workers": 1, "version": "9"}
    stand_in(lambda m: None, hello=hello)
    (cli.work / "a.txt").write_text("a\n")
    proc = cli.run("seamless-run", "--qsubmit", "sort a.txt > s.txt", timeout=HANG_S)
    assert proc.returncode == 1
    assert (b"server speaks protocol v2, this client v1; restart seamless-queue after "
            b"upgrading") in proc.stderr
    assert _sidecars(cli.work) == []
    assert cli.run("seamless-queue-finish", timeout=HANG_S).returncode == 255


def test_a_refused_submission_removes_its_sidecars_and_quotes_the_server(cli, stand_in):
    seen = {}

    def answer(message):
        if message["type"] == "submit":
            seen["futures"] = [os.path.exists(p) for p in message["futures"]]
            seen["message"] = message
            return {"type": "error", "message": "job names its own output", "code": 2}
        return None

    server = stand_in(answer)
    (cli.work / "a.txt").write_text("a\n")
    with open(cli.work / "all.txt", "wb") as out:
        proc = cli.run("seamless-run", "--qsubmit", "sort a.txt > s.txt", stdout=out,
                       timeout=HANG_S)
    assert proc.returncode == 2, proc.stderr
    assert b"job names its own output" in proc.stderr
    assert seen["futures"] == [True, True]  # created before submitting, for the server
    assert _sidecars(cli.work) == []        # and removed after the refusal
    message = seen["message"]
    work = os.path.realpath(cli.work)
    assert message["outputs"] == [f"{work}/all.txt", f"{work}/s.txt"]
    assert message["stdout_path"] == f"{work}/all.txt"
    assert message["futures"] == [f"{work}/all.txt.FUTURE", f"{work}/s.txt.FUTURE"]
    assert f"{work}/a.txt" in message["inputs"]
    assert message["cwd"] == work and message["env"]["SEAMLESS_CACHE"] == str(cli.cache)
    assert message["transformation"] and len(message["transformation"]) == 64
    assert (message["sandbox"], message["cache"], message["captures"],
            message["explicit_inputs"], message["vars"]) == (True, True, [], [], {})
    assert [m["type"] for m in server.received] == ["submit"]  # the first look sends nothing


def test_an_accepted_submission_leaves_sidecars_owned_by_the_server(cli, stand_in, tmp_path):
    owner = subprocess.Popen(["sleep", str(HANG_S)])  # a live pid to own the sidecars
    try:
        hello = {"type": "hello", "v": 1, "pid": owner.pid, "host": os.uname().nodename,
                 "dir": "/d", "workers": 1, "version": "t"}
        stand_in(lambda m: {"type": "accepted", "job": 17}, hello=hello)
        proc = cli.run("seamless-run", "--qsubmit", "-c", "out", "mkdir out; echo x > out/f",
                       timeout=HANG_S)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b"seamless-run: queued job 17\n" and proc.stdout == b""
        record = json.loads((cli.work / "out.FUTURE").read_text())
        assert record["pid"] == owner.pid and record["host"] == os.uname().nodename
        quiet = cli.run("seamless-run", "-q", "--qsubmit", "echo y > y.txt", timeout=HANG_S)
        assert quiet.returncode == 0 and quiet.stderr == b""
    finally:
        owner.kill()
        owner.wait()


def test_a_cache_hit_is_recorded_not_submitted_and_prints_nothing(cli, stand_in):
    server = stand_in(lambda m: {"type": "accepted", "job": 4})
    (cli.work / "a.txt").write_text("a\n")
    cli.run("seamless-run", "cat", "a.txt", check=0)  # fills the cache
    proc = cli.run("seamless-run", "-v", "--qsubmit", "cat", "a.txt", timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""  # the stdout of a hit stays in the cache, as a queued job's would
    assert b"cache hit" in proc.stderr and b"recorded as job 4" in proc.stderr
    (record,) = server.received
    assert record["type"] == "record" and record["command"] == "cat a.txt"
    assert record["outputs"] == [] and len(record["transformation"]) == 64
    with open(cli.work / "copy.txt", "wb") as out:
        cli.run("seamless-run", "--qsubmit", "cat", "a.txt", stdout=out, check=0)
    assert (cli.work / "copy.txt").read_bytes() == b"a\n"  # written by the hit, atomically
    assert server.received[-1]["outputs"] == [os.path.realpath(cli.work / "copy.txt")]
    assert _sidecars(cli.work) == []


def test_an_appending_stdout_is_refused(cli, stand_in):
    stand_in(lambda m: {"type": "accepted", "job": 1})
    (cli.work / "log.txt").write_text("old\n")
    with open(cli.work / "log.txt", "ab") as out:
        proc = cli.run("seamless-run", "--qsubmit", "echo", "new", stdout=out, timeout=HANG_S)
    assert proc.returncode == 2
    assert b"opened for appending" in proc.stderr
    assert (cli.work / "log.txt").read_text() == "old\n" and _sidecars(cli.work) == []


def test_finish_reports_failures_and_counts_them(cli, stand_in):
    tail = "".join(f"line {i}\n" for i in range(30))
    jobs = [_job(1, "done", "true", 0, 0.5), _job(2, "cached", "cat a.txt", 0, 0.0),
            _job(3, "failed", "bash -c 'exit 3'", 3, 0.1),
            _job(4, "failed", "sort x > y", None, None)]
    failed = [{"job": 3, "command": "bash -c 'exit 3'", "exit": 3, "signal": None,
               "stderr_tail": tail},
              {"job": 4, "command": "sort x > y", "exit": None, "signal": None,
               "stderr_tail": "input x was not produced: job 3 (`...`) failed (exit 3)"}]

    def answer(message):
        if message["type"] == "status":
            return _status(jobs)
        return {"type": "finished", "jobs": jobs, "failed": failed}

    stand_in(answer)
    proc = cli.run("seamless-queue-finish", timeout=HANG_S)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "job 3 failed (exit 3): bash -c 'exit 3'"
    assert lines[1:21] == [f"    line {i}" for i in range(10, 30)]
    assert lines[21] == "job 4 failed (not run): sort x > y"
    assert "was not produced" in lines[22]
    assert lines[-1] == "4 jobs: 1 done, 1 cached, 2 failed"


def test_finish_exit_status_is_capped_at_253(cli, stand_in):
    jobs = [_job(i, "failed", f"exit {i}", 1) for i in range(1, 301)]
    failed = [{"job": j["job"], "command": j["command"], "exit": 1, "signal": 9 if i else None,
               "stderr_tail": ""} for i, j in enumerate(jobs)]
    stand_in(lambda m: _status(jobs) if m["type"] == "status"
             else {"type": "finished", "jobs": jobs, "failed": failed})
    proc = cli.run("seamless-queue-finish", timeout=HANG_S)
    assert proc.returncode == 253
    assert b"job 2 failed (killed by signal 9 (SIGKILL)): exit 2" in proc.stdout
    assert proc.stdout.endswith(b"300 jobs: 0 done, 300 failed\n")


def test_finish_names_what_a_dying_server_left_unaccounted(cli, stand_in):
    jobs = [_job(1, "done", "true", 0, 0.1), _job(2, "running", "sleep 100", None, 3.0),
            _job(3, "waiting", "cat out.txt", None, None)]
    stand_in(lambda m: _status(jobs) if m["type"] == "status" else None)
    proc = cli.run("seamless-queue-finish", timeout=HANG_S)
    assert proc.returncode == 255
    err = proc.stderr.decode()
    assert "closed the connection before answering" in err
    assert "2 job(s) not accounted for" in err
    assert "job 2 running: sleep 100" in err and "job 3 waiting: cat out.txt" in err
    assert "job 1 " not in err


def test_finish_relays_a_server_stopped_by_a_signal(cli, stand_in):
    jobs = [_job(1, "queued", "true")]
    stand_in(lambda m: _status(jobs) if m["type"] == "status" else
             {"type": "error", "message": "server stopped by SIGTERM; 1 jobs not run"})
    proc = cli.run("seamless-queue-finish", timeout=HANG_S)
    assert proc.returncode == 255
    assert b"server stopped by SIGTERM; 1 jobs not run" in proc.stderr
    assert b"job 1 queued: true" in proc.stderr


def test_status_lines_and_json(cli, stand_in):
    jobs = [_job(1, "done", "paste a b", 0, 0.41), _job(2, "running", "sleep 9", None, 1.5),
            _job(3, "failed", "kill -9 $$", None, 0.2, sig=9), _job(4, "waiting", "a\nb")]
    stand_in(lambda m: _status(jobs))
    proc = cli.run("seamless-queue-finish", "--status", check=0, timeout=HANG_S)
    rows = [line.split(None, 4) for line in proc.stdout.decode().splitlines()]
    assert rows == [["ID", "STATE", "EXIT", "SECONDS", "COMMAND"],
                    ["1", "done", "0", "0.41", "paste a b"],
                    ["2", "running", "-", "1.50", "sleep 9"],
                    ["3", "failed", "SIGKILL", "0.20", "kill -9 $$"],
                    ["4", "waiting", "-", "-", "a\\nb"]]
    as_json = cli.run("seamless-queue-finish", "--status", "--json", check=0, timeout=HANG_S)
    assert json.loads(as_json.stdout) == {"accepting": True, "workers": 2, "jobs": jobs}


def test_ctrl_c_leaves_finish_with_130(cli, stand_in):
    release = threading.Event()

    def answer(message):
        if message["type"] == "status":
            return _status([_job(1, "running", "sleep 100")])
        release.wait(HANG_S)  # a finish that never comes
        return None

    server = stand_in(answer)
    proc = cli.start("seamless-queue-finish", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_S
        while [m["type"] for m in server.received] != ["status", "finish"]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"the server keeps draining" in err


def test_clients_refuse_a_socket_in_a_directory_others_can_write(cli, stand_in):
    server = stand_in(lambda m: {"type": "accepted", "job": 1})
    directory = os.path.dirname(server.path)
    os.chmod(directory, 0o777)
    try:
        proc = cli.run("seamless-run", "--qsubmit", "echo hi > hi.txt", timeout=HANG_S)
        finish = cli.run("seamless-queue-finish", "--status", timeout=HANG_S)
    finally:
        os.chmod(directory, 0o700)
    assert proc.returncode == 1 and finish.returncode == 255
    for err in (proc.stderr, finish.stderr):
        assert f"its directory {directory} is not safe".encode() in err, err
    assert server.received == [] and _sidecars(cli.work) == []


def test_a_server_holding_its_lock_but_not_yet_listening_is_waited_for(cli, stand_in):
    import fcntl

    lock_path = cli.env["SEAMLESS_QUEUE_SOCKET"] + ".lock"
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        submitter = cli.start("seamless-run", "--qsubmit", "echo hi > hi.txt",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)  # the submitter finds the lock held and no socket: it waits
            assert submitter.poll() is None
            stand_in(lambda m: {"type": "accepted", "job": 1})
            out, err = submitter.communicate(timeout=HANG_S)
        finally:
            if submitter.poll() is None:
                submitter.kill()
                submitter.wait()
        assert submitter.returncode == 0 and err == b"seamless-run: queued job 1\n", err
    finally:
        os.close(lock)
        os.unlink(lock_path)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_submitting_removes_the_sidecars(cli, stand_in, signum, code):
    release = threading.Event()

    def answer(message):
        release.wait(HANG_S)  # the submit is never answered
        return None

    server = stand_in(answer)
    submitter = cli.start("seamless-run", "--qsubmit", "echo hi > hi.txt",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_S
        while not server.received:
            assert time.monotonic() < deadline and submitter.poll() is None
            time.sleep(0.05)
        assert _sidecars(cli.work) == [str(cli.work / "hi.txt.FUTURE")]
        submitter.send_signal(signum)
        submitter.communicate(timeout=HANG_S)
    finally:
        release.set()
        if submitter.poll() is None:
            submitter.kill()
            submitter.wait()
    assert submitter.returncode == code
    assert _sidecars(cli.work) == []


# ---------------------------------------------------------------- the real server

class Queue:
    """A ``seamless-queue`` started by a test; its stderr goes to ``log``."""

    def __init__(self, cli, workers):
        self.cli = cli
        self.log = cli.tmp.parent / f"queue-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = cli.start("seamless-queue", "--workers", str(workers),
                                  stdout=subprocess.DEVNULL, stderr=log)

    def finish(self, *args) -> subprocess.CompletedProcess:
        """``seamless-queue-finish``; the server must then exit 0."""
        done = self.cli.run("seamless-queue-finish", *args, timeout=HANG_S * 5)
        assert self.proc.wait(timeout=HANG_S) == 0, self.log.read_text()
        return done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def runtime_files(cli) -> list:
    """What servers left in this test's socket directory."""
    run_dir = cli.tmp / f"seamless-{os.getuid()}"
    return sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []


@pytest.fixture
def queue(cli):
    """``start(workers=2)`` starts a server in ``cli.work``; each is stopped at the end (the
    test's finish, else SIGTERM and a wait), and must leave no socket, lock or info file."""
    started = []

    def start(workers=2):
        started.append(Queue(cli, workers))
        return started[-1]

    yield start
    for server in started:
        server.stop()
    assert runtime_files(cli) == []


def _status_of(cli) -> dict:
    proc = cli.run("seamless-queue-finish", "--status", "--json", check=0, timeout=HANG_S)
    return json.loads(proc.stdout)


def _wait_for_states(cli, states, seconds=HANG_S) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status = _status_of(cli)
        if [j["state"] for j in status["jobs"]] == states:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_qsubmit_right_after_starting_the_server_waits_for_it(cli, queue):
    (cli.work / "a.txt").write_text("a\n")
    server = queue()  # no pause: the submitter may look before the server holds its lock
    proc = cli.run("seamless-run", "--qsubmit", "sort a.txt > s.txt", timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"seamless-run: queued job 1\n" and proc.stdout == b""
    done = server.finish()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == b"1 job: 1 done, 0 failed\n"
    assert (cli.work / "s.txt").read_text() == "a\n" and _sidecars(cli.work) == []


def test_a_hit_is_recorded_without_running_anything(cli, queue):
    (cli.work / "a.txt").write_text("a\n")
    marker = cli.tmp.parent / "marker.log"
    cli.env["MARK"] = str(marker)
    command = 'cat a.txt; echo ran >> "$MARK"'
    assert cli.run("seamless-run", command, check=0).stdout == b"a\n"
    server = queue()
    proc = cli.run("seamless-run", "--qsubmit", command, timeout=HANG_S)
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b"", proc.stderr
    (job,) = _status_of(cli)["jobs"]
    assert (job["job"], job["state"]) == (1, "cached")
    done = server.finish()
    assert done.returncode == 0 and done.stdout == b"1 job: 0 done, 1 cached, 0 failed\n"
    assert marker.read_text() == "ran\n"  # once, by the plain run


def test_every_kind_of_target(cli, queue):
    """A redirection in the command, -c, the submitter's stdout file, and no target at all
    (stdout to the cache). The jobs wait for gate.txt, whose sidecar this test holds, so what
    submission left behind can be looked at before they run."""
    from seamless.shell import future

    (cli.work / "a.txt").write_text("a\n")
    gate = future.Sidecar.create(str(cli.work / "gate.txt"))
    try:
        server = queue()
        cli.run("seamless-run", "--qsubmit", "cat gate.txt > redir.txt", check=0, timeout=HANG_S)
        cli.run("seamless-run", "--qsubmit", "-c", "cap", "mkdir cap; cat gate.txt > cap/f",
                check=0, timeout=HANG_S)
        with open(cli.work / "own.txt", "wb") as out:
            cli.run("seamless-run", "--qsubmit", "cat", "gate.txt", stdout=out, check=0,
                    timeout=HANG_S)
        cli.run("seamless-run", "--qsubmit", "cat", "gate.txt", "a.txt", check=0,
                timeout=HANG_S)
        status = _wait_for_states(cli, ["waiting"] * 4)
        assert [j["command"] for j in status["jobs"]] == [
            "cat gate.txt > redir.txt", "mkdir cap; cat gate.txt > cap/f", "cat gate.txt",
            "cat gate.txt a.txt"]
        for name in ("redir.txt", "cap", "own.txt"):
            record = json.loads((cli.work / f"{name}.FUTURE").read_text())
            assert record["pid"] == server.proc.pid, name
        assert (cli.work / "own.txt").read_bytes() == b""  # the submitter wrote nothing there
        (cli.work / "gate.txt").write_text("g\n")
    finally:
        gate.remove()
    done = server.finish()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == b"4 jobs: 4 done, 0 failed\n"
    assert (cli.work / "redir.txt").read_text() == "g\n"
    assert (cli.work / "cap" / "f").read_text() == "g\n"
    assert (cli.work / "own.txt").read_text() == "g\n"
    assert _sidecars(cli.work) == []
    hit = cli.run("seamless-run", "-v", "cat", "gate.txt", "a.txt", check=0)
    assert hit.stdout == b"g\na\n" and b"cache hit" in hit.stderr


def test_a_job_naming_its_own_output_as_a_future_is_refused(cli, queue):
    server = queue()
    proc = cli.run("seamless-run", "--qsubmit", "cat out.txt.FUTURE > out.txt",
                   timeout=HANG_S)
    assert proc.returncode == 2
    assert b"out.txt.FUTURE names an output of this same command" in proc.stderr
    assert _sidecars(cli.work) == []
    assert server.finish().stdout == b"0 jobs: 0 done, 0 failed\n"


def test_non_utf8_bytes_in_a_command_round_trip(cli, queue):
    name = b"\xff\xfe.bin"
    server = queue()
    proc = cli.run("seamless-run", "--qsubmit", b"printf %s \xe9\xff > " + name,
                   timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    (job,) = _status_of(cli)["jobs"]
    assert os.fsencode(job["command"]) == b"printf %s \xe9\xff > " + name
    assert server.finish().returncode == 0
    assert (cli.work / os.fsdecode(name)).read_bytes() == b"\xe9\xff"
    assert _sidecars(cli.work) == []


def test_a_later_submission_to_a_finishing_server_is_refused(cli, queue):
    from seamless.shell import future

    gate = future.Sidecar.create(str(cli.work / "gate.txt"))
    try:
        server = queue()
        cli.run("seamless-run", "--qsubmit", "cat gate.txt > g.txt", check=0, timeout=HANG_S)
        finisher = cli.start("seamless-queue-finish", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + HANG_S
            while _status_of(cli)["accepting"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            late = cli.run("seamless-run", "--qsubmit", "echo late > late.txt", timeout=HANG_S)
            assert late.returncode == 1 and b"server is finishing" in late.stderr
            assert not (cli.work / "late.txt.FUTURE").exists()
            (cli.work / "gate.txt").write_text("g\n")
            gate.remove()
            out, err = finisher.communicate(timeout=HANG_S)
        finally:
            if finisher.poll() is None:
                finisher.kill()
                finisher.wait()
        assert finisher.returncode == 0 and out == b"1 job: 1 done, 0 failed\n", err
        assert server.proc.wait(timeout=HANG_S) == 0
    finally:
        gate.remove()


@pytest.mark.parametrize("signum, says", [
    (signal.SIGTERM, b"server stopped by SIGTERM"),
    (signal.SIGKILL, b"closed the connection before answering"),
])
def test_finish_when_the_server_is_stopped_before_answering(cli, queue, signum, says):
    from seamless.shell import future

    gate = future.Sidecar.create(str(cli.work / "gate.txt"))
    try:
        server = queue()
        cli.run("seamless-run", "--qsubmit", "cat gate.txt > g.txt", check=0, timeout=HANG_S)
        finisher = cli.start("seamless-queue-finish", stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + HANG_S
            while _status_of(cli)["accepting"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            server.proc.send_signal(signum)
            out, err = finisher.communicate(timeout=HANG_S)
        finally:
            if finisher.poll() is None:
                finisher.kill()
                finisher.wait()
        server.proc.wait(timeout=HANG_S)
    finally:
        gate.remove()
    assert finisher.returncode == 255, err
    assert says in err
    assert b"1 job(s) not accounted for" in err and b"job 1 waiting: cat gate.txt > g.txt" in err
    if signum == signal.SIGKILL:
        # Nobody removed g.txt.FUTURE: it names a dead pid, so it is stale; the user deletes
        # it as the stale message says. A new server replaces the dead one's socket and files.
        os.unlink(cli.work / "g.txt.FUTURE")
        assert queue().finish().stdout == b"0 jobs: 0 done, 0 failed\n"
    assert _sidecars(cli.work) == []
