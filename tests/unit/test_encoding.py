"""Canonical bytes and checksums, exactly as docs/design/identity-and-cache.md, "Canonical bytes"
fixes them."""

from __future__ import annotations

import collections
import enum
import hashlib
import json
import struct

import numpy as np
import pytest

from seamless import Checksum
from seamless.encoding import decode, encode


def raw(enc) -> bytes:
    return bytes(memoryview(enc.buffer).cast("B"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_prefix(header: dict) -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h = -(-(10 + len(text)) // 64) * 64 - 10
    return b"SMLS\x01A" + struct.pack("<I", h) + text + b" " * (h - len(text))


# ---------------------------------------------------------------- kinds and exact bytes


@pytest.mark.parametrize("value, text", [
    (None, "null"), (True, "true"), (1, "1"), (1.0, "1.0"), (0.1, "0.1"), (1e16, "1e+16"),
    (-0.0, "-0.0"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    ({"b": 1, "a": [1.5, None, "é/\n"]}, '{"a":[1.5,null,"é/\\n"],"b":1}'),
    ((1, (2, 3)), "[1,[2,3]]"), (2 ** 80, str(2 ** 80)),
])
def test_json_kind_exact_text(value, text):
    enc = encode(value)
    assert enc.kind == "json"
    assert raw(enc) == text.encode("utf-8")
    assert enc.checksum == sha(text.encode("utf-8"))
    assert isinstance(enc.checksum, Checksum)


def test_one_and_one_point_zero_differ():
    assert encode(1).checksum != encode(1.0).checksum
    assert encode(True).checksum != encode(1).checksum


def test_str_and_bytes_are_raw():
    assert encode("héllo").kind == "str"
    assert encode("héllo").checksum == sha("héllo".encode())
    assert encode(b"\x00\x01").checksum == sha(b"\x00\x01")
    assert encode(bytearray(b"ab")).checksum == encode(b"ab").checksum
    mv = memoryview(bytes(range(6)))[::2]  # non-contiguous: its bytes in order
    assert encode(mv).checksum == sha(bytes([0, 2, 4]))
    assert decode("bytes", encode(bytearray(b"ab")).buffer) == b"ab"


def test_lone_surrogate_is_refused():
    with pytest.raises(ValueError, match="argument 's' of f is a str with a lone surrogate"):
        encode("a\ud800", "argument 's' of f")


def test_subclasses_encode_as_base_type():
    class Color(enum.IntEnum):
        RED = 1

    Point = collections.namedtuple("Point", "x y")
    assert encode(Color.RED).checksum == encode(1).checksum
    assert encode(Point(1, 2)).checksum == encode([1, 2]).checksum


def test_array_exact_bytes():
    a = np.arange(3, dtype="<f8")
    enc = encode(a)
    prefix = array_prefix({"dtype": "<f8", "scalar": False, "shape": [3]})
    assert len(prefix) == 64
    assert raw(enc) == prefix + a.tobytes()
    assert enc.checksum == sha(prefix + a.tobytes())


def test_numpy_scalar_and_complex_are_scalar_arrays():
    enc = encode(np.float32(2.5))
    assert raw(enc) == array_prefix({"dtype": "<f4", "scalar": True, "shape": []}) + \
        np.float32(2.5).tobytes()
    c = decode("array", encode(3 + 4j).buffer)
    assert isinstance(c, np.complex128) and c == 3 + 4j
    zero_d = encode(np.array(2.5, dtype=np.float32))
    assert zero_d.checksum != enc.checksum  # a 0-d array is not a scalar


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype="<i2").reshape(3, 4),
    np.arange(12, dtype=">i4").reshape(3, 4),
    np.array([1 + 2j, 3 - 4j], dtype="<c16"),
    np.array([1 + 2j], dtype="<c8"),
    np.array(["2020-01-01", "2021-06-30"], dtype="<M8[ns]"),
    np.array([5, 7], dtype="<m8[s]"),
    np.array([b"abc", b"de"], dtype="|S3"),
    np.array(["héllo", "x"], dtype="<U5"),
    np.array([True, False]),
    np.zeros(2, dtype="|V16"),
    np.zeros((0, 3)),
    np.array(7, dtype=np.uint8),
    np.zeros(3, dtype=[("a", "u1"), ("b", "<f8")]),
    np.zeros(3, dtype=np.dtype([("a", "u1"), ("b", "<f8")], align=True)),
    np.zeros(2, dtype=[("p", [("x", "<i2"), ("y", "u1")]), ("v", "<f4", (2, 3))]),
])
def test_round_trip_every_dtype(arr):
    enc = encode(arr)
    assert enc.kind == "array"
    back = decode("array", enc.buffer)
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    assert back.flags.writeable is False
    assert back.flags.c_contiguous
    assert back.tobytes() == np.ascontiguousarray(arr).tobytes() or arr.dtype.names
    assert encode(back).checksum == enc.checksum


def test_byte_order_is_kept():
    little = np.arange(4, dtype="<f8")
    big = little.astype(">f8")
    assert encode(little).checksum != encode(big).checksum
    assert decode("array", encode(big).buffer).dtype == np.dtype(">f8")


def test_layout_does_not_matter():
    base = np.arange(60, dtype=float).reshape(6, 10)
    for view in (base.T, base[::2, ::3], base[::-1], np.asfortranarray(base)):
        assert encode(view).checksum == encode(np.ascontiguousarray(view)).checksum


def test_structured_padding_is_zeroed():
    dt = np.dtype([("a", "u1"), ("b", "<f8")], align=True)  # 7 padding bytes after a
    clean = np.zeros(2, dtype=dt)
    dirty = np.frombuffer(bytes(range(1, 33)), dtype=dt).copy()
    dirty["a"] = 0
    dirty["b"] = 0
    assert encode(dirty).checksum == encode(clean).checksum
    data = raw(encode(clean))
    header = json.loads(data[10:10 + struct.unpack("<I", data[6:10])[0]])
    assert header["dtype"] == {"aligned": True, "fields": [["a", "|u1", 0], ["b", "<f8", 8]],
                               "itemsize": 16}


def test_unaligned_packed_struct():
    dt = np.dtype([("a", "u1"), ("b", "<f8")])
    arr = np.array([(1, 2.5), (3, 4.5)], dtype=dt)
    back = decode("array", encode(arr).buffer)
    assert back.dtype == dt and back.dtype.itemsize == 9
    assert back["b"].tolist() == [2.5, 4.5]


def test_object_dtype_refused():
    with pytest.raises(TypeError, match="object dtype"):
        encode(np.array([1, None], dtype=object), "argument 'a' of f")


def test_tree_example_from_the_spec():
    enc = encode({"w": np.zeros(3), "n": 2})
    assert enc.kind == "tree"
    data = raw(enc)
    h = struct.unpack("<I", data[6:10])[0]
    header = json.loads(data[10:10 + h])
    assert header == {"leaves": [[["w"], "array", 88]], "skeleton": {"n": 2, "w": None}}
    leaf = data[10 + h:10 + h + 88]
    assert leaf == raw(encode(np.zeros(3)))
    assert len(data) == 10 + h + 128  # the leaf padded to a multiple of 64
    assert enc.checksum == sha(data)


def test_tree_round_trip_and_leaf_order():
    value = {"z": [b"ab", np.arange(3)], "a": (np.float64(1.5), {"k": b""}), "n": None}
    enc = encode(value)
    back = decode("tree", enc.buffer)
    assert back["z"][0] == b"ab"
    assert back["z"][1].tolist() == [0, 1, 2]
    assert back["a"][0] == 1.5 and back["a"][1] == {"k": b""}
    assert back["n"] is None
    paths = [leaf[0] for leaf in json.loads(raw(enc)[10:10 + struct.unpack(
        "<I", raw(enc)[6:10])[0]])["leaves"]]
    assert paths == [["a", 0], ["a", 1, "k"], ["z", 0], ["z", 1]]


def test_large_array_threaded_copy_matches_hashlib():
    a = np.random.default_rng(1).random(3_000_000)  # 24 MB: the copy runs beside the hash
    enc = encode(a)
    prefix = array_prefix({"dtype": "<f8", "scalar": False, "shape": [3_000_000]})
    assert enc.checksum == sha(prefix + a.tobytes())
    assert np.array_equal(decode("array", enc.buffer), a)


def test_in_place_change_gives_new_checksum():
    a = np.arange(10.0)
    first = encode(a).checksum
    a[3] = -1
    assert encode(a).checksum != first


def test_read_only_user_array_is_still_hashed_from_content():
    a = np.arange(10.0)
    a.flags.writeable = False
    first = encode(a)
    assert encode(a).buffer is not first.buffer
    assert encode(a).checksum == first.checksum


def test_checksum_type_validation():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Checksum("ABC")
    with pytest.raises(ValueError):
        Checksum("A" * 64)
    cs = Checksum("a" * 64)
    assert cs == "a" * 64 and json.dumps(cs) == json.dumps("a" * 64)
