"""Two clients of one scheduler: the same transformation runs once, and a result one client
stored is a cache hit for the other."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import seamless.cache
import seamless.config

MODULE = '''
import os
import time

from seamless.transformer import delayed


@delayed
def gated(log, gate, x):
    import os
    import time

    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 60  # never waits forever for the test's signal
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x * 3
'''

CLIENT = '''
import sys
import seamless.config
from distributed import Client
from shared_tf import gated

address, log, gate, cache = sys.argv[1:5]
client = Client(address, set_as_default=False)
try:
    seamless.config.init(dask_client=client, cache=None if cache == "-" else cache)
    handle = gated(log, gate, 7)
    print("VALUE", handle.run(timeout=90), "CACHED", handle.cached, flush=True)
finally:
    seamless.close()
    client.close()
'''


def _setup(tmp_path):
    (tmp_path / "shared_tf.py").write_text(MODULE)
    (tmp_path / "client2.py").write_text(CLIENT)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module("shared_tf")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shared_tf", None)


def _second_client(tmp_path, remote, log, gate, cache="-"):
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "client2.py"), remote.scheduler.address, log, gate, cache],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_same_transformation_from_two_clients_runs_once(remote, tmp_path):
    shared = _setup(tmp_path)
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    mine = shared.gated(log, gate, 7).start()
    key = f"seamless-tf-{mine.checksum}"
    other = _second_client(tmp_path, remote, log, gate)
    try:
        def wanted_by(dask_scheduler, key=key):
            ts = dask_scheduler.tasks.get(key)
            return 0 if ts is None else len(ts.who_wants)

        deadline = time.monotonic() + 60  # hang detector
        while remote.run_on_scheduler(wanted_by) < 2:
            assert other.poll() is None, other.communicate()
            assert time.monotonic() < deadline, "the second client never asked for the key"
            time.sleep(0.05)
        open(gate, "w").close()
        out, err = other.communicate(timeout=120)
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate()
    assert other.returncode == 0, err
    assert "VALUE 21" in out
    assert mine.run(timeout=60) == 21
    with open(log) as f:
        assert len(f.read().split()) == 1  # one execution for both clients


def test_a_result_stored_by_one_client_is_a_hit_for_another(remote, tmp_path):
    shared = _setup(tmp_path)
    cache_dir = str(tmp_path / "cache")
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    open(gate, "w").close()
    seamless.config.init(dask_client=remote, cache=cache_dir)
    assert shared.gated(log, gate, 7).run(timeout=60) == 21
    seamless.cache.flush()
    other = _second_client(tmp_path, remote, log, gate, cache=cache_dir)
    try:
        out, err = other.communicate(timeout=120)
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate()
    assert other.returncode == 0, err
    assert "VALUE 21 CACHED True" in out
    with open(log) as f:
        assert len(f.read().split()) == 1
