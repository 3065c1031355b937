"""A large array result is hashed where the body left it, never copied on the worker, and
arrives on the client as the same canonical bytes (seamless/dask/results.py)."""

from __future__ import annotations

import dask
import numpy as np

import seamless.encoding as encoding
from seamless.dask.results import SplitCanonical, buffer_nbytes, whole
from seamless.dask.ship import task_key
from seamless.dask.task import _hashed
from seamless.transformer import delayed


def _split_of(a) -> SplitCanonical:
    """What a Dask worker's runner hands over for ``a``: a ClaimedBuffer without a segment."""
    before = encoding.in_place_threshold
    encoding.in_place_threshold = 1 << 20
    try:
        enc = encoding.encode(a, defer=True, claim=True)
    finally:
        encoding.in_place_threshold = before
    assert enc.checksum is None and type(enc.buffer) is encoding.ClaimedBuffer
    checksum, split = _hashed(enc)
    assert type(split) is SplitCanonical and split.array is a
    return checksum, split


def test_in_place_checksum_and_bytes_equal_the_copying_encoder():
    a = np.arange(3 * 2**20 // 8, dtype=np.float64)
    reference = encoding.encode(a)
    checksum, split = _split_of(a)
    assert checksum == reference.checksum
    assert buffer_nbytes(split) == reference.buffer.nbytes
    assert bytes(whole(split)) == bytes(reference.buffer)
    assert not a.flags.writeable, "the worker's result must be read-only once hashed"


def test_below_the_threshold_or_not_contiguous_is_copied_as_before():
    encoding.in_place_threshold, before = 1 << 20, encoding.in_place_threshold
    try:
        small = encoding.encode(np.ones(1000), defer=True, claim=True)
        strided = encoding.encode(np.ones(2**20)[::2], defer=True, claim=True)
    finally:
        encoding.in_place_threshold = before
    for enc in (small, strided):
        assert enc.checksum is not None and type(enc.buffer) is not encoding.ClaimedBuffer


def test_dask_sends_the_parts_in_frames_below_the_shard_size_and_joins_them_once():
    from distributed.protocol import deserialize, serialize

    a = np.arange(5 * 2**20 // 8, dtype=np.int64)
    checksum, split = _split_of(a)
    with dask.config.set({"distributed.comm.shard": "2MiB"}):
        header, frames = serialize(split)
    assert len(frames) == 1 + 3  # the prefix, then 2 + 2 + 1 MiB of the array
    assert max(memoryview(f).nbytes for f in frames) <= 2 << 20
    out = deserialize(header, [bytes(f) for f in frames])  # as received: separate buffers
    assert not out.flags.writeable
    assert type(out.base) is bytes  # plain pages, not numpy's huge-page advice (results.py)
    assert type(whole(split).base) is bytes
    assert bytes(out) == bytes(encoding.encode(np.arange(5 * 2**20 // 8)).buffer)
    assert encoding.decode("array", out)[-1] == a[-1]


@delayed
def triple(a):
    return a * 3


def test_a_large_result_stays_split_on_the_worker_and_arrives_whole(remote):
    a = np.arange(2 * 2**20 // 8, dtype=np.float64)
    handle = triple(a)
    checksum = handle.compute()
    assert checksum == encoding.checksum_of(a * 3)
    key = task_key(handle.checksum)

    def held_as(dask_worker):
        value = dask_worker.data.get(key)
        return None if value is None else type(value.buffer).__name__

    assert "SplitCanonical" in remote.run(held_as).values()
    out = handle.run()
    assert out.flags.writeable is False and np.array_equal(out, a * 3)
