"""A usage error raised from deep inside ``.run()`` shows the user's call and the message,
not seamless's internal frames; the handle is left startable (docs/configuration.md)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from seamless.transformer import delayed

    @delayed
    def f(x):
        return x

    h = f(1)
    for attempt in range(2):
        try:
            h.run(timeout=20)
        except Exception as exc:
            print(type(exc).__name__, h.status, flush=True)
    h.run()
""")


def _run_with_bad_config(tmp_path):
    (tmp_path / "seamless.yaml").write_text("- workrs: 2\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    return subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_traceback_is_the_call_and_the_message(tmp_path):
    done = _run_with_bad_config(tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("seamless.errors.ConfigurationError: seamless.yaml, line 1: "
                                "unknown key 'workrs'; did you mean 'workers'?")
    frames = [line for line in lines if line.lstrip().startswith("File ")]
    assert "script.py" in frames[0]
    inner = [f for f in frames if "seamless/execution" in f or "seamless/config" in f]
    assert inner == [] and len(frames) <= 2, done.stderr


def test_refused_start_leaves_the_handle_pending_not_running(tmp_path):
    done = _run_with_bad_config(tmp_path)
    # each .run() raises the configuration error again instead of waiting for a run that
    # never started (the second would time out if the handle had stayed "running")
    assert done.stdout.splitlines() == ["ConfigurationError pending"] * 2
