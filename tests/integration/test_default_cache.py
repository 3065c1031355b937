"""The persistent cache on by default, seen from real processes: a script run twice gets a hit
the second time, the opt-outs really opt out, and processes sharing a capped directory stay
within the cap without ever serving a wrong value (docs/caching.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from seamless.cache.persistent import PersistentCache

pytestmark = pytest.mark.integration

TIMEOUT_S = 120

SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import seamless, seamless.config
    from seamless.batches import TransformationList
    from seamless.transformer import delayed

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if len(sys.argv) > 3 and sys.argv[3] == "init-off":
        seamless.config.init(cache=False)

    @delayed
    def tripled(log, x):
        with open(log, "a") as f:
            f.write("ran %d\\n" % x)
        return x * 3

    log, n = sys.argv[1], int(sys.argv[2])
    handles = [tripled(log, x) for x in range(n)]
    tl = TransformationList(handles)
    values = tl.values()
    print(json.dumps({"values": values, "cached": [h.cached for h in handles],
                      "summary_cached": tl.summary()["cached"]}))
    seamless.close()
""")


def environment(tmp_path, **extra) -> dict:
    """No seamless setting, the default cache directory under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")
           or k == "SEAMLESS_PUREPYTHON"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


def run_script(tmp_path, env, n=3, *args, cwd=None):
    import json

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "log"), str(n), *args],
                         env=env, cwd=cwd or tmp_path, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def runs(tmp_path) -> int:
    path = tmp_path / "log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_script_run_twice_is_a_hit_the_second_time(tmp_path):
    env = environment(tmp_path)
    first, _ = run_script(tmp_path, env)
    assert first == {"values": [0, 3, 6], "cached": [False] * 3, "summary_cached": 0}
    assert runs(tmp_path) == 3
    second, stderr = run_script(tmp_path, env)
    assert second == {"values": [0, 3, 6], "cached": [True] * 3, "summary_cached": 3}
    assert runs(tmp_path) == 3  # no body ran again
    assert stderr.count("INFO transformation tripled (") == 3
    assert stderr.count(": cache hit") == 3
    default_dir = tmp_path / "xdg" / "seamless"
    cache = PersistentCache(default_dir)
    try:
        assert [e["label"] for e in cache.entries()] == ["tripled"] * 3
    finally:
        cache.close()


@pytest.mark.parametrize("how", ["env", "yaml", "init"])
def test_opting_out_recomputes_and_writes_nothing(tmp_path, how):
    env = environment(tmp_path, **({"SEAMLESS_CACHE": "off"} if how == "env" else {}))
    args = ("init-off",) if how == "init" else ()
    if how == "yaml":
        (tmp_path / "seamless.yaml").write_text("- cache: off\n")
    for _ in range(2):
        result, _ = run_script(tmp_path, env, 2, *args)
        assert result["cached"] == [False, False]
    assert runs(tmp_path) == 4
    assert not (tmp_path / "xdg").exists()


def test_processes_sharing_a_capped_directory(tmp_path):
    """Two processes write 30 results of 100 kB each into one directory capped at 1 MB, while
    trimming it; then a third one reads every result back: correct values, from the cache or
    computed again, never an error, and its own write leaves the directory within the cap."""
    script = tmp_path / "big.py"
    script.write_text(textwrap.dedent("""
        import sys
        import seamless
        from seamless.transformer import delayed

        @delayed
        def block(k):
            return bytes([k % 251]) * 100_000

        for k in range(int(sys.argv[1]), int(sys.argv[2])):
            assert block(k).run() == bytes([k % 251]) * 100_000
        seamless.close()
    """))
    env = environment(tmp_path, SEAMLESS_CACHE_MAX="1MB")
    procs = [subprocess.Popen([sys.executable, str(script), "0", "30"], env=env, cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            _, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, stderr
            assert "Traceback" not in stderr and "CacheWarning" not in stderr, stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = subprocess.run([sys.executable, str(script), "0", "31"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    cache = PersistentCache(tmp_path / "xdg" / "seamless")
    try:
        total = cache.total_bytes()
        assert 0 < total <= 1_000_000
        kept = len(cache.entries())
        assert 1 <= kept <= 10
    finally:
        cache.close()
