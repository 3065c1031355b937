"""Which route large buffers take between the client and the workers (seamless/dask/connect.py):
straight to the workers when the scheduler is on loopback and the client left the choice to
Dask; otherwise Dask's own choice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from seamless.dask.connect import direct_transfers
from seamless.transformer import delayed


def _client(address, direct_to_workers=None):
    return SimpleNamespace(scheduler=SimpleNamespace(address=address),
                           direct_to_workers=direct_to_workers)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://localhost:8786",
                                     "tcp://[::1]:8786", "tls://127.0.0.2:8786"])
def test_a_loopback_scheduler_means_direct_transfers(address):
    assert direct_transfers(_client(address)) is True


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "tcp://head:8786",
                                     "inproc://10.0.0.5/123/1", None])
def test_elsewhere_dask_decides(address):
    assert direct_transfers(_client(address)) is None


@pytest.mark.parametrize("chosen", [True, False])
def test_the_clients_own_choice_stands(chosen):
    assert direct_transfers(_client("tcp://127.0.0.1:8786", chosen)) is None


@delayed
def negated(a):
    return -a


def test_large_buffers_go_straight_to_the_workers(remote, monkeypatch):
    """The test cluster listens on loopback: the input is scattered and the result gathered
    with ``direct=True``, and the values arrive intact."""
    routes = []
    for name in ("scatter", "gather"):
        original = getattr(remote, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            routes.append((_name, kwargs.get("direct")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(remote, name, recording)
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    out = negated(a).run()
    assert out[-1] == -a[-1] and out.shape == a.shape
    assert routes == [("scatter", True), ("gather", True)]
