"""``import seamless`` and the light modules load neither numpy nor the compiled core."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "seamless._ipc", "yaml")

PROBE = """
import json, sys
import seamless
import seamless.config
import seamless.errors
import seamless.cache
import seamless.cache.persistent
from seamless import Checksum, close
seamless.config.get_nparallel()
Checksum("0" * 64)
close()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "yaml")
                        or m.startswith("seamless._ipc"))))
"""


def test_light_imports_in_a_fresh_interpreter(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert loaded == [], f"light imports pulled in heavy modules: {loaded}"


def test_transformer_module_defers_numpy_until_an_array_is_used(tmp_path):
    probe = ("import sys\n"
             "from seamless.transformer import delayed\n"
             "print('numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_running_a_handle_without_arrays_loads_no_numpy(tmp_path):
    """Completion flags load ``seamless._ipc.flags`` alone; ``shm_array`` (and with it numpy)
    loads only when a segment may be needed."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, sys\n"
        "import seamless\n"
        "from seamless.transformer import delayed\n"
        "@delayed\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "assert inc(1).run() == 2\n"
        "seamless.close()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'numpy' or "
        "m.startswith('seamless._ipc'))))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert "numpy" not in loaded and not any(m.endswith("shm_array") for m in loaded), loaded
    assert any(m.endswith(".flags") for m in loaded), "handles run on completion flags"
