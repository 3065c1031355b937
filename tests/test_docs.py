"""Every ```python block of docs/*.md runs, in order, in a fresh interpreter and directory.

Blocks fenced as ```python no-run are shown, not run.  One interpreter per page, so a page's
blocks share names, like a notebook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
PAGES = sorted(DOCS.glob("*.md"))


def test_docs_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "transformations.md", "caching.md", "configuration.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page, tmp_path):
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no ```python examples")
    script = tmp_path / f"{page.stem}_examples.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")
           or k == "SEAMLESS_PUREPYTHON"}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{page.name} examples failed:\n{out.stdout}\n{out.stderr}"
