"""seamless.pool.supervise: a supervised child is started, watched through its pidfd, reaped,
and its end explained in words (the pool's crash messages and the queue server build on it)."""

import os
import select
import signal
import sys

import pytest

from seamless.pool.supervise import Child, describe_signal


def _run_to_end(script: str, **kwargs) -> Child:
    child = Child.start([sys.executable, "-c", script], dict(os.environ), **kwargs)
    try:
        ended = False
        while not ended:  # read stderr as it comes: a full pipe would block the child
            readable, _, _ = select.select([child.pidfd, child.stderr_fd], [], [], 30)
            assert readable, "the pidfd reports the end of the process within 30 s"
            if child.stderr_fd in readable:
                child.read_stderr(forward_fd=None)
            ended = child.pidfd in readable
        child.reap()
        while child.read_stderr(forward_fd=None):
            continue
    finally:
        if child.returncode is None:
            child.kill()
            child.reap()
        child.release()
    return child


def test_exit_code_and_stderr_tail_explain_the_end():
    child = _run_to_end("import sys; sys.stderr.write('x' * 70000 + 'last words'); "
                        "sys.exit(3)")
    assert child.returncode == 3
    assert child.tail_text().endswith("last words")
    assert len(child.stderr_tail) == 64 * 1024, "only the last 64 KiB are kept"
    code, sig, how, cause = child.explain_exit()
    assert (code, sig, how) == (3, None, "exited with code 3")
    assert "os._exit()" in cause


@pytest.mark.parametrize("signum, words", [
    (signal.SIGKILL, "out-of-memory killer"),
    (signal.SIGSEGV, "crash in compiled code"),
    (signal.SIGTERM, "a signal from outside"),
])
def test_a_signal_is_named_with_its_likely_cause(signum, words):
    child = _run_to_end(f"import os, signal; os.kill(os.getpid(), {int(signum)})")
    code, sig, how, cause = child.explain_exit(rss=3 << 30)
    assert (code, sig) == (None, signum)
    assert how == f"was killed by {describe_signal(signum)}"
    assert words in cause
    if signum == signal.SIGKILL:
        assert "3.0 GiB" in cause


def test_stop_kills_what_does_not_end_within_the_grace_period():
    child = Child.start([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    try:
        assert child.stop(0.2) == -signal.SIGKILL
    finally:
        child.release()


def test_a_new_group_child_leads_its_own_process_group():
    child = _run_to_end("import os, sys; sys.stderr.write(str(os.getpgid(0)))", new_group=True)
    assert child.tail_text() == str(child.pid)


def test_describe_signal_names_unknown_numbers_plainly():
    assert describe_signal(9) == "signal 9 (SIGKILL)"
    assert describe_signal(200) == "signal 200"
