"""The persistent cache directory shared with the workers, and spawn() vs remote."""

from __future__ import annotations

import os

import numpy as np
import pytest

import seamless
import seamless.config
from seamless.cache.buffers import BufferStore
from seamless.dask import sharedfs
from seamless.errors import ConfigurationError
from seamless.transformer import delayed, spawn


@delayed
def triple(a):
    return a * 3


def test_workers_write_large_results_to_the_shared_directory(remote, tmp_path):
    cache_dir = str(tmp_path / "cache")
    seamless.config.init(dask_client=remote, cache=cache_dir)
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    handle = triple(a)
    checksum = handle.compute()
    buffer = handle._outcome.result.buffer
    assert buffer.stored and not buffer.fetched()
    assert os.path.exists(BufferStore(cache_dir).path(checksum))  # written by the worker
    assert sharedfs.visible(cache_dir, sharedfs.client_token(cache_dir))
    assert handle.run()[-1] == a[-1] * 3


def test_a_large_input_in_the_shared_directory_is_not_scattered(remote, scattered, tmp_path):
    """A new session sends an array whose bytes the directory already holds: the worker reads
    the file, nothing is scattered."""
    cache_dir = str(tmp_path / "cache")
    seamless.config.init(dask_client=remote, cache=cache_dir)
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    tripled = triple(a).run()
    seamless.close()
    seamless.config.init(dask_client=remote, cache=cache_dir)
    scattered.clear()  # only the second session counts
    assert triple(tripled).run()[-1] == a[-1] * 9
    assert scattered == []


def test_a_directory_with_another_id_is_not_shared(tmp_path):
    directory = str(tmp_path)
    mine = sharedfs.client_token(directory)
    assert sharedfs.client_token(directory) == mine  # made once, then read
    assert not sharedfs.visible(directory, "another-machines-id")


@delayed
def ident(x):
    return x


def test_spawn_and_remote_are_exclusive(remote):
    with pytest.raises(ConfigurationError, match="remote"):
        spawn(1)
    seamless.close()
    seamless.config._reset_for_tests()
    spawn(1)
    assert ident(1).run() == 1
    seamless.config.init(dask_client=remote)
    with pytest.raises(ConfigurationError, match="spawn"):
        ident(2).run()


@delayed
def same(a):
    return a


def test_an_input_read_from_the_directory_can_be_the_result(remote, tmp_path):
    """The worker's input is a view of a cache file; returned as is, it still travels back."""
    cache_dir = str(tmp_path / "cache")
    seamless.config.init(dask_client=remote, cache=cache_dir)
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    tripled = triple(a).run()
    seamless.close()
    seamless.config.init(dask_client=remote, cache=cache_dir)
    assert same(tripled).run()[-1] == a[-1] * 3
