"""Test-wide checks: the installed package is tested, on the backend the run asked for, and
never with the user's own cache.

The persistent cache is on by default (docs/caching.md), in ``$XDG_CACHE_HOME/seamless``. For
the whole session ``XDG_CACHE_HOME`` points at a temp directory this file creates and removes,
and ``SEAMLESS_CACHE=off``, so a test (and every process it starts, which inherits the
environment) computes what it computes: a result of another test, or of an earlier run, is
never a hit. A test about the persistent cache configures its own directory, or for the
default one sets ``XDG_CACHE_HOME`` and removes ``SEAMLESS_CACHE`` in its own environment.

Fixtures for every test directory (helpers in tests/leaks.py): ``fresh_seamless_state`` (autouse)
starts and ends each test with default settings, no backend and empty memory caches;
``no_leaks`` fails a test that leaves a process, thread, descriptor or segment behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from leaks import Snapshot, reset_seamless

import seamless
import seamless._ipc


def _requested_backend() -> str:
    flag = os.environ.get("SEAMLESS_PUREPYTHON", "").strip().lower()
    return "python" if flag in ("1", "true", "yes") else "cython"


def pytest_report_header(config):
    return (f"seamless {seamless.__version__} from {os.path.dirname(seamless.__file__)}; "
            f"_ipc backend {seamless._ipc.BACKEND} {seamless._ipc.backends()}")


_PRIVATE_XDG_CACHE = None


def pytest_configure(config):
    """Before any test module is imported: no test can reach the user's cache."""
    global _PRIVATE_XDG_CACHE
    _PRIVATE_XDG_CACHE = tempfile.mkdtemp(prefix="seamless-tests-xdg-cache-")
    os.environ["XDG_CACHE_HOME"] = _PRIVATE_XDG_CACHE
    os.environ["SEAMLESS_CACHE"] = "off"


def pytest_unconfigure(config):
    if _PRIVATE_XDG_CACHE is not None:
        shutil.rmtree(_PRIVATE_XDG_CACHE, ignore_errors=True)


def pytest_sessionstart(session):
    """Every module that has a compiled version must be the compiled one (unless the run asked
    for the pure-Python twin): a broken build must fail the run, not slow it down."""
    wanted = _requested_backend()
    ipc = seamless._ipc
    expected = {name: ("cython" if wanted == "cython" and ipc._has_compiled(name) else "python")
                for name in ipc.backends()}
    if ipc.backends() != expected:
        raise pytest.UsageError(
            f"this run asked for the {wanted!r} _ipc backend but {ipc.backends()} is loaded "
            f"(expected {expected}); build the extension with `pip install .` or set "
            f"SEAMLESS_PUREPYTHON=1 for the pure-Python twin")


@pytest.fixture(autouse=True)
def fresh_seamless_state():
    """Each test starts and ends with default settings, no backend and empty memory caches."""
    reset_seamless()
    yield
    reset_seamless()


@pytest.fixture
def no_leaks():
    """Fail a test that leaves a child process, a thread, a descriptor or a segment behind
    (after closing what seamless itself holds: see tests/leaks.py)."""
    before = Snapshot()
    yield
    reset_seamless()
    before.assert_nothing_new()
