"""The queue server's fork server (``seamless.queue.zygote``): one process forks every job's
runner, a job whose start it cannot answer fails with the reason, and a fork server that dies is
replaced at the next job while the runners it already forked run on. Every server a test starts
is finished by it (or SIGTERMed by the ``servers`` fixture); no fork server outlives its server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from leaks import live_processes

from seamless.queue import location, wire
from seamless.shell import future

ZYGOTE = "seamless.queue.zygote"
SERVING = re.compile(r"seamless-queue: serving .+ on (.+), \d+ workers?$", re.M)


class Server:
    """One ``seamless-queue`` process, its stderr in a file; ``stop`` SIGTERMs what is left."""

    def __init__(self, cli, workers: int):
        self.cli = cli
        self.log_path = cli.tmp / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = cli.start("seamless-queue", "--workers", str(workers),
                              stdout=subprocess.DEVNULL, stderr=self._log)
        try:
            _wait_until(lambda: SERVING.search(self.log()) or self.proc.poll() is not None, 30,
                        "the server serving")
            assert self.proc.poll() is None, self.log()
        except BaseException:
            self.stop()  # the fixture never saw this server
            raise
        self.socket = SERVING.search(self.log()).group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, message: dict) -> dict:
        sock = location.connect(self.socket, 10)
        with sock:
            hello = wire.receive(sock, 10)
            if message["type"] == "submit":
                for target in message["outputs"]:
                    future.Sidecar.create(target, pid=hello["pid"], host=hello["host"])
                message["futures"] = [future.sidecar_path(t) for t in message["outputs"]]
            wire.send(sock, message)
            return wire.receive(sock, 60)

    def submit(self, command: str, outputs=(), cwd=None) -> dict:
        """Submit as ``seamless-run --qsubmit`` would: sidecars first (owner: this server)."""
        cwd = cwd or self.cli.work
        return self.request({
            "type": "submit", "command": command, "cwd": str(cwd), "env": self.cli.env,
            "inputs": [], "outputs": [os.path.join(cwd, o) for o in outputs],
            "stdout_path": None, "vars": {}, "sandbox": True, "cache": True,
            "transformation": None, "captures": [], "explicit_inputs": []})

    def finish(self) -> dict:
        answer = self.request({"type": "finish"})
        assert self.proc.wait(60) == 0, self.log()
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def servers(cli):
    started = []

    def start(workers: int) -> Server:
        started.append(Server(cli, workers))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _zygotes(server_pid: int) -> list:
    """The server's fork servers: its children that lead a session of their own (the runners
    it forked are in that session, in groups of their own)."""
    found = []
    for pid in live_processes(1, server_pid):
        try:
            leader = os.getsid(pid) == pid
        except ProcessLookupError:
            continue
        if leader and ZYGOTE in _cmdline(pid):
            found.append(pid)
    return found


def _states(server) -> dict:
    return {j["job"]: j["state"] for j in server.request({"type": "status"})["jobs"]}


def _ended(server, n: int) -> bool:
    states = _states(server)
    return len(states) >= n and all(s in ("done", "cached", "failed") for s in states.values())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_one_fork_server_starts_every_job(cli, servers):
    server = servers(2)
    for i in range(6):
        command = f"echo $PPID $(tr '\\0' ' ' < /proc/$PPID/cmdline) > out_{i}.txt"
        assert server.submit(command, outputs=[f"out_{i}.txt"])["type"] == "accepted"
    _wait_until(lambda: _ended(server, 6), 60, "six jobs ended")
    assert set(_states(server).values()) == {"done"}
    zygotes = _zygotes(server.proc.pid)
    assert len(zygotes) == 1, zygotes
    runners = set()
    for i in range(6):
        runner, cmdline = (cli.work / f"out_{i}.txt").read_text().split(" ", 1)
        # A runner is a fork of the fork server: its command line is the fork server's.
        assert ZYGOTE in cmdline, cmdline
        runners.add(int(runner))
    assert len(runners) == 6 and zygotes[0] not in runners
    assert server.submit("echo 6 > out_6.txt", outputs=["out_6.txt"])["type"] \
        == "accepted"
    _wait_until(lambda: _ended(server, 7), 60, "the seventh job ended")
    assert _zygotes(server.proc.pid) == zygotes  # the same process, reused
    answer = server.finish()
    assert answer["failed"] == []
    assert _gone(zygotes[0])


def test_a_killed_fork_server_is_replaced_and_its_runners_run_on(cli, servers):
    server = servers(1)
    assert server.submit("sleep 2; echo a > a.txt", outputs=["a.txt"])["type"] \
        == "accepted"
    # A runner becomes the server's child after its start was announced (seamless.queue.zygote).
    _wait_until(lambda: len(live_processes(1, server.proc.pid)) >= 2, 30, "the first job running")
    (first,) = _zygotes(server.proc.pid)
    os.kill(first, signal.SIGKILL)
    _wait_until(lambda: "the job fork server" in server.log(), 30, "the death logged")
    assert server.submit("echo b > b.txt", outputs=["b.txt"])["type"] == "accepted"
    _wait_until(lambda: _ended(server, 2), 60, "both jobs ended")
    assert _states(server) == {1: "done", 2: "done"}
    assert (cli.work / "a.txt").read_text() == "a\n"
    assert (cli.work / "b.txt").read_text() == "b\n"
    (second,) = _zygotes(server.proc.pid)
    assert second != first
    assert (f"the job fork server (pid {first}) ended (killed by SIGKILL); a new one starts "
            "with the next job") in server.log()
    assert server.finish()["failed"] == []
    assert _gone(second)


def test_a_start_the_fork_server_cannot_answer_fails_the_job(cli, servers):
    server = servers(1)
    assert server.submit("echo a > a.txt", outputs=["a.txt"])["type"] == "accepted"
    _wait_until(lambda: _ended(server, 1), 30, "the first job ended")
    (zygote,) = _zygotes(server.proc.pid)
    os.kill(zygote, signal.SIGSTOP)  # the next request waits, unanswered
    try:
        assert server.submit("echo b > b.txt", outputs=["b.txt"])["type"] \
            == "accepted"
        _wait_until(lambda: _states(server)[2] == "running", 30, "the second job starting")
    finally:
        os.kill(zygote, signal.SIGKILL)
    _wait_until(lambda: _ended(server, 2), 30, "the second job failed")
    assert server.submit("echo c > c.txt", outputs=["c.txt"])["type"] == "accepted"
    _wait_until(lambda: _ended(server, 3), 60, "the third job ended")
    answer = server.finish()
    assert [j["state"] for j in answer["jobs"]] == ["done", "failed", "done"]
    assert answer["failed"] == [{
        "job": 2, "command": "echo b > b.txt", "exit": None, "signal": None,
        "stderr_tail": f"cannot start: the job fork server (pid {zygote}) ended (killed by "
                       "SIGKILL)"}]
    assert not (cli.work / "b.txt").exists() and not (cli.work / "b.txt.FUTURE").exists()
    assert (cli.work / "c.txt").read_text() == "c\n"


def test_a_job_whose_directory_is_gone_fails_without_running(cli, servers):
    server = servers(1)
    gone = cli.work / "gone"
    assert server.submit("echo x", cwd=gone) == {"type": "accepted", "job": 1}
    answer = server.finish()
    assert answer["failed"] == [{
        "job": 1, "command": "echo x", "exit": None, "signal": None,
        "stderr_tail": f"cannot start: its working directory {gone} is gone"}]
