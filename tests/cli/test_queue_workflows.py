"""Queue workflows as a user writes them: bash scripts that start ``seamless-queue &``, submit
with ``seamless-run --qsubmit`` and end with ``seamless-queue-finish`` (docs/cli.md, "Queue").

Each script runs with ``set -eu`` in a session of its own. Whatever the script leaves running
(a server after a failed line, its jobs) is stopped by the test: SIGTERM to every process of the
session, a wait, then SIGKILL. The examples of docs/cli.md's queue section are run from the page
itself, so the documentation shows what these tests check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import run_in_session

SCRIPT_TIMEOUT_S = 600
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
PROLOGUE = """set -eu
trap 'echo "script: line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR
"""
DATA = """mkdir -p data
printf '1\\n2\\n' > data/a.txt
printf 'x\\ny\\n' > data/b.txt
printf '3\\n4\\n' > data/c.txt
printf '5\\n6\\n' > data/d.txt
printf '7\\n8\\n' > data/e.txt
printf 'p\\nq\\n' > data/f.txt
"""


def run_bash(cli, text: str, timeout=SCRIPT_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``text`` with bash in ``cli.work`` with the console scripts first on PATH; fails the
    test if the script leaves a process behind (after stopping it)."""
    env = dict(cli.env)
    env["PATH"] = os.path.dirname(cli.argv("seamless-run")[0]) + os.pathsep + env["PATH"]
    proc, out, err, left = run_in_session(["bash", "-c", PROLOGUE + text], timeout,
                                          cwd=cli.work, env=env)
    assert not left, f"the script left processes running: {left}\n{err.decode()}"
    run_dir = cli.tmp / f"seamless-{os.getuid()}"
    assert not (run_dir.exists() and list(run_dir.iterdir())), list(run_dir.iterdir())
    assert not list(cli.work.rglob("*.FUTURE")), "sidecars were left behind"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


SEED_QUEUE = """
seamless-queue --workers 8 &
server=$!
seamless-run --qsubmit paste data/a.txt data/b.txt 2> queued.log
seamless-run --qsubmit paste data/c.txt data/d.txt 2>> queued.log
seamless-run --qsubmit paste data/e.txt data/f.txt 2>> queued.log
seamless-queue-finish > report.txt
wait "$server"
seamless-run -v paste data/c.txt data/d.txt > cd.txt 2> hit.log
"""


def test_the_seed_queue_of_three_paste_jobs(cli):
    _ok(run_bash(cli, DATA + SEED_QUEUE))
    work = cli.work
    assert (work / "queued.log").read_text().splitlines() == [
        f"seamless-run: queued job {i}" for i in (1, 2, 3)]
    assert (work / "report.txt").read_text() == "3 jobs: 3 done, 0 failed\n"
    assert (work / "cd.txt").read_text() == "3\t5\n4\t6\n"
    assert "cache hit" in (work / "hit.log").read_text()


SLOW = """cat > slow.sh <<'EOF'
sleep 1
sort -r "$1"
EOF
"""
CHAIN = """
seamless-queue --workers 2 &
server=$!
seamless-run --qsubmit 'bash slow.sh data/a.txt > stage1.txt'
seamless-run --qsubmit 'sort stage1.txt > stage2.txt'
seamless-run --qsubmit tac stage2.txt > stage3.txt
rc=0; seamless-queue-finish > report.txt || rc=$?
wait "$server"
exit "$rc"
"""


def test_a_three_step_chain(cli):
    _ok(run_bash(cli, DATA + SLOW + CHAIN))
    assert (cli.work / "stage1.txt").read_text() == "2\n1\n"
    assert (cli.work / "stage2.txt").read_text() == "1\n2\n"
    assert (cli.work / "stage3.txt").read_text() == "2\n1\n"
    assert (cli.work / "report.txt").read_text() == "3 jobs: 3 done, 0 failed\n"


def test_a_chain_whose_first_step_fails(cli):
    # sleep 3: still running when its dependents are submitted, even on a loaded machine
    failing = SLOW.replace("sleep 1", "sleep 3").replace(
        'sort -r "$1"', 'echo "slow.sh: no luck with $1" >&2\nexit 1')
    proc = run_bash(cli, DATA + failing + CHAIN)
    assert proc.returncode == 3, proc.stderr
    report = (cli.work / "report.txt").read_text()
    assert "job 1 failed (exit 1): bash slow.sh data/a.txt > stage1.txt\n" in report
    assert "    slow.sh: no luck with data/a.txt\n" in report
    assert "job 2 failed (not run): sort stage1.txt > stage2.txt\n" in report
    assert re.search(r"input stage1.txt was not produced: job 1 \(`bash slow.sh "
                     r"data/a.txt > stage1.txt`\) failed \(exit 1\)", report), report
    assert "job 3 failed (not run): tac stage2.txt\n" in report
    assert "input stage2.txt was not produced: job 2" in report
    assert report.endswith("3 jobs: 0 done, 3 failed\n")
    assert not (cli.work / "stage1.txt").exists() and not (cli.work / "stage2.txt").exists()
    assert (cli.work / "stage3.txt").read_text() == ""  # created by the shell, never written


def test_a_failing_job_in_the_middle_of_a_chain(cli):
    # The chain waits for gate.txt, whose sidecar the script holds, until all four jobs are
    # submitted: a producer that already failed when its dependent is submitted is no longer
    # pending, and the dependent would run (docs/cli.md).
    script = DATA + """
printf '{"pid": %d, "host": "%s", "started": 1.0, "transformation": null, "job": null}\\n' \\
    $$ "$(uname -n)" > gate.txt.FUTURE
seamless-queue --workers 2 &
server=$!
seamless-run --qsubmit 'cat gate.txt data/a.txt | sort > one.txt'
seamless-run --qsubmit 'cat one.txt; echo "two: disk on fire" >&2; exit 3' > two.txt
seamless-run --qsubmit 'wc -l two.txt > three.txt'
seamless-run --qsubmit 'paste data/a.txt data/b.txt > side.txt'
echo 0 > gate.txt
rm gate.txt.FUTURE
rc=0; seamless-queue-finish > report.txt || rc=$?
wait "$server"
exit "$rc"
"""
    proc = run_bash(cli, script)
    assert proc.returncode == 2, proc.stderr
    report = (cli.work / "report.txt").read_text().splitlines()
    assert report[0].startswith("job 2 failed (exit 3): cat one.txt;")
    assert report[1] == "    two: disk on fire"
    assert report[2] == "job 3 failed (not run): wc -l two.txt > three.txt"
    assert "input two.txt was not produced: job 2" in report[3]
    assert report[-1] == "4 jobs: 2 done, 2 failed"
    assert (cli.work / "one.txt").read_text() == "0\n1\n2\n"
    assert (cli.work / "side.txt").read_text() == "1\tx\n2\ty\n"
    assert not (cli.work / "three.txt").exists()


def test_status_while_jobs_wait_and_run(cli):
    script = DATA + """
seamless-queue --workers 1 &
server=$!
seamless-run --qsubmit 'sleep 2; sort data/a.txt > sorted.txt'
seamless-run --qsubmit 'wc -l sorted.txt > count.txt'
seamless-run --qsubmit paste data/a.txt data/b.txt
until seamless-queue-finish --status | grep -q ' running '; do sleep 0.1; done
seamless-queue-finish --status > status.txt
seamless-queue-finish --status --json > status.json
seamless-queue-finish > report.txt
wait "$server"
rc=0; seamless-queue-finish --status > after.txt 2>&1 || rc=$?
test "$rc" = 255
"""
    _ok(run_bash(cli, script))
    rows = [line.split(None, 4) for line in (cli.work / "status.txt").read_text().splitlines()]
    assert rows[0] == ["ID", "STATE", "EXIT", "SECONDS", "COMMAND"]
    assert [r[:3] for r in rows[1:]] == [["1", "running", "-"], ["2", "waiting", "-"],
                                         ["3", "queued", "-"]]
    assert rows[1][4] == "sleep 2; sort data/a.txt > sorted.txt"
    status = json.loads((cli.work / "status.json").read_text())
    assert status["accepting"] is True and status["workers"] == 1
    assert [(j["job"], j["state"]) for j in status["jobs"]] == [
        (1, "running"), (2, "waiting"), (3, "queued")]
    assert set(status["jobs"][0]) >= {"job", "state", "exit", "signal", "seconds", "command"}
    assert (cli.work / "report.txt").read_text() == "3 jobs: 3 done, 0 failed\n"
    assert (cli.work / "count.txt").read_text() == "2 sorted.txt\n"
    assert "no seamless-queue server for" in (cli.work / "after.txt").read_text()


SUBMIT_MANY = """
import sys
from seamless.queue.client import submit_job
from seamless.shell.job import ShellJob

for i in range(int(sys.argv[1])):
    submit_job(ShellJob('s=$EPOCHREALTIME; sleep 0.02; '
                        'echo "[%d, $s, $EPOCHREALTIME]" >> "$LOG"' % i))
"""


@pytest.mark.slow
def test_a_thousand_jobs_never_run_more_than_two_at_once(cli):
    from overlap import max_overlap

    log = cli.tmp.parent / "intervals.log"
    cli.env["LOG"] = str(log)
    (cli.tmp.parent / "submit_many.py").write_text(SUBMIT_MANY)
    script = f"""
seamless-queue --workers 2 &
server=$!
"$PYTHON" '{cli.tmp.parent / "submit_many.py"}' 1000
seamless-queue-finish > report.txt
wait "$server"
"""
    cli.env["PYTHON"] = sys.executable
    _ok(run_bash(cli, script))
    assert (cli.work / "report.txt").read_text() == "1000 jobs: 1000 done, 0 failed\n"
    lines = log.read_text().splitlines()
    assert sorted(json.loads(line)[0] for line in lines) == list(range(1000))
    peak = max_overlap(log)
    assert peak <= 2, f"{peak} jobs ran at once with --workers 2"


def _queue_section() -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("\n## Queue: ")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def test_the_documented_queue_examples(cli):
    """docs/cli.md's queue section, run as one script (the files it expects from earlier
    examples of the page are created first)."""
    blocks = re.findall(r"^```bash[ \t]*\n(.*?)^```", _queue_section(), re.S | re.M)
    assert len(blocks) >= 3
    _ok(run_bash(cli, DATA + "\n".join(blocks)))


def test_a_script_with_its_output_in_a_log_keeps_the_log(cli):
    """`bash pipeline.sh > log.txt`: every command inherits the log as stdout. It is the
    script's log, not a result: --qsubmit jobs and plain runs neither replace it nor give it a
    sidecar, while a redirect of one command (also through `timeout`) is still its target."""
    (cli.work / "pipeline.sh").write_text(DATA + """
seamless-queue --workers 2 2>server.log &
echo "log starts"
seamless-run --qsubmit paste data/a.txt data/b.txt
seamless-run --qsubmit 'cat data/c.txt > c.txt'
seamless-run --qsubmit tac data/d.txt > d.txt
timeout 60 seamless-run tac data/e.txt > e.txt
seamless-run echo plain
seamless-queue-finish
echo "log ends"
wait
""")
    run_bash(cli, "bash pipeline.sh > log.txt 2>&1")
    log = (cli.work / "log.txt").read_text()
    assert log.startswith("log starts\n") and log.endswith("log ends\n"), log
    assert "plain\n" in log and "queued job 3" in log, log
    assert "1\tx\n" not in log  # the first job's stdout went to the cache, not the log
    assert (cli.work / "c.txt").read_text() == "3\n4\n"
    assert (cli.work / "d.txt").read_text() == "6\n5\n"
    assert (cli.work / "e.txt").read_text() == "8\n7\n"
    hit = cli.run("seamless-run", "paste", "data/a.txt", "data/b.txt", check=0)
    assert hit.stdout == b"1\tx\n2\ty\n"


def test_a_python_program_s_own_stdout_is_not_a_target(cli):
    """A Python driver whose stdout is a file runs plain and queued seamless-run children that
    inherit it: the file stays the driver's (no sidecar, not replaced); a file the driver
    opens for one child is that child's target."""
    (cli.work / "driver.py").write_text(
        "import subprocess, sys\n"
        "print('driver starts', flush=True)\n"
        "subprocess.run(['seamless-run', '--qsubmit', 'echo queued'], check=True)\n"
        "subprocess.run(['seamless-run', 'echo plain'], check=True)\n"
        "with open('own.txt', 'wb') as f:\n"
        "    subprocess.run(['seamless-run', '--qsubmit', 'echo own'], stdout=f, check=True)\n"
        "print('driver ends', flush=True)\n")
    run_bash(cli, "seamless-queue --workers 1 2>server.log &\n"
                  f"{sys.executable} driver.py > log.txt\n"
                  "seamless-queue-finish\nwait\n")
    assert (cli.work / "log.txt").read_text() == "driver starts\nplain\ndriver ends\n"
    assert (cli.work / "own.txt").read_text() == "own\n"
