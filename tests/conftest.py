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
    """Each test starts with default settings, no executor threads and empty memory caches."""
    import seamless.cache
    import seamless.config

    yield
    seamless.close()
    seamless.config._reset_for_tests()
    seamless.cache._reset_for_tests()
