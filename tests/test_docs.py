"""Every example of docs/*.md runs, in order, in a fresh directory; one program per page.

- ```python blocks: one interpreter per page, so a page's blocks share names like a notebook.
- ```bash blocks: one ``bash`` script per page, ``set -eu`` at the top, with the console
  scripts of this interpreter (``seamless-run``, ``seamless-cache``) first on ``PATH`` and a
  private ``SEAMLESS_CACHE``, ``HOME`` and ``TMPDIR``. A snippet checks its own results with
  ``test`` and ``grep -q``, so exit 0 means every example did what its page says.

Blocks fenced as ```python no-run or ```bash no-run are shown, not run. A page whose examples
need an optional extra (``PAGE_NEEDS``) is skipped, with the extra named, where it is not
installed.

Ownership: everything a page's program creates lies under the test's ``tmp_path``. The bash
script runs in a session of its own; the test kills that session's process group when the script
times out, and checks afterwards that the runs removed their sandboxes (``TMPDIR`` is empty) and
their ``.FUTURE`` sidecars.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import run_in_session

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
BASH_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)
PAGES = sorted(DOCS.glob("*.md"))
TIMEOUT_S = 300
# page -> (module its examples import, the extra that installs it)
PAGE_NEEDS = {"scale-out.md": ("distributed", "dask")}
# Names the failing line of a page's script (set -e alone exits silently).
BASH_PROLOGUE = """set -eu
trap 'echo "examples: line $LINENO failed (exit $?): $BASH_COMMAND" >&2' ERR
"""


def _private_environment(tmp_path: Path) -> dict:
    """The caller's environment without seamless settings; home and caches under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")
           or k == "SEAMLESS_PUREPYTHON"}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return env


def test_docs_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "transformations.md", "caching.md", "configuration.md",
            "cli.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page, tmp_path):
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no ```python examples")
    module, extra = PAGE_NEEDS.get(page.name, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{page.name}'s examples need {module} (pip install \".[{extra}]\")")
    script = tmp_path / f"{page.stem}_examples.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    env = _private_environment(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, f"{page.name} examples failed:\n{out.stdout}\n{out.stderr}"


def _run_script(script: Path, workdir: Path, env: dict) -> subprocess.CompletedProcess:
    """Run ``script`` with bash in a session of its own; a timeout fails the test, and what the
    session leaves running (background jobs included) is stopped in any case."""
    proc, stdout, stderr, _ = run_in_session(["bash", str(script)], TIMEOUT_S, cwd=workdir,
                                             env=env, text=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shell_examples_run(page, tmp_path):
    blocks = BASH_BLOCK.findall(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no ```bash examples")
    script = tmp_path / f"{page.stem}_examples.sh"
    script.write_text(BASH_PROLOGUE + "\n".join(blocks), encoding="utf-8")
    env = _private_environment(tmp_path)
    env["SEAMLESS_CACHE"] = str(tmp_path / "cache")
    env["TMPDIR"] = str(tmp_path / "tmp")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", os.defpath)
    (tmp_path / "tmp").mkdir()
    # A queue server keeps its socket, lock and info files in the runtime directory, which
    # itself stays (removing it would race with the next server); the files must go.
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700)
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = _run_script(script, workdir, env)
    assert out.returncode == 0, f"{page.name} shell examples failed:\n{out.stdout}\n{out.stderr}"
    assert not list((tmp_path / "tmp").iterdir()), "the runs left files in TMPDIR"
    assert not list(workdir.rglob("*.FUTURE")), "the runs left .FUTURE sidecars"
    left = [p.name for p in (tmp_path / "run").rglob("queue-*")]
    assert not left, f"a queue server left its files: {left}"
