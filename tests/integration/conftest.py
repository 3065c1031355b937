"""Integration tests start real processes: each one must leave nothing behind (the shared
``no_leaks`` fixture of tests/conftest.py, for every test here)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def every_test_leaves_nothing(no_leaks):
    yield
