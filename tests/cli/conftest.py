"""Fixtures for the command-line tests: the installed console scripts, run as subprocesses.

Each test gets a private cache (``SEAMLESS_CACHE``), HOME and TMPDIR under ``tmp_path``, and
works in ``tmp_path / "work"``; the real user's cache is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def script(name: str) -> str:
    """The installed console script ``name``: beside this interpreter (a virtualenv's bin/),
    else on PATH. Missing is an error: the tests must run the real command."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"console script {name!r} is not installed; run `pip install .`")
    return found


class Commands:
    """Runs the commands with this test's environment and working directory."""

    def __init__(self, tmp_path):
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.cache = tmp_path / "cache"
        home = tmp_path / "home"
        home.mkdir()
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SEAMLESS_", "XDG_"))}
        self.env.update(SEAMLESS_CACHE=str(self.cache), HOME=str(home), TMPDIR=str(tmp))

    def argv(self, name, *args):
        return [script(name), *map(os.fsdecode, args)]

    def run(self, name, *args, timeout=120, check=None, cwd=None, env=None, **kw):
        """Run a command to completion; returns ``CompletedProcess`` with bytes stdout/stderr."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(self.argv(name, *args), cwd=cwd or self.work,
                              env=env or self.env, timeout=timeout, **kw)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stderr.decode(errors="replace"))
        return proc

    def start(self, name, *args, cwd=None, env=None, **kw):
        """Start a command; the caller must wait for or kill it."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(name, *args), cwd=cwd or self.work,
                                env=env or self.env, **kw)


@pytest.fixture
def cli(tmp_path):
    return Commands(tmp_path)
