"""`seamless-run`: identity, cache, sandbox, outputs, exit codes (docs/cli.md).

Every test runs the installed console script as a subprocess (``cli`` fixture, conftest.py) with
a private cache, HOME and TMPDIR. A command that must not run a second time appends to a log
outside the working directory through an absolute path (absolute paths are not tracked), so the
test can count executions.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys

import pytest


@pytest.fixture
def data(cli):
    (cli.work / "a.txt").write_bytes(b"1\n2\n")
    (cli.work / "b.txt").write_bytes(b"x\ny\n")
    return cli.work


def _counter(cli):
    """An absolute log path; a command appends a line to it each time it runs."""
    log = cli.tmp.parent / "runs.log"

    def runs():
        return log.read_bytes().count(b"\n") if log.exists() else 0
    return str(log), runs


def test_second_run_is_a_hit_with_the_same_bytes(cli, data):
    log, runs = _counter(cli)
    cmd = f"paste a.txt b.txt; echo ran >> {log}"
    first = cli.run("seamless-run", "-v", cmd, check=0)
    assert first.stdout == b"1\tx\n2\ty\n"
    assert b"seamless-run: cache miss " in first.stderr
    second = cli.run("seamless-run", "-v", cmd, check=0)
    assert second.stdout == first.stdout
    assert b"seamless-run: cache hit " in second.stderr
    assert runs() == 1


def test_a_hit_prints_nothing_on_stderr(cli, data):
    cli.run("seamless-run", "paste", "a.txt", "b.txt", check=0)
    hit = cli.run("seamless-run", "paste", "a.txt", "b.txt", check=0)
    assert hit.stderr == b""
    assert hit.stdout == b"1\tx\n2\ty\n"


def test_words_and_one_string_have_one_identity(cli, data):
    words = cli.run("seamless-run", "-v", "paste", "a.txt", "b.txt", check=0)
    string = cli.run("seamless-run", "-v", "paste a.txt b.txt", check=0)
    assert b"cache hit" in string.stderr
    assert words.stderr.split(b"miss ")[1][:64] == string.stderr.split(b"hit ")[1][:64]


def test_input_content_changes_the_identity(cli, data):
    cli.run("seamless-run", "cat", "a.txt", check=0)
    (data / "a.txt").write_bytes(b"changed\n")
    again = cli.run("seamless-run", "-v", "cat", "a.txt", check=0)
    assert again.stdout == b"changed\n"
    assert b"cache miss" in again.stderr


def test_executable_bit_of_an_input_counts(cli, data):
    script = data / "tool.sh"
    script.write_bytes(b"echo tool\n")
    cli.run("seamless-run", "bash", "tool.sh", check=0)
    script.chmod(0o755)
    assert b"cache miss" in cli.run("seamless-run", "-v", "bash", "tool.sh", check=0).stderr


def test_stdout_is_byte_exact(cli, data):
    payload = bytes(range(256)) + b"\n\n\n"
    (data / "bin").write_bytes(payload)
    assert cli.run("seamless-run", "cat", "bin", check=0).stdout == payload
    assert cli.run("seamless-run", "cat", "bin", check=0).stdout == payload


def test_pipes_and_redirection_write_the_output(cli, data):
    (data / "w.txt").write_bytes(b"b\na\nb\n")
    cmd = "sort w.txt | uniq -c > counts.txt"
    first = cli.run("seamless-run", cmd, check=0)
    assert first.stdout == b""
    expected = subprocess.run(["bash", "-c", "sort w.txt | uniq -c"], cwd=data,
                              capture_output=True).stdout
    assert (data / "counts.txt").read_bytes() == expected
    (data / "counts.txt").unlink()
    hit = cli.run("seamless-run", "-v", cmd, check=0)
    assert b"cache hit" in hit.stderr
    assert (data / "counts.txt").read_bytes() == expected


def test_a_hit_leaves_an_identical_output_untouched(cli, data):
    cli.run("seamless-run", "cat a.txt > copy.txt", check=0)
    before = os.stat(data / "copy.txt")
    cli.run("seamless-run", "cat a.txt > copy.txt", check=0)
    after = os.stat(data / "copy.txt")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_capture_of_a_file_and_a_directory(cli, data):
    cmd = "mkdir -p out/sub && cp a.txt out/sub/x && echo hi > report.txt && echo done"
    first = cli.run("seamless-run", "-c", "out", "-c", "report.txt", cmd, check=0)
    assert first.stdout == b"done\n"
    assert (data / "out" / "sub" / "x").read_bytes() == b"1\n2\n"
    assert (data / "report.txt").read_bytes() == b"hi\n"
    (data / "report.txt").unlink()
    (data / "out" / "sub" / "x").write_bytes(b"stale")
    hit = cli.run("seamless-run", "-v", "-c", "out", "-c", "report.txt", cmd, check=0)
    assert b"cache hit" in hit.stderr
    assert (data / "out" / "sub" / "x").read_bytes() == b"1\n2\n"
    assert (data / "report.txt").read_bytes() == b"hi\n"
    assert sorted(os.listdir(data)) == ["a.txt", "b.txt", "out", "report.txt"]


def test_an_output_the_command_did_not_create(cli, data):
    log, runs = _counter(cli)
    proc = cli.run("seamless-run", "-c", "never.txt", f"echo ran >> {log}", check=1)
    assert b"the command exited 0 but did not create never.txt" in proc.stderr
    cli.run("seamless-run", "-c", "never.txt", f"echo ran >> {log}", check=1)
    assert runs() == 2  # not cached


def test_the_sandbox_hides_undeclared_files(cli, data):
    (data / "hidden.txt").write_bytes(b"secret\n")
    cmd = ["bash", "-c", "cat hidden.txt"]
    sandboxed = cli.run("seamless-run", *cmd)
    assert sandboxed.returncode == 1
    assert b"hidden.txt" in sandboxed.stderr
    declared = cli.run("seamless-run", "-i", "hidden.txt", *cmd, check=0)
    assert declared.stdout == b"secret\n"
    open_run = cli.run("seamless-run", "--no-sandbox", *cmd, check=0)
    assert open_run.stdout == b"secret\n"


def test_the_sandbox_protects_the_originals(cli, data):
    cli.run("seamless-run", "rm a.txt && echo removed", check=0)
    assert (data / "a.txt").read_bytes() == b"1\n2\n"
    assert os.listdir(cli.tmp) == []  # the sandbox is gone


def test_no_sandbox_runs_in_place(cli, data):
    cli.run("seamless-run", "--no-sandbox", "-c", "made.txt", "pwd > made.txt", check=0)
    assert (data / "made.txt").read_bytes() == os.fsencode(str(data)) + b"\n"


def test_append_target_is_an_input_and_an_output(cli, data):
    (data / "log.txt").write_bytes(b"old\n")
    cli.run("seamless-run", "cat a.txt >> log.txt", check=0)
    assert (data / "log.txt").read_bytes() == b"old\n1\n2\n"


def test_var_counts_for_identity(cli, data):
    cmd = ["--var", "GREETING", "bash", "-c", "echo $GREETING"]
    env = dict(cli.env, GREETING="hello")
    assert cli.run("seamless-run", *cmd, env=env, check=0).stdout == b"hello\n"
    env["GREETING"] = "bye"
    assert cli.run("seamless-run", *cmd, env=env, check=0).stdout == b"bye\n"
    fixed = cli.run("seamless-run", "--var", "GREETING=set", "bash", "-c", "echo $GREETING",
                    check=0)
    assert fixed.stdout == b"set\n"


def test_var_unset_without_value_is_a_usage_error(cli, data):
    proc = cli.run("seamless-run", "--var", "SEAMLESS_TEST_UNSET", "true", check=2)
    assert b"SEAMLESS_TEST_UNSET" in proc.stderr
    assert b"--var SEAMLESS_TEST_UNSET=VALUE" in proc.stderr


def test_missing_explicit_input_exits_2_naming_it(cli, data):
    proc = cli.run("seamless-run", "-i", "nope.txt", "true", check=2)
    assert proc.stderr.startswith(b"seamless-run: error: --input nope.txt does not exist")


@pytest.mark.parametrize("argv", [[], ["--frobnicate", "true"], ["-v"]])
def test_usage_errors_exit_2(cli, argv):
    proc = cli.run("seamless-run", *argv, check=2)
    assert b"seamless-run: error:" in proc.stderr


def test_climbing_out_is_refused_in_the_sandbox(cli, data):
    (cli.work.parent / "outside.txt").write_bytes(b"o")
    proc = cli.run("seamless-run", "cat", "../outside.txt", check=2)
    assert b"../outside.txt" in proc.stderr
    assert b"run from a common parent directory, or use --no-sandbox" in proc.stderr
    ok = cli.run("seamless-run", "--no-sandbox", "cat", "../outside.txt", check=0)
    assert ok.stdout == b"o"


def test_command_not_found_exits_127_with_bash_message(cli, data):
    proc = cli.run("seamless-run", "no-such-command-xyz", check=127)
    assert b"no-such-command-xyz: command not found" in proc.stderr


def test_failure_status_is_propagated_and_not_cached(cli, data):
    log, runs = _counter(cli)
    for _ in range(2):
        proc = cli.run("seamless-run", "bash", "-c", f"echo out; echo ran >> {log}; exit 3",
                       check=3)
        assert proc.stdout == b""
        assert b"its stdout (4 bytes) was discarded" in proc.stderr
    assert runs() == 2


def test_killed_by_a_signal_exits_1_naming_it(cli, data):
    proc = cli.run("seamless-run", "kill -KILL $$", check=1)
    assert b"SIGKILL" in proc.stderr
    assert b"out-of-memory killer" in proc.stderr


def test_no_cache_runs_again_and_replaces_the_entry(cli, data):
    log, runs = _counter(cli)
    cmd = f"echo ran >> {log}; date +%N"
    first = cli.run("seamless-run", cmd, check=0).stdout
    forced = cli.run("seamless-run", "--no-cache", cmd, check=0).stdout
    assert runs() == 2
    assert cli.run("seamless-run", cmd, check=0).stdout == forced != first
    assert runs() == 2


def test_large_stdout_and_stderr_do_not_deadlock(cli, data):
    n = 100_000_000
    cmd = f"head -c {n} /dev/zero | tr '\\0' a; head -c {n} /dev/zero | tr '\\0' b >&2"
    proc = cli.run("seamless-run", cmd, check=0, timeout=300)
    assert len(proc.stdout) == n and proc.stdout == b"a" * n
    assert len(proc.stderr) == n and proc.stderr == b"b" * n
    hit = cli.run("seamless-run", cmd, check=0, timeout=300)
    assert hashlib.sha256(hit.stdout).digest() == hashlib.sha256(b"a" * n).digest()
    assert hit.stderr == b""


NON_UTF8 = b"caf\xe9 \xff.txt"


def test_non_utf8_names_work_byte_exact(cli, data):
    (data / os.fsdecode(NON_UTF8)).write_bytes(b"bytes\n")
    first = cli.run("seamless-run", "-v", "cat", NON_UTF8, check=0)
    assert first.stdout == b"bytes\n"
    hit = cli.run("seamless-run", "-v", "cat", NON_UTF8, check=0)
    assert b"cache hit" in hit.stderr
    cli.run("seamless-run", "-c", NON_UTF8 + b".out", b"cp a.txt '" + NON_UTF8 + b".out'",
            check=0)
    assert (data / os.fsdecode(NON_UTF8 + b".out")).read_bytes() == b"1\n2\n"


def test_names_with_spaces_and_a_leading_dash(cli, data):
    (data / "-x y.txt").write_bytes(b"dash\n")
    proc = cli.run("seamless-run", "-v", "cat", "--", "-x y.txt", check=0)
    assert proc.stdout == b"dash\n"
    assert b"input -x y.txt: file" in proc.stderr


def test_directory_input_is_tracked_by_its_tree(cli, data):
    (data / "d").mkdir()
    (data / "d" / "f").write_bytes(b"1")
    cli.run("seamless-run", "ls -R d", check=0)
    (data / "d" / "g").write_bytes(b"2")
    proc = cli.run("seamless-run", "-v", "ls -R d", check=0)
    assert b"cache miss" in proc.stderr
    assert b"g" in proc.stdout


def test_glob_words_are_inputs(cli, data):
    proc = cli.run("seamless-run", "-v", "cat *.txt", check=0)
    assert proc.stdout == b"1\n2\nx\ny\n"
    assert b"input a.txt" in proc.stderr and b"input b.txt" in proc.stderr


def test_unusable_cache_directory_regular_file(cli, data):
    cli.cache.write_bytes(b"in the way")
    proc = cli.run("seamless-run", "echo", "hi", check=1)
    assert str(cli.cache).encode() in proc.stderr
    assert b"SEAMLESS_CACHE" in proc.stderr
    assert b"Traceback" not in proc.stderr


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not (os.geteuid() == 0 and _can_unshare()),
    reason="needs root and `unshare -m` to mount a read-only bind or a tiny tmpfs")


@needs_unshare
def test_unusable_cache_directory_read_only_mount(cli, data):
    cli.cache.mkdir()
    argv = " ".join(f"'{a}'" for a in cli.argv("seamless-run", "echo", "hi"))
    script = f"mount --bind -o ro {cli.cache} {cli.cache} && exec {argv}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cli.work, env=cli.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert str(cli.cache).encode() in proc.stderr and b"SEAMLESS_CACHE" in proc.stderr
    assert b"read-only" in proc.stderr.lower()


@needs_unshare
def test_disk_full_while_writing_a_captured_file(cli, data):
    small = cli.work / "small"
    small.mkdir()
    (small / "out.bin").write_bytes(b"old")
    argv = " ".join(f"'{a}'" for a in cli.argv(
        "seamless-run", "-c", "out.bin", "head -c 2000000 /dev/zero > out.bin"))
    script = (f"mount -t tmpfs -o size=1m tmpfs {small} && cd {small} && echo old > out.bin"
              f" && {argv}; rc=$?; cat out.bin; ls -A {small}; exit $rc")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cli.work, env=cli.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert b"could not write out.bin (No space left on device)" in proc.stderr
    assert proc.stdout == b"old\nout.bin\n"  # old content intact, no temp file


def test_corrupt_cache_buffer_is_recomputed_with_a_warning(cli, data):
    log, runs = _counter(cli)
    cmd = f"cat a.txt; echo ran >> {log}"
    cli.run("seamless-run", cmd, check=0)
    buffers = [os.path.join(d, f) for d, _, fs in os.walk(cli.cache / "buffers") for f in fs]
    assert len(buffers) == 1
    with open(buffers[0], "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"!!!")
    proc = cli.run("seamless-run", cmd, check=0)
    assert proc.stdout == b"1\n2\n"
    assert b"seamless-run: warning:" in proc.stderr and b"failed verification" in proc.stderr
    assert runs() == 2
    assert cli.run("seamless-run", cmd, check=0).stderr == b""
    assert runs() == 2


def test_concurrent_runs_writing_one_output(cli, data):
    n = 20_000_000
    cmd = f"sleep 0.2; head -c {n} /dev/zero | tr '\\0' z > big.txt"
    procs = [cli.start("seamless-run", "--no-cache", cmd, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], errors
    assert (data / "big.txt").read_bytes() == b"z" * n
    assert sorted(os.listdir(data)) == ["a.txt", "b.txt", "big.txt"]


def test_python_and_shell_results_share_one_cache(cli, data):
    script = (
        "import seamless, seamless.config\n"
        "from seamless.transformer import direct\n"
        f"seamless.config.init(cache={str(cli.cache)!r})\n"
        "@direct\n"
        "def add(a, b):\n"
        "    return a + b\n"
        "print(add(2, 3))\n"
        "seamless.close()\n"
    )
    cli.run("seamless-run", "echo", "5", check=0)
    (cli.tmp.parent / "add.py").write_text(script)
    py = subprocess.run([sys.executable, str(cli.tmp.parent / "add.py")], cwd=data, env=cli.env,
                        capture_output=True, timeout=120)
    assert py.stdout == b"5\n", py.stderr
    with sqlite3.connect(cli.cache / "seamless.db") as db:
        kinds = sorted(kind for (kind,) in db.execute("SELECT kind FROM results"))
    db.close()
    assert kinds == ["json", "tree"]
    assert b"cache hit" in cli.run("seamless-run", "-v", "echo", "5", check=0).stderr


def test_cache_directory_from_seamless_yaml(cli, data):
    env = {k: v for k, v in cli.env.items() if k != "SEAMLESS_CACHE"}
    (data / "seamless.yaml").write_text("- cache: .mycache\n")
    cli.run("seamless-run", "echo", "hi", env=env, check=0)
    assert (data / ".mycache" / "seamless.db").exists()
    assert not cli.cache.exists()


def test_default_cache_directory_follows_xdg(cli, data):
    env = {k: v for k, v in cli.env.items() if k != "SEAMLESS_CACHE"}
    env["XDG_CACHE_HOME"] = str(cli.tmp.parent / "xdg")
    cli.run("seamless-run", "echo", "hi", env=env, check=0)
    assert (cli.tmp.parent / "xdg" / "seamless" / "seamless.db").exists()
    assert oct(os.stat(cli.tmp.parent / "xdg" / "seamless").st_mode & 0o777) == "0o700"


def test_the_hit_path_stays_light(cli, data):
    """A hit loads no numpy, YAML, compiled core, API module, nor the miss path's subprocess
    and tempfile, nor json, sqlite3, threading, contextlib, enum or socket (docs/cli.md,
    "Start-up"; modules the interpreter itself loaded at start-up do not count)."""
    cli.run("seamless-run", "echo", "hi", check=0)
    probe = (
        "import sys\n"
        "at_start = set(sys.modules)\n"
        "from seamless.cli import run\n"
        "assert run.main(['echo', 'hi']) == 0\n"
        "loaded = set(sys.modules) - at_start\n"
        "heavy = sorted(m for m in loaded if m.split('.')[0] in ('numpy', 'yaml', 'json',\n"
        "               'sqlite3', 'threading', 'contextlib', 'enum', 'socket')\n"
        "               or m.startswith(('seamless._ipc', 'seamless.transformer',\n"
        "                                'seamless.config', 'subprocess', 'tempfile')))\n"
        "sys.stderr.write('HEAVY=%r\\n' % heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=data, env=cli.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == b"hi\n", proc.stderr
    assert b"HEAVY=[]" in proc.stderr


def test_version(cli):
    import seamless

    proc = cli.run("seamless-run", "--version", check=0)
    assert proc.stdout.strip() == f"seamless-run {seamless.__version__}".encode()


def test_a_reader_that_goes_away_still_leaves_a_cached_result(cli, data):
    run = cli.argv("seamless-run", "seq 1 300000")[0]
    proc = subprocess.run(["bash", "-c", f"'{run}' 'seq 1 300000' | head -1"], cwd=data,
                          env=cli.env, capture_output=True, timeout=60)
    assert proc.stdout == b"1\n"
    assert b"Traceback" not in proc.stderr
    hit = cli.run("seamless-run", "-v", "seq 1 300000", check=0)
    assert b"cache hit" in hit.stderr
    assert hit.stdout == b"".join(b"%d\n" % i for i in range(1, 300001))


def test_a_command_text_starting_with_a_dash_is_not_a_bash_option(cli, data):
    proc = cli.run("seamless-run", "--", "-no-such-tool", check=127)
    assert b"-no-such-tool: command not found" in proc.stderr


def test_a_file_inside_an_output_directory_travels_with_it(cli, data):
    proc = cli.run("seamless-run", "-c", "od", "mkdir od && echo x > od/f", check=0)
    assert proc.stderr == b""
    assert (data / "od" / "f").read_bytes() == b"x\n"
    (data / "od" / "f").unlink()
    assert b"cache hit" in cli.run("seamless-run", "-v", "-c", "od", "mkdir od && echo x > od/f",
                                   check=0).stderr
    assert (data / "od" / "f").read_bytes() == b"x\n"


def test_an_absolute_redirection_target_is_reported_as_untracked(cli, data):
    target = cli.tmp.parent / "elsewhere.txt"
    proc = cli.run("seamless-run", f"echo hi > {target} 2>/dev/null", check=0)
    assert f"{target} is written by the command but is not a result".encode() in proc.stderr
    assert b"/dev/null" not in proc.stderr
    assert cli.run("seamless-run", f"echo hi > {target} 2>/dev/null", check=0).stderr == b""


def test_a_command_killed_by_sigint_exits_130(cli, data):
    proc = cli.run("seamless-run", "echo partial; kill -INT $$", check=130)
    assert b"the command was interrupted (SIGINT); its stdout (8 bytes) was discarded" \
        in proc.stderr


def test_verbose_lists_words_not_tracked(cli, data):
    proc = cli.run("seamless-run", "-v", "echo a.txt $HOME nofile", check=0)
    line = [x for x in proc.stderr.splitlines() if b"not tracked" in x][0]
    assert line == b"seamless-run: not tracked: $HOME"


@needs_unshare
def test_a_failing_cache_write_is_a_warning_and_the_run_succeeds(cli, data):
    cli.cache.mkdir()
    argv = " ".join(f"'{a}'" for a in cli.argv("seamless-run", "head -c 3000000 /dev/zero"))
    # Room for the database, not for the 3 MB result.
    script = (f"mount -t tmpfs -o size=400k tmpfs {cli.cache} && {argv} | wc -c && "
              f"{argv} | wc -c")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cli.work, env=cli.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [b"3000000", b"3000000"]
    warning = (b"seamless-run: warning: could not write to the persistent cache at "
               + str(cli.cache).encode() + b" ([Errno 28] No space left on device)")
    assert proc.stderr.count(warning) == 2  # each run executed: nothing was cached


@needs_unshare
def test_a_full_tmpdir_is_a_clear_error(cli, data):
    (data / "big.bin").write_bytes(b"x" * 1_000_000)
    argv = " ".join(f"'{a}'" for a in cli.argv("seamless-run", "wc", "-c", "big.bin"))
    script = (f"mount -t tmpfs -o size=256k tmpfs {cli.tmp} && {argv}; rc=$?; ls -A {cli.tmp};"
              " exit $rc")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cli.work, env=cli.env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(b"seamless-run: error: cannot copy input big.bin into the "
                                  b"sandbox (No space left on device); check TMPDIR")
    assert proc.stdout == b""  # the sandbox is gone


def test_a_closed_stdout_discards_output_and_never_touches_the_cache(cli, data):
    run = cli.argv("seamless-run")[0]
    for _ in range(2):  # a miss, then a hit, both with fd 1 closed
        proc = subprocess.run(["bash", "-c", f"'{run}' cat a.txt >&-"], cwd=data, env=cli.env,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == b""
    assert cli.run("seamless-run", "cat", "a.txt", check=0).stdout == b"1\n2\n"
    assert cli.run("seamless-cache", "verify", check=0).returncode == 0


def test_an_unwritable_stdout_is_a_clear_error(cli, data):
    with open("/dev/full", "wb") as full:
        proc = cli.run("seamless-run", "cat", "a.txt", stdout=full, check=1)
    assert proc.stderr.startswith(b"seamless-run: error: could not write the command's stdout "
                                  b"(No space left on device)")


# -- output file modes (an executable script stays executable) and the database-free hit ------


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("sandbox", [[], ["--no-sandbox"]])
def test_an_executable_output_stays_executable_on_a_miss_and_a_hit(cli, data, sandbox):
    log, runs = _counter(cli)
    cmd = (f"printf '#!/bin/sh\\necho made\\n' > run.sh; chmod 750 run.sh; "
           f"printf 'plain\\n' > notes.txt; chmod 604 notes.txt; echo ran >> {log}")
    args = ["-c", "run.sh", "-c", "notes.txt", *sandbox, cmd]
    cli.run("seamless-run", *args, check=0)
    assert (_mode(data / "run.sh"), _mode(data / "notes.txt")) == (0o750, 0o604)
    os.unlink(data / "run.sh")
    os.chmod(data / "notes.txt", 0o600)  # same content, other mode: the hit restores it
    cli.run("seamless-run", *args, check=0)
    assert runs() == 1
    assert (_mode(data / "run.sh"), _mode(data / "notes.txt")) == (0o750, 0o604)
    ran = subprocess.run([str(data / "run.sh")], capture_output=True, timeout=60)
    assert ran.stdout == b"made\n"


def test_a_sandboxed_miss_gives_the_job_mode_over_the_old_target_mode(cli, data):
    (data / "tool.sh").write_bytes(b"old\n")
    os.chmod(data / "tool.sh", 0o644)
    cli.run("seamless-run", "-c", "tool.sh", "echo new > tool.sh; chmod 755 tool.sh", check=0)
    assert (data / "tool.sh").read_bytes() == b"new\n"
    assert _mode(data / "tool.sh") == 0o755


def test_files_of_a_directory_output_keep_their_modes(cli, data):
    log, runs = _counter(cli)
    cmd = (f"mkdir -p out/bin; printf x > out/bin/tool; chmod 711 out/bin/tool; "
           f"printf y > out/data; chmod 640 out/data; echo ran >> {log}")
    cli.run("seamless-run", "-c", "out", cmd, check=0)
    subprocess.run(["rm", "-rf", str(data / "out")], check=True, timeout=60)
    cli.run("seamless-run", "-c", "out", cmd, check=0)
    assert runs() == 1
    assert (_mode(data / "out/bin/tool"), _mode(data / "out/data")) == (0o711, 0o640)


def test_a_result_stored_before_modes_were_recorded_is_still_served(cli, data):
    from seamless.cache.persistent import PersistentCache
    from seamless.encoding import encode

    log, runs = _counter(cli)
    cmd = f"echo fresh > out.txt; echo ran >> {log}"
    first = cli.run("seamless-run", "-v", "-c", "out.txt", cmd, check=0)
    tf = first.stderr.split(b"cache miss ")[1][:64].decode()
    old = encode({"exit": 0, "outputs": {"out.txt": b"from an old entry\n"}, "stdout": b"s\n"})
    buffer = bytes(memoryview(old.buffer))
    cache = PersistentCache(cli.cache)
    try:
        assert cache.write_now(tf, old.kind, hashlib.sha256(buffer).hexdigest(), buffer,
                               replace=True)
    finally:
        cache.close()
    os.unlink(data / "out.txt")
    hit = cli.run("seamless-run", "-c", "out.txt", cmd, check=0)
    assert hit.stdout == b"s\n" and hit.stderr == b""
    assert (data / "out.txt").read_bytes() == b"from an old entry\n"
    assert _mode(data / "out.txt") == 0o666 & ~_umask()
    assert runs() == 1


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_a_hit_reads_the_result_index_without_sqlite(cli, data):
    log, runs = _counter(cli)
    cmd = f"paste a.txt b.txt; echo ran >> {log}"
    cli.run("seamless-run", cmd, check=0)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    probe = "import sys; from seamless.cli.run import entry; entry()"
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", probe, cmd],
                          cwd=data, env=dict(cli.env, PYTHONPATH=root), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"1\tx\n2\ty\n"
    assert runs() == 1
    imported = {line.rsplit(b"|", 1)[1].strip().decode()
                for line in proc.stderr.splitlines() if line.startswith(b"import time:")}
    assert "seamless.cache.result_index" in imported
    assert not imported & {"sqlite3", "_sqlite3", "seamless.cache.persistent", "msgspec",
                           "typing", "numpy", "yaml", "logging"}


def test_a_cache_without_result_index_still_hits_and_gets_one(cli, data):
    log, runs = _counter(cli)
    cmd = f"cat a.txt; echo ran >> {log}"
    cli.run("seamless-run", cmd, check=0)
    subprocess.run(["rm", "-rf", str(cli.cache / "results")], check=True, timeout=60)
    assert cli.run("seamless-run", cmd, check=0).stdout == b"1\n2\n"
    assert runs() == 1
    entries = [f for _, _, fs in os.walk(cli.cache / "results") for f in fs]
    assert len(entries) == 1
