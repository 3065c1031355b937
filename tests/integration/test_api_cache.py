"""The persistent cache seen through the public API: shared by processes, never serving a
corrupt buffer, and never failing a transformation because the disk said no."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import seamless
import seamless.config
from seamless.errors import CacheWarning
from seamless.transformer import delayed

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import seamless
    from seamless.transformer import delayed

    @delayed
    def heavy(log, n):
        import numpy as np
        with open(log, "a") as f:
            f.write("ran\\n")
        return np.arange(n, dtype=float) * 2

    h = heavy(sys.argv[1], int(sys.argv[2]))
    print(float(h.run().sum()))
    seamless.close()
""")


def run_script(tmp_path, cache_dir, log, n=1000):
    script = tmp_path / "heavy.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, SEAMLESS_CACHE=str(cache_dir))
    out = subprocess.run([sys.executable, "-W", "error", str(script), str(log), str(n)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_second_process_gets_a_cache_hit(tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    assert run_script(tmp_path, cache_dir, log) == float((np.arange(1000) * 2).sum())
    assert run_script(tmp_path, cache_dir, log) == float((np.arange(1000) * 2).sum())
    assert lines(log) == 1
    assert (cache_dir / "seamless.db").exists()


BURST = textwrap.dedent("""
    import json, sys
    import seamless
    from seamless.transformer import delayed, spawn

    @delayed
    def marked(log, i):
        with open(log, "a") as f:
            f.write(f"{i}\\n")
        return i * 3

    spawn(2)
    wanted = json.loads(sys.argv[2])
    handles = [marked(sys.argv[1], i).start() for i in wanted]  # one burst of lookups
    print(json.dumps([h.run() for h in handles]))
    seamless.close()
""")


def test_a_burst_on_the_pool_serves_persistent_hits_and_runs_only_the_misses(tmp_path):
    """Jobs queued together are probed in one query: the ones with a row still come from
    the cache, every other one runs once."""
    script, log = tmp_path / "burst.py", tmp_path / "ran"
    script.write_text(BURST)
    env = dict(os.environ, SEAMLESS_CACHE=str(tmp_path / "cache"))

    def burst(values):
        out = subprocess.run([sys.executable, "-W", "error", str(script), str(log),
                              json.dumps(values)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    cached = [3, 150, 299]
    assert burst(cached) == [i * 3 for i in cached]
    log.write_text("")
    assert burst(list(range(300))) == [i * 3 for i in range(300)]
    ran = sorted(int(line) for line in log.read_text().split())
    assert ran == [i for i in range(300) if i not in cached]


def test_processes_writing_the_same_result_at_once(tmp_path):
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    script = tmp_path / "heavy.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, SEAMLESS_CACHE=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-W", "error", str(script), str(log), "200000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path) for _ in range(3)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1
    run_script(tmp_path, cache_dir, log, 200000)  # a fourth run is a hit
    assert lines(log) <= 3
    before = lines(log)
    run_script(tmp_path, cache_dir, log, 200000)
    assert lines(log) == before


@delayed
def doubled(log, n):
    import numpy as np

    with open(log, "a") as f:
        f.write("ran\n")
    return np.arange(n, dtype=float) * 2


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_buffer_is_recomputed_with_a_warning(tmp_path, damage):
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    seamless.config.init(cache=str(cache_dir))
    first = doubled(str(log), 5000)
    expected = first.run().copy()
    seamless.close()  # flush the write
    path = cache_dir / "buffers" / first.result_checksum[:2] / first.result_checksum
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    seamless.cache._reset_for_tests()  # forget the in-memory copy: force a disk read
    with pytest.warns(CacheWarning, match="failed verification"):
        again = doubled(str(log), 5000).run()
    np.testing.assert_array_equal(again, expected)
    assert lines(log) == 2  # recomputed, never served corrupt


def test_unwritable_cache_directory_keeps_results_in_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file where the cache directory should be")
    seamless.config.init(cache=str(blocker / "cache"))
    log = tmp_path / "log"
    with pytest.warns(CacheWarning, match="results stay in memory only"):
        assert doubled(str(log), 10).run().tolist() == [2.0 * i for i in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert doubled(str(log), 10).run()[1] == 2.0  # memory hit, no second warning
    assert lines(log) == 1


def test_cache_write_failure_on_file_size_limit(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(textwrap.dedent("""
        import resource, signal, sys, warnings
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        import seamless, seamless.config
        from seamless.errors import CacheWarning
        from seamless.transformer import delayed
        seamless.config.init(cache=sys.argv[1])

        @delayed
        def big(n):
            import numpy as np
            return np.ones(n)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = big(1_000_000).run()
            seamless.close()
        assert value.sum() == 1_000_000
        texts = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        assert any("could not write to the persistent cache" in t for t in texts), texts
        print("ok")
    """))
    cache_dir = tmp_path / "cache"
    out = subprocess.run([sys.executable, str(script), str(cache_dir)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    leftovers = [p for p in cache_dir.rglob(".tmp-*")]
    assert leftovers == []


def test_interpreter_exit_flushes_queued_writes(tmp_path):
    """No seamless.close(): the atexit hook must still write the 24 MB result."""
    cache_dir, log = tmp_path / "cache", tmp_path / "log"
    script = tmp_path / "noclose.py"
    script.write_text(SCRIPT.replace("seamless.close()\n", ""))
    env = dict(os.environ, SEAMLESS_CACHE=str(cache_dir))
    for _ in range(2):
        out = subprocess.run([sys.executable, "-W", "error", str(script), str(log), "3000000"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr
    assert lines(log) == 1
