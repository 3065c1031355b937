"""``.run(timeout=...)`` / ``.compute(timeout=...)``: TimeoutError, and the work goes on.

The bodies wait for a file the test creates, so no assertion depends on how fast the machine
is; they give up after 60 s so a failing test cannot leave a thread waiting forever.
"""

from __future__ import annotations

import pytest

from seamless.transformer import delayed


@delayed
def wait_for_file(path, log):
    import os
    import time

    with open(log, "a") as f:
        f.write("ran\n")
    for _ in range(6000):
        if os.path.exists(path):
            return "released"
        time.sleep(0.01)
    return "gave up"


def test_run_timeout_raises_and_the_work_goes_on(tmp_path):
    gate, log = tmp_path / "gate", tmp_path / "log"
    h = wait_for_file(str(gate), str(log))
    with pytest.raises(TimeoutError) as info:
        h.run(timeout=0.05)
    message = str(info.value)
    assert message.startswith("transformation wait_for_file (")
    assert "did not finish within 0.05 s; it goes on running" in message
    assert h.status == "running"
    with pytest.raises(TimeoutError):
        h.compute(timeout=0)
    gate.touch()
    assert h.run(timeout=60) == "released"
    assert h.compute(timeout=0) is not None
    assert log.read_text() == "ran\n"  # one execution, however often we waited


def test_timeout_on_a_finished_handle_returns_at_once(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    h = wait_for_file(str(gate), str(tmp_path / "log"))
    assert h.run() == "released"
    assert h.run(timeout=0) == "released"


@pytest.mark.parametrize("bad", [-1, "2", True, float("nan")])
def test_bad_timeout_is_refused(bad, tmp_path):
    h = wait_for_file(str(tmp_path / "gate"), str(tmp_path / "log"))
    with pytest.raises(ValueError, match=r"timeout must be None or a number of seconds >= 0, "
                                         r"got .* \(use tf.run\(timeout=2.5\)\)"):
        h.run(timeout=bad)
    assert h.status == "pending"
