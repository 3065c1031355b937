"""``.FUTURE`` sidecars (docs/cli.md, ".FUTURE sidecars"): records, ownership, heartbeat,
staleness, waiting.

Files are aged with ``os.utime``; waits are on conditions with generous timeouts, never on
elapsed time. Every process and thread a test starts is reaped or joined by that test.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import pytest
from leaks import fd_links, no_new_descriptors

from seamless.shell.future import (
    HEARTBEAT_S,
    POLL_S,
    STALE_AFTER_S,
    Heartbeat,
    Sidecar,
    StaleFuture,
    check,
    sidecar_path,
    wait_for,
)

HOST = socket.gethostname()
OLD = 1_000_000_000.0  # an mtime in 2001: stale for any stale_after used here
TIMEOUT = 60.0  # generous bound on waits for another thread


def mtime(path) -> float:
    return os.stat(path).st_mtime


def age(path) -> None:
    os.utime(path, (OLD, OLD))


def await_condition(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stale_text(target: str, why: str) -> str:
    return (f"{target}.FUTURE is stale ({why}); check that {target} is complete and delete "
            f"{target}.FUTURE, or rerun the job that produces {target}")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """Run in a fresh directory, so targets are relative as the user writes them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_constants_are_cli_md_values():
    assert (HEARTBEAT_S, STALE_AFTER_S, POLL_S) == (10.0, 30.0, 0.5)


def test_sidecar_path_appends_the_suffix():
    assert sidecar_path("out.txt") == "out.txt.FUTURE"
    assert sidecar_path("sub/out.txt") == "sub/out.txt.FUTURE"
    assert sidecar_path(b"out.txt") == "out.txt.FUTURE"


def test_sidecar_of_a_directory_target_lies_beside_it():
    assert sidecar_path("results/") == "results.FUTURE"
    assert sidecar_path("a/results//") == "a/results.FUTURE"


# --- create -------------------------------------------------------------------------------------


def test_create_writes_one_json_line_with_the_keys(work):
    sidecar = Sidecar.create("out.txt")
    assert sidecar.path == "out.txt.FUTURE"
    data = (work / "out.txt.FUTURE").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    record = json.loads(data)
    assert list(record) == ["pid", "host", "started", "transformation", "job"]
    assert record["pid"] == os.getpid()
    assert record["host"] == HOST
    assert isinstance(record["started"], float)
    assert record["transformation"] is None and record["job"] is None
    assert record == sidecar.record
    assert sorted(os.listdir(work)) == ["out.txt.FUTURE"]  # no temporary file left


def test_create_records_the_owner_it_is_given(work):
    sidecar = Sidecar.create("out.txt", pid=4711, host="node1", transformation="ab" * 32, job=12)
    record = json.loads((work / "out.txt.FUTURE").read_text())
    assert record == {"pid": 4711, "host": "node1", "started": sidecar.record["started"],
                      "transformation": "ab" * 32, "job": 12}


def test_create_in_a_missing_directory_raises_oserror(work):
    with pytest.raises(FileNotFoundError):
        Sidecar.create("nowhere/out.txt")
    assert os.listdir(work) == []


def _can_unshare() -> bool:
    import subprocess

    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not (os.geteuid() == 0 and _can_unshare()),
                    reason="needs root and `unshare -m` for a read-only bind mount (root "
                           "ignores permission bits)")
def test_create_in_a_read_only_directory_raises_oserror(work):
    import subprocess
    import sys

    locked = work / "locked"
    locked.mkdir()
    probe = ("import errno, os\n"
             "from seamless.shell.future import Sidecar\n"
             "try:\n"
             "    Sidecar.create('locked/out.txt')\n"
             "except OSError as e:\n"
             "    print(errno.errorcode[e.errno], os.listdir('locked'))\n")
    script = f"mount --bind -o ro {locked} {locked} && exec {sys.executable} -c \"$0\""
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, probe], cwd=work,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "EROFS []\n", out.stderr
    assert os.listdir(locked) == []


def test_a_failed_rename_leaves_no_temporary_file(work):
    (work / "out.txt.FUTURE").mkdir()
    (work / "out.txt.FUTURE" / "keep").write_text("x")
    with pytest.raises(OSError):
        Sidecar.create("out.txt")
    assert sorted(os.listdir(work)) == ["out.txt.FUTURE"]


# --- ownership ----------------------------------------------------------------------------------


def test_the_last_writer_owns_the_sidecar(work):
    first = Sidecar.create("out.txt")
    second = Sidecar.create("out.txt")  # same pid and host: `started` tells them apart
    assert first.record["started"] != second.record["started"]
    first.remove()
    assert json.loads((work / "out.txt.FUTURE").read_text()) == second.record
    second.remove()
    assert os.listdir(work) == []


def test_a_stale_sidecar_is_taken_over(work):
    Sidecar.create("out.txt", pid=dead_pid())
    with pytest.raises(StaleFuture):
        check("out.txt")
    mine = Sidecar.create("out.txt")
    assert check("out.txt") == mine.record


def test_remove_is_idempotent_and_accepts_a_missing_file(work):
    sidecar = Sidecar.create("out.txt")
    sidecar.remove()
    sidecar.remove()
    assert os.listdir(work) == []
    deleted = Sidecar.create("out.txt")
    os.unlink("out.txt.FUTURE")  # a user cleaned up by hand
    deleted.remove()
    assert os.listdir(work) == []


def test_remove_after_a_takeover_keeps_the_next_owners_sidecar_for_good(work):
    first = Sidecar.create("out.txt")
    second = Sidecar.create("out.txt")
    first.remove()
    second.remove()
    third = Sidecar.create("out.txt", pid=first.record["pid"], host=first.record["host"])
    first.remove()  # already given up: must not delete a later sidecar
    assert check("out.txt") == third.record
    third.remove()


def test_touch_refreshes_the_mtime_of_our_sidecar(work):
    sidecar = Sidecar.create("out.txt")
    age(sidecar.path)
    sidecar.touch()
    assert mtime(sidecar.path) > OLD


def test_touch_leaves_a_taken_over_or_removed_sidecar_alone(work):
    first = Sidecar.create("out.txt")
    second = Sidecar.create("out.txt")
    age(second.path)
    first.touch()
    assert mtime(second.path) == OLD
    second.remove()
    second.touch()  # no file: nothing to do
    assert os.listdir(work) == []


def test_set_transformation_rewrites_our_record(work):
    sidecar = Sidecar.create("out.txt", job=3)
    sidecar.set_transformation("cd" * 32)
    record = json.loads((work / "out.txt.FUTURE").read_text())
    assert record == dict(sidecar.record, transformation="cd" * 32)
    assert sorted(os.listdir(work)) == ["out.txt.FUTURE"]
    sidecar.remove()  # still ours after the rewrite
    assert os.listdir(work) == []


def test_set_transformation_leaves_a_taken_over_sidecar_alone(work):
    first = Sidecar.create("out.txt")
    second = Sidecar.create("out.txt")
    first.set_transformation("cd" * 32)
    assert json.loads((work / "out.txt.FUTURE").read_text()) == second.record
    second.remove()
    first.set_transformation("ef" * 32)  # gone: not recreated
    assert os.listdir(work) == []


def test_owner_operations_close_their_descriptors(work):
    before = fd_links()
    first = Sidecar.create("out.txt")
    second = Sidecar.create("out.txt")
    for sidecar in (first, second):
        sidecar.touch()
        sidecar.set_transformation("ab" * 32)
    check("out.txt")
    first.remove()
    second.remove()
    no_new_descriptors(before)


# --- heartbeat ----------------------------------------------------------------------------------


def heartbeat_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "seamless-future-heartbeat"]


def test_heartbeat_touches_registered_sidecars_and_stop_joins(work):
    heartbeat = Heartbeat(interval=0.05)
    sidecar = Sidecar.create("out.txt")
    age(sidecar.path)
    heartbeat.add(sidecar)
    try:
        assert heartbeat_threads()
        await_condition(lambda: mtime(sidecar.path) > OLD, "a heartbeat")
    finally:
        heartbeat.stop()
    assert heartbeat_threads() == []
    heartbeat.stop()  # idempotent
    sidecar.remove()


def test_heartbeat_thread_starts_on_the_first_add_and_again_after_stop(work):
    heartbeat = Heartbeat(interval=0.05)
    heartbeat.stop()  # never started: nothing to join
    assert heartbeat_threads() == []
    sidecar = Sidecar.create("out.txt")
    try:
        heartbeat.add(sidecar)
        heartbeat.stop()
        age(sidecar.path)
        heartbeat.add(sidecar)
        await_condition(lambda: mtime(sidecar.path) > OLD, "a heartbeat after a restart")
    finally:
        heartbeat.stop()
        sidecar.remove()
    assert heartbeat_threads() == []


def test_a_discarded_sidecar_is_no_longer_touched(work):
    heartbeat = Heartbeat(interval=0.01)
    dropped, kept = Sidecar.create("a.txt"), Sidecar.create("b.txt")

    def await_beat():
        age(kept.path)
        await_condition(lambda: mtime(kept.path) > OLD, "a heartbeat")

    try:
        heartbeat.add(dropped)
        heartbeat.add(kept)
        heartbeat.discard(dropped)
        # Two beats of `kept`: the second is in a later round than the first, whose own touch
        # of `kept` came after the discard; no round that still listed `dropped` runs now.
        await_beat()
        await_beat()
        age(dropped.path)
        await_beat()
        assert mtime(dropped.path) == OLD
    finally:
        heartbeat.stop()
        dropped.remove()
        kept.remove()


def test_heartbeat_survives_a_vanished_sidecar(work):
    heartbeat = Heartbeat(interval=0.01)
    gone, kept = Sidecar.create("a.txt"), Sidecar.create("b.txt")
    os.unlink(gone.path)
    age(kept.path)
    try:
        heartbeat.add(gone)
        heartbeat.add(kept)
        await_condition(lambda: mtime(kept.path) > OLD, "a heartbeat")
    finally:
        heartbeat.stop()
        kept.remove()


def test_heartbeat_interval_must_be_positive():
    with pytest.raises(ValueError, match="heartbeat interval must be positive seconds, got 0"):
        Heartbeat(interval=0)


# --- check --------------------------------------------------------------------------------------


def test_check_without_a_sidecar_is_none(work):
    assert check("out.txt") is None
    assert check("missing-dir/out.txt") is None


def test_check_of_a_live_writer_returns_its_record(work):
    sidecar = Sidecar.create("out.txt", job=7)
    assert check("out.txt") == sidecar.record
    sidecar.remove()


def test_check_of_a_dead_writer_on_this_host_is_stale(work):
    pid = dead_pid()
    Sidecar.create("out.txt", pid=pid)
    with pytest.raises(StaleFuture) as info:
        check("out.txt")
    assert str(info.value) == stale_text("out.txt", f"writer pid {pid} on {HOST} is gone")
    assert os.path.exists("out.txt.FUTURE")  # a reader never deletes it


def test_check_of_another_hosts_writer_trusts_a_fresh_heartbeat(work):
    sidecar = Sidecar.create("sub.txt", pid=dead_pid(), host="elsewhere.example")
    assert check("sub.txt") == sidecar.record


def test_check_of_an_old_heartbeat_is_stale(work):
    Sidecar.create("out.txt", host="elsewhere.example")
    os.utime("out.txt.FUTURE", (time.time() - 95.5,) * 2)
    with pytest.raises(StaleFuture) as info:
        check("out.txt")
    seconds = int(info.value.age)
    assert seconds >= 95
    assert str(info.value) == stale_text("out.txt", f"no heartbeat for {seconds} s")


def test_stale_after_is_the_bound_on_the_heartbeats_age(work):
    Sidecar.create("out.txt", host="elsewhere.example")
    os.utime("out.txt.FUTURE", (time.time() - 20,) * 2)
    assert check("out.txt", stale_after=3600) is not None
    with pytest.raises(StaleFuture):
        check("out.txt", stale_after=5)


@pytest.mark.parametrize("content", [
    b"3fa2c1d09b7e.out.txt\n",  # upstream's <checksum>.<target>
    b"",
    b"\xff\xfe not text",
    b"[1, 2]",
    b'{"pid": 0, "host": "x"}',
    b'{"pid": -1, "host": "x"}',
    b'{"pid": true, "host": "x"}',
    b'{"pid": 99999999999, "host": "x"}',
    b'{"pid": 4711}',
    b"[" * 3000,
])
def test_unparseable_content_is_judged_by_mtime_alone(work, content):
    with open("out.txt.FUTURE", "wb") as f:
        f.write(content)
    assert check("out.txt") == {}
    age("out.txt.FUTURE")
    with pytest.raises(StaleFuture, match=r"\(no heartbeat for \d+ s\)"):
        check("out.txt")


def test_an_unreadable_sidecar_is_judged_by_mtime_alone(work):
    os.mkdir("out.txt.FUTURE")  # open() fails (EISDIR) even for root
    assert check("out.txt") == {}
    age("out.txt.FUTURE")
    with pytest.raises(StaleFuture):
        check("out.txt")


def test_a_fifo_sidecar_does_not_hang_the_reader(work):
    os.mkfifo("out.txt.FUTURE")
    assert check("out.txt") == {}


def test_stale_future_pickles():
    error = StaleFuture("out.txt", pid=4711, host="node1")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == stale_text("out.txt", "writer pid 4711 on node1 is gone")


# --- wait_for -----------------------------------------------------------------------------------


def test_wait_for_without_a_sidecar_returns_false_at_once(work):
    messages = []
    assert wait_for("out.txt", on_wait=messages.append) is False
    assert messages == []


def test_wait_for_returns_when_the_writer_removes_its_sidecar(work):
    sidecar = Sidecar.create("out.txt", pid=4711, host="node1")
    announced = threading.Event()
    messages = []

    def on_wait(message):
        messages.append(message)
        announced.set()

    def writer():
        announced.wait(TIMEOUT)
        sidecar.remove()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wait_for("out.txt", on_wait=on_wait, poll=0.01) is True
    finally:
        announced.set()
        thread.join()
    assert messages == ["waiting for out.txt (out.txt.FUTURE, pid 4711 on node1)"]


def test_wait_for_an_unparseable_sidecar_names_no_writer(work):
    with open("out.txt.FUTURE", "w") as f:
        f.write("not json")
    messages = []

    def on_wait(message):
        messages.append(message)
        os.unlink("out.txt.FUTURE")

    assert wait_for("out.txt", on_wait=on_wait, poll=0.01) is True
    assert messages == ["waiting for out.txt (out.txt.FUTURE)"]


def test_wait_for_raises_when_the_writer_dies_while_waiting(work):
    writer = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        Sidecar.create("out.txt", pid=writer.pid)
        messages = []

        def on_wait(message):
            messages.append(message)
            writer.stdin.close()  # cat ends at end of input
            writer.wait()

        with pytest.raises(StaleFuture) as info:
            wait_for("out.txt", on_wait=on_wait, poll=0.01)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.stdin.close()
        writer.wait()
    assert messages == [f"waiting for out.txt (out.txt.FUTURE, pid {writer.pid} on {HOST})"]
    assert str(info.value) == stale_text("out.txt", f"writer pid {writer.pid} on {HOST} is gone")


def test_wait_for_a_stale_sidecar_raises_without_waiting(work):
    Sidecar.create("out.txt", pid=dead_pid())
    messages = []
    with pytest.raises(StaleFuture):
        wait_for("out.txt", on_wait=messages.append, poll=0.01)
    assert messages == []


# --- names --------------------------------------------------------------------------------------


def test_non_utf8_target_names_work(work):
    target = os.fsdecode(b"out-\xff.txt")
    sidecar = Sidecar.create(target)
    assert os.listdir(b".") == [b"out-\xff.txt.FUTURE"]
    assert check(target) == sidecar.record
    heartbeat = Heartbeat(interval=0.01)
    age(sidecar.path)
    try:
        heartbeat.add(sidecar)
        await_condition(lambda: mtime(sidecar.path) > OLD, "a heartbeat")
    finally:
        heartbeat.stop()
    messages = []

    def on_wait(message):
        messages.append(message)
        sidecar.remove()

    assert wait_for(target, on_wait=on_wait, poll=0.01) is True
    assert messages == [f"waiting for {target} ({target}.FUTURE, pid {os.getpid()} on {HOST})"]
    assert os.listdir(b".") == []
    Sidecar.create(target, pid=dead_pid())
    with pytest.raises(StaleFuture) as info:
        check(os.fsencode(target))
    assert str(info.value).startswith(f"{target}.FUTURE is stale")


def test_the_module_stays_light(tmp_path):
    """Creating a sidecar imports nothing heavy (docs/cli.md, "Start-up")."""
    probe = ("import sys\n"
             "import seamless.cli\n"
             "before = set(sys.modules)\n"
             "from seamless.shell.future import Sidecar\n"
             "Sidecar.create('out.txt').remove()\n"
             "print(' '.join(sorted(set(sys.modules) - before)))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy = {"socket", "subprocess", "tempfile", "shutil", "logging", "numpy", "yaml"}
    assert heavy.isdisjoint(out.stdout.split()), out.stdout
    assert os.listdir(tmp_path) == []


# --- the record codec: json's bytes, without importing json --------------------------------------


@pytest.mark.parametrize("record", [
    {"pid": 1, "host": "node1", "started": 1718000000.1234567, "transformation": None,
     "job": None},
    {"pid": 2**31 - 1, "host": "a b-c.example", "started": 0.5, "transformation": "ab" * 32,
     "job": 17},
    {"pid": 5, "host": 'quote"and\\back', "started": 1e300, "transformation": None, "job": True},
    {"pid": 5, "host": "caf\u00e9 \udce9 \x7f\t", "started": -0.0, "transformation": None,
     "job": [1, {"nested": None}]},
    {},
])
def test_records_are_what_json_writes_and_reads(record):
    from seamless.shell import future

    text = future._dumps(record)
    assert text == json.dumps(record)
    assert repr(future._loads(text.encode("ascii"))) == repr(record)
    for separators in ((",", ":"), (" ,  ", " : ")):
        other = json.dumps(record, separators=separators, ensure_ascii=False)
        assert repr(future._loads(other.encode("utf-8", "surrogatepass"))) == repr(
            json.loads(other.encode("utf-8", "surrogatepass")))


@pytest.mark.parametrize("data", [
    b"", b"{", b'{"a":}', b'{"a":1,}', b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b"[1",
    b"not json", b'{"a":-}', b'{"a" 1}', b'{"a":1 "b":2}', b'{"a":"x}', b"\xff", b'{"a":1e5x}',
])
def test_the_record_reader_refuses_what_json_refuses(data):
    from seamless.shell import future

    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        future._loads(data)


def test_a_record_written_by_json_with_escapes_is_read(work):
    record = {"pid": os.getpid(), "host": HOST, "started": time.time(),
              "transformation": "tf \"quoted\" \u00e9", "job": {"queue": 3}}
    with open("out.txt.FUTURE", "w") as f:
        f.write(json.dumps(record, indent=2))
    assert check("out.txt") == record


def test_sidecars_never_import_json(tmp_path):
    probe = (
        "import os, sys\n"
        "from seamless.shell import future\n"
        "s = future.Sidecar.create('out.txt', job=3)\n"
        "s.set_transformation('ab' * 32)\n"
        "assert future.check('out.txt') == s.record\n"
        "s.remove()\n"
        "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__))))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
