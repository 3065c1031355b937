"""Test-wide checks: the installed package is tested, on the backend the run asked for."""

from __future__ import annotations

import os

import pytest

import seamless
import seamless._ipc


def _requested_backend() -> str:
    flag = os.environ.get("SEAMLESS_PUREPYTHON", "").strip().lower()
    return "python" if flag in ("1", "true", "yes") else "cython"


def pytest_report_header(config):
    return (f"seamless {seamless.__version__} from {os.path.dirname(seamless.__file__)}; "
            f"_ipc backend {seamless._ipc.BACKEND} {seamless._ipc.backends()}")


def pytest_sessionstart(session):
    wanted = _requested_backend()
    if seamless._ipc.BACKEND != wanted:
        raise pytest.UsageError(
            f"this run asked for the {wanted!r} _ipc backend but {seamless._ipc.BACKEND!r} is "
            f"loaded ({seamless._ipc.backends()}); build the extension with `pip install .` or "
            f"set SEAMLESS_PUREPYTHON=1 for the pure-Python twin")


@pytest.fixture(autouse=True)
def fresh_seamless_state():
    """Each test starts with default settings, no executor threads and empty memory caches."""
    import seamless.cache
    import seamless.config

    yield
    seamless.close()
    seamless.config._reset_for_tests()
    seamless.cache._reset_for_tests()
