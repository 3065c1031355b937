"""``parallel()`` in a real Jupyter kernel (nbclient + ipykernel), where a loop always runs.

The notebook runs in a child process with a hard timeout, in its own session so that the
kernel goes with it if anything hangs."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from leaks import run_in_session

pytestmark = pytest.mark.integration

for _module in ("nbclient", "nbformat", "ipykernel"):
    pytest.importorskip(_module, reason=f"{_module} is not installed (pip install -e '.[test]' "
                                        f"brings nbclient and ipykernel)")

CELLS = [
    """
    import asyncio, json
    from seamless.transformer import delayed, parallel, parallel_async, spawn

    try:
        asyncio.get_running_loop()
        loop_running = True
    except RuntimeError:
        loop_running = False

    @delayed
    def square(i):
        return i * i
    """,
    "in_order = [tf.value for tf in parallel([square(i) for i in range(8)])]",
    """
    spawn(2)
    pooled = sorted(tf.value for tf in parallel([square(i) for i in range(8, 12)],
                                                ordered=False))
    """,
    """
    awaited = []
    async for tf in parallel_async([square(i) for i in range(3)]):
        awaited.append(tf.value)
    """,
    "run = square(12).run()",
    """print(json.dumps(dict(loop_running=loop_running, in_order=in_order, pooled=pooled,
                          awaited=awaited, run=run)))""",
]

DRIVER = """
import json, sys
import nbclient, nbformat

cells = json.loads(sys.argv[1])
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                             "language": "python"}
client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3")
client.execute()
print(nb.cells[-1].outputs[0]["text"], end="")
"""


def test_parallel_in_a_running_jupyter_kernel(tmp_path):
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    cells = [textwrap.dedent(cell).strip() for cell in CELLS]
    # The kernel is stopped with the driver, whatever happened.
    proc, out, err, _ = run_in_session([sys.executable, "-c", DRIVER, json.dumps(cells)], 240,
                                       text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result == dict(loop_running=True, in_order=[i * i for i in range(8)],
                          pooled=[i * i for i in range(8, 12)], awaited=[0, 1, 4], run=144)
