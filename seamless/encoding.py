"""Canonical bytes of values and their checksums (docs/transformations.md, "Identity").

Data flow and ownership:

    value ──encode()──► Encoded(kind, checksum, buffer) ──decode()──► value (read-only arrays)

- ``encode`` snapshots the value: the buffer is a new object owned by seamless (``bytes`` for
  the json/str/bytes kinds, a read-only ``numpy.uint8`` array for arrays and trees) and never
  aliases the caller's memory, so changing the caller's object later changes nothing.
- Arrays are copied and hashed in one pass (``seamless._ipc.shm_array.copy_and_hash``); the
  hash never needs a separate contiguous copy.
- ``decode`` returns views of the buffer; arrays are read-only and keep the buffer alive through
  their ``base``. Arrays that ``decode`` returned are remembered (weakly) with their checksum,
  so passing such a result on to the next transformation costs O(1): no copy, no hash
  (docs/transformations.md). Any other array, even a read-only one, is hashed from content.

numpy is imported only when an array is met: ``import seamless.encoding`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import weakref
from typing import NamedTuple

from .checksum import Checksum, _trusted

__all__ = ["Encoded", "encode", "decode", "checksum_of", "unsupported_type_message"]

ENCODING_VERSION = 1
MAGIC = b"SMLS"
_CHUNK = 1 << 20

SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, numpy arrays and scalars (not object dtype), "
    "and lists/tuples/dicts with str keys of these"
)


class Encoded(NamedTuple):
    """A value's kind, checksum and canonical bytes (a buffer owned by seamless)."""

    kind: str
    checksum: Checksum
    buffer: object


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                        allow_nan=True)


def canonical_json(value) -> str:
    """The canonical JSON text (docs/design/identity-and-cache.md, "Canonical JSON"); one
    shared encoder: json.dumps with these options would build a new one per call."""
    return _JSON.encode(value)


def type_name(value) -> str:
    """How messages name a type: its qualified name, prefixed by its module only when that
    module is private (``_thread.lock``), where the bare name would not say what it is."""
    cls = type(value)
    if cls.__module__.startswith("_"):
        return f"{cls.__module__}.{cls.__qualname__}"
    return cls.__qualname__


def unsupported_type_message(what: str, value, fix: str) -> str:
    return f"{what} has unsupported type {type_name(value)}; supported: {SUPPORTED} ({fix})"


class PendingChecksum:
    """A result checksum that a pool worker is still computing (docs/design/worker-pool.md,
    "Deferred result checksum"): the value is usable at once; whoever needs the checksum
    waits for it (``wait()``) or is called back (``add_callback``)."""

    __slots__ = ("_value", "_event", "_callbacks", "_lock")

    def __init__(self):
        import threading

        self._value = None
        self._event = threading.Event()
        self._callbacks: list = []
        self._lock = threading.Lock()

    def set(self, checksum: str):
        """Publish the checksum: callbacks (cache records) run before waiters wake, so a
        caller that waited for the checksum finds the cache entry already queued."""
        with self._lock:
            self._value = Checksum(checksum)
            callbacks, self._callbacks = self._callbacks, []
        try:
            for cb in callbacks:
                cb(self._value)
        finally:
            self._event.set()

    def done(self) -> bool:
        """True once the value is known (its callbacks may still be running)."""
        return self._value is not None

    def wait(self) -> Checksum:
        """The checksum, once it is known and every callback (cache record) has run."""
        self._event.wait()
        return self._value

    def add_callback(self, cb):
        """Call ``cb(checksum)`` once known (now, if it already is)."""
        with self._lock:
            if self._value is None:
                self._callbacks.append(cb)
                return
        cb(self._value)

    def __repr__(self):
        return f"<PendingChecksum {self._value or 'pending'}>"


def resolved(checksum) -> Checksum:
    """The checksum itself, waiting first if it is still being computed.

    Does not wait for the callbacks: it is called from them (dispatching a handle that was
    waiting for this very checksum)."""
    if type(checksum) is not PendingChecksum:
        return checksum
    value = checksum._value
    return value if value is not None else checksum.wait()


class _NoHash:
    """Stands in for a hasher when the checksum is computed later (deferred results)."""

    def update(self, data):
        return None


class _Unsupported(Exception):
    """Internal: the offending value found during the scan (becomes a TypeError)."""

    def __init__(self, value, detail=""):
        super().__init__(detail)
        self.value = value
        self.detail = detail


# ---------------------------------------------------------------- classification

def _numpy():
    return sys.modules.get("numpy")


def _is_array_leaf(v, np) -> bool:
    if np is not None and isinstance(v, (np.ndarray, np.generic)):
        if v.dtype.hasobject:
            raise _Unsupported(v, " (object dtype)")
        return True
    return isinstance(v, complex)


def _scan(v, np) -> bool:
    """Check that ``v`` is a supported json/tree value; True when it holds an array or bytes
    leaf."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return False
    if isinstance(v, (list, tuple)):
        leafy = False
        for item in v:
            leafy = _scan(item, np) or leafy
        return leafy
    if isinstance(v, dict):
        leafy = False
        for key, item in v.items():
            if not isinstance(key, str):
                raise _Unsupported(v, f" (dict key {key!r} is of type {type_name(key)}, not str)")
            leafy = _scan(item, np) or leafy
        return leafy
    if isinstance(v, (bytes, bytearray, memoryview)) or _is_array_leaf(v, np):
        return True
    raise _Unsupported(v)


# ---------------------------------------------------------------- encoding

def encode(value, what: str = "value", fix: str = "pass the data, not the object",
           defer: bool = False, claim: bool = False) -> Encoded:
    """Encode ``value`` into its canonical bytes; ``what`` names it in errors ("argument 'x' of f").

    ``defer=True`` (pool workers, for results): an array or tree built in a shared-memory
    segment is copied without hashing and its checksum is ``None``; the caller hashes the
    buffer later, off the receiver's path.  ``claim=True`` as well (the caller holds the only
    reference to ``value``): an array the numpy allocator put in a segment is used in place
    (a ``ClaimedBuffer``), with no copy at all.
    """
    cls = type(value)
    if cls is int or cls is str:
        hit = _small_cache.get((cls, value))
        if hit is not None:
            return hit
    try:
        return _encode(value, what, cls, defer, claim)
    except _Unsupported as exc:
        if getattr(type(exc.value), "_seamless_handle", False):
            raise TypeError(f"{what} holds a transformation inside a list, tuple or dict; "
                            f"pass it as its own argument (a dependency)") from None
        msg = unsupported_type_message(what, exc.value, fix)
        raise TypeError(msg.replace("; supported", exc.detail + "; supported", 1)) from None


def encode_argument(value, what: str = "value") -> Encoded:
    """``encode()`` for the arguments a handle keeps: the same kind and bytes, but the checksum
    of a json, str or bytes value is a plain ``str``, not a ``Checksum``.

    A handle lives as long as the caller keeps it, often by the thousand; a plain ``str`` is
    not tracked by the cyclic garbage collector, nor then is the ``Encoded`` tuple holding it
    (nor the argument dict holding that), so collections have far fewer objects to walk.
    """
    cls = type(value)
    if cls is int:
        hit = _small_plain.get(value)
        if hit is None:
            data = int.__repr__(value).encode()
            hit = Encoded("json", hashlib.sha256(data).hexdigest(), data)
            if len(_small_plain) >= _SMALL_CACHE_MAX:
                _small_plain.clear()
            _small_plain[value] = hit
        return hit
    enc = encode(value, what)
    checksum = enc.checksum
    if type(checksum) is Checksum:
        return Encoded(enc.kind, str.__str__(checksum), enc.buffer)
    return enc


_small_plain: dict = {}  # int -> its Encoded with a plain-str checksum (see encode_argument)


def _json_encoded(data: bytes) -> Encoded:
    return Encoded("json", _trusted(hashlib.sha256(data).hexdigest()), data)


def _encode(value, what, cls, defer=False, claim=False) -> Encoded:
    if cls is int:
        enc = _json_encoded(int.__repr__(value).encode())
        _remember_small(cls, value, enc)
        return enc
    if cls is float or cls is bool or value is None:
        return _json_encoded(canonical_json(value).encode())
    np = _numpy()
    if cls is str or isinstance(value, str):
        try:
            data = str(value).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} is a str with a lone surrogate at position {exc.start} "
                             f"(pass bytes for binary data)") from None
        enc = Encoded("str", _trusted(hashlib.sha256(data).hexdigest()), data)
        if cls is str and len(data) <= 64:
            _remember_small(cls, value, enc)
        return enc
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = value.tobytes() if isinstance(value, memoryview) else bytes(value)
        return Encoded("bytes", _trusted(hashlib.sha256(data).hexdigest()), data)
    if _is_array_leaf(value, np):
        known = _known_array(value)
        if known is not None:
            return known
        return _encode_array(value, what, defer, claim)
    if _scan(value, np):
        return _encode_tree(value, what, defer)
    try:
        text = canonical_json(value)
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} holds a str with a lone surrogate (pass bytes for binary data)"
                         ) from exc
    return _json_encoded(data)


_small_cache: dict = {}
# Small on purpose: every entry is a few objects the cyclic garbage collector walks on each
# full collection; a few thousand cover the loops that repeat small arguments.
_SMALL_CACHE_MAX = 4096


def _remember_small(cls, value, enc):
    """Memoise the encoding of exact ints and short strs: call-heavy loops pass the same ones."""
    if len(_small_cache) >= _SMALL_CACHE_MAX:
        _small_cache.clear()
    _small_cache[(cls, value)] = enc


def checksum_of(value, what: str = "value") -> Checksum:
    """The checksum of a value's canonical bytes."""
    return encode(value, what).checksum


# ---------------------------------------------------------------- arrays

def _dtype_descr(dt):
    """The header's dtype (docs/design/identity-and-cache.md, "Arrays"): ``dtype.str``, or a
    structured/subarray description."""
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return {"base": _dtype_descr(base), "shape": list(shape)}
    if dt.names is not None:
        fields = [[name, _dtype_descr(dt.fields[name][0]), dt.fields[name][1]]
                  for name in dt.names]
        return {"aligned": bool(dt.isalignedstruct), "fields": fields, "itemsize": dt.itemsize}
    return dt.str


def _dtype_from(d):
    np = _import_numpy()
    if isinstance(d, str):
        return np.dtype(d)
    if "base" in d:
        return np.dtype((_dtype_from(d["base"]), tuple(d["shape"])))
    spec = {
        "names": [f[0] for f in d["fields"]],
        "formats": [_dtype_from(f[1]) for f in d["fields"]],
        "offsets": [f[2] for f in d["fields"]],
        "itemsize": d["itemsize"],
    }
    return np.dtype(spec, align=bool(d["aligned"]))


def _import_numpy():
    import numpy

    return numpy


def _prefix(kind_code: bytes, header: dict) -> bytes:
    """Magic, version, kind, H and the header padded so the payload starts at a multiple of 64."""
    text = canonical_json(header).encode("utf-8")
    total = 10 + len(text)
    padded = -(-total // 64) * 64
    h = padded - 10
    return MAGIC + bytes([ENCODING_VERSION]) + kind_code + struct.pack("<I", h) + text + \
        b" " * (h - len(text))


def _array_parts(value):
    """(array, canonical prefix, payload size) of an array leaf."""
    np = _import_numpy()
    scalar = isinstance(value, (np.generic, complex))
    arr = np.asarray(np.complex128(value) if isinstance(value, complex) and not
                     isinstance(value, np.generic) else value)
    header = {"dtype": _dtype_descr(arr.dtype), "scalar": scalar, "shape": list(arr.shape)}
    return arr, _prefix(b"A", header), arr.size * arr.dtype.itemsize


def _write_array(arr, prefix: bytes, nbytes: int, dst, hasher):
    """Write an array's canonical bytes into ``dst`` (uint8, exact size), feeding ``hasher``."""
    np = _import_numpy()
    from seamless._ipc import shm_array

    p = len(prefix)
    dst[:p] = np.frombuffer(prefix, np.uint8)
    hasher.update(prefix)
    if nbytes == 0:
        return
    payload = dst[p:p + nbytes]
    if arr.dtype.names is not None:
        _copy_structured(payload, arr)
        shm_array.hash_into(payload, hasher)
    elif arr.flags.c_contiguous:
        shm_array.copy_and_hash(arr.reshape(-1).view(np.uint8), payload, hasher)
    else:
        typed = payload.view(arr.dtype).reshape(arr.shape)
        rows = max(1, _CHUNK // max(1, nbytes // max(1, arr.shape[0])))
        row_bytes = nbytes // arr.shape[0]
        for start in range(0, arr.shape[0], rows):
            stop = min(arr.shape[0], start + rows)
            typed[start:stop] = arr[start:stop]
            hasher.update(payload[start * row_bytes:stop * row_bytes])


def _copy_structured(payload, arr):
    """Copy field by field into zeroed memory, so padding bytes are zero
    (docs/design/identity-and-cache.md, "Arrays")."""
    np = _import_numpy()
    payload[:] = 0
    typed = payload.view(arr.dtype).reshape(arr.shape)
    _copy_fields(typed, arr, np)


def _copy_fields(dst, src, np):
    for name in src.dtype.names:
        d, s = dst[name], src[name]
        if s.dtype.names is not None:
            _copy_fields(d, s, np)
        else:
            np.copyto(d, s)


# ---------------------------------------------------------------- where buffers live

_segment_threshold = None


def use_segments(threshold) -> None:
    """Build buffers of ``threshold`` bytes or more in shared-memory segments (None: never).

    Set while a worker pool is active and inside pool workers, so a large argument or result
    is copied and hashed once, straight into the memory that travels (docs/worker-pool.md).
    """
    global _segment_threshold
    _segment_threshold = threshold


class _PrivateBuffer:
    """Process-private memory for a canonical buffer; read-only once filled."""

    def __init__(self, n: int):
        self.array = _import_numpy().empty(n, _import_numpy().uint8)

    def finish(self):
        buf, self.array = self.array, None
        buf.flags.writeable = False
        return buf


class _SegmentBuffer:
    """A segment for a canonical buffer: filled through a writable mapping that is dropped
    before the buffer is shared; the buffer handed on is a read-only mapping."""

    def __init__(self, n: int, what: str):
        from seamless._ipc import shm_array

        self.shm_array = shm_array
        self.segment = shm_array.Segment.create(n, what)
        # A recycled segment's pages are touched: faulting them in at once is much cheaper.
        self._writable = self.segment.writable(populate=self.segment.reused)
        self.array = _import_numpy().frombuffer(self._writable, _import_numpy().uint8)

    def finish(self):
        self.array = None
        self._writable.release()
        return self.segment.readonly()


class ClaimedBuffer:
    """A worker's result whose canonical bytes are already in a segment: the numpy allocator
    gave the array segment memory, and ``shm_array.claim`` wrote the canonical prefix in front
    of its data (docs/worker-pool.md, "What travels how": results born in segments, no copy).

    ``segment`` (owning a duplicate descriptor) is what travels; ``array`` and ``prefix`` are
    what the worker hashes once the result is sent.
    """

    __slots__ = ("segment", "array", "prefix")

    def __init__(self, segment, array, prefix: bytes):
        self.segment = segment
        self.array = array
        self.prefix = prefix

    @property
    def nbytes(self) -> int:
        return self.segment.size

    def sha256(self) -> str:
        """The checksum of the canonical bytes, hashed from the worker's own memory."""
        from seamless._ipc import shm_array

        hasher = hashlib.sha256(self.prefix)
        shm_array.hash_into(self.array.reshape(-1).view(_import_numpy().uint8), hasher)
        shm_array.add_hashed(self.array.nbytes)
        return hasher.hexdigest()


#: Set in Dask workers (seamless/dask/task.py): without segments, a result of this many bytes
#: or more that only the body held is kept where it is (a ``ClaimedBuffer`` without a segment)
#: and the caller hashes it in place, instead of copying it into a canonical buffer.
in_place_threshold = None


def _claim(arr, prefix: bytes):
    """The result array's own segment with the prefix written in front, or None."""
    if _segment_threshold is None:
        if in_place_threshold is None or not arr.flags.c_contiguous \
                or len(prefix) + arr.nbytes < in_place_threshold:
            return None
        return ClaimedBuffer(None, arr, prefix)
    if len(prefix) + arr.nbytes < _segment_threshold:
        return None
    from seamless._ipc import shm_array

    if not shm_array.allocator_installed():
        return None
    segment = shm_array.claim(arr, prefix)
    return None if segment is None else ClaimedBuffer(segment, arr, prefix)


def _allocate(n: int, what: str):
    if _segment_threshold is not None and n >= _segment_threshold:
        return _SegmentBuffer(n, what)
    return _PrivateBuffer(n)


def _count_segment_fill(alloc, nbytes: int, hashed: bool = True):
    if isinstance(alloc, _SegmentBuffer):
        alloc.shm_array.add_copied(nbytes)
        if hashed:
            alloc.shm_array.add_hashed(nbytes)


def _hasher_for(alloc, defer: bool):
    """A real hasher, or none at all for a deferred result built in a segment."""
    if defer and isinstance(alloc, _SegmentBuffer):
        return None, _NoHash()
    h = hashlib.sha256()
    return h, h


def _encode_array(value, what="value", defer=False, claim=False) -> Encoded:
    arr, prefix, nbytes = _array_parts(value)
    if claim and defer and arr is value and arr.dtype.names is None:
        claimed = _claim(arr, prefix)
        if claimed is not None:
            return Encoded("array", None, claimed)
    alloc = _allocate(len(prefix) + nbytes, what)
    real, hasher = _hasher_for(alloc, defer)
    _write_array(arr, prefix, nbytes, alloc.array, hasher)
    _count_segment_fill(alloc, nbytes, hashed=real is not None)
    checksum = _trusted(real.hexdigest()) if real is not None else None
    return Encoded("array", checksum, alloc.finish())


# ---------------------------------------------------------------- trees

def _leaves(value, path, out, np):
    """Skeleton of ``value`` with leaves as None; collects (path, leaf) depth-first, keys sorted."""
    if isinstance(value, dict):
        return {k: _leaves(value[k], path + [k], out, np) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_leaves(item, path + [i], out, np) for i, item in enumerate(value)]
    if isinstance(value, (bytes, bytearray, memoryview)) or _is_array_leaf(value, np):
        out.append((path, value))
        return None
    return value


def _encode_tree(value, what="value", defer=False) -> Encoded:
    np = _import_numpy()
    found: list = []
    skeleton = _leaves(value, [], found, np)
    plans = []
    for path, leaf in found:
        if isinstance(leaf, (bytes, bytearray, memoryview)):
            data = leaf.tobytes() if isinstance(leaf, memoryview) else bytes(leaf)
            plans.append((path, "bytes", data, None, len(data)))
        else:
            arr, prefix, nbytes = _array_parts(leaf)
            plans.append((path, "array", arr, prefix, len(prefix) + nbytes))
    header = {"leaves": [[p, kind, size] for p, kind, _, _, size in plans], "skeleton": skeleton}
    prefix = _prefix(b"T", header)
    total = len(prefix) + sum(-(-size // 64) * 64 for *_, size in plans)
    alloc = _allocate(total, what)
    buf = alloc.array
    real, hasher = _hasher_for(alloc, defer)
    buf[:len(prefix)] = np.frombuffer(prefix, np.uint8)
    hasher.update(prefix)
    pos = len(prefix)
    for _path, kind, item, leaf_prefix, size in plans:
        if kind == "bytes":
            buf[pos:pos + size] = np.frombuffer(item, np.uint8)
            hasher.update(item)
        else:
            _write_array(item, leaf_prefix, size - len(leaf_prefix), buf[pos:pos + size], hasher)
        pad = -(-size // 64) * 64 - size
        buf[pos + size:pos + size + pad] = 0
        hasher.update(bytes(pad))
        pos += size + pad
    del buf
    _count_segment_fill(alloc, total, hashed=real is not None)
    checksum = _trusted(real.hexdigest()) if real is not None else None
    return Encoded("tree", checksum, alloc.finish())


# ---------------------------------------------------------------- decoding

def _read_prefix(mv, kind_code: bytes):
    if bytes(mv[:4]) != MAGIC or mv[4] != ENCODING_VERSION or bytes(mv[5:6]) != kind_code:
        raise ValueError("buffer is not a canonical seamless array or tree (bad magic, version "
                         "or kind); the cache may hold data of another encoding")
    h = struct.unpack("<I", bytes(mv[6:10]))[0]
    return json.loads(bytes(mv[10:10 + h])), 10 + h


def _decode_array(mv):
    np = _import_numpy()
    header, offset = _read_prefix(mv, b"A")
    dtype = _dtype_from(header["dtype"])
    shape = tuple(header["shape"])
    count = 1
    for n in shape:
        count *= n
    if dtype.itemsize == 0 or count == 0:
        arr = np.empty(shape, dtype)
        arr.flags.writeable = False
    else:
        arr = np.frombuffer(mv, dtype, count, offset).reshape(shape)
    if header["scalar"]:
        return arr[()]
    return arr


def _decode_tree(mv):
    header, pos = _read_prefix(mv, b"T")
    values = []
    for _path, kind, size in header["leaves"]:
        part = mv[pos:pos + size]
        values.append(part.tobytes() if kind == "bytes" else _decode_array(part))
        pos += -(-size // 64) * 64
    return _place(header["skeleton"], [tuple(p) for p, _, _ in header["leaves"]], values)


def _place(skeleton, paths, values):
    for path, leaf in zip(paths, values):
        node = skeleton
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = leaf
    return skeleton


_msgspec_decode = None


def _fast_json():
    """msgspec's JSON decoder once msgspec is loaded (the worker pool loads it), else None:
    importing it here would slow down the start of the command-line tools.  It reads the
    canonical JSON (docs/design/identity-and-cache.md, "Canonical JSON") to the same values as
    ``json.loads``, about ten times faster,
    and raises ``ValueError`` (``msgspec.DecodeError``) on what only the json module accepts
    (``NaN``, ``Infinity``, out-of-range numbers, lone surrogates)."""
    global _msgspec_decode
    if _msgspec_decode is None:
        msgspec = sys.modules.get("msgspec")
        if msgspec is None or not hasattr(msgspec, "json"):
            return None
        _msgspec_decode = msgspec.json.Decoder().decode
    return _msgspec_decode


def decode(kind: str, buffer, checksum=None):
    """Decode canonical bytes of ``kind``; arrays come back read-only views of ``buffer``."""
    if kind == "json":
        decoder = _fast_json()
        if decoder is not None:
            try:
                return decoder(buffer)
            except ValueError:  # NaN, infinities, lone surrogates: the json module reads them
                pass
        return json.loads(bytes(buffer))
    if kind == "str":
        return bytes(buffer).decode("utf-8")
    if kind == "bytes":
        return buffer if type(buffer) is bytes else bytes(buffer)
    mv = memoryview(buffer).cast("B").toreadonly()
    if kind == "array":
        value = _decode_array(mv)
        np = _import_numpy()
        if checksum is not None and isinstance(value, np.ndarray):
            _remember_array(value, Encoded("array", checksum, buffer))
        return value
    if kind == "tree":
        return _decode_tree(mv)
    raise ValueError(f"unknown value kind {kind!r} (expected array, bytes, str, json or tree)")


# ---------------------------------------------------------------- known results

_known: dict = {}


def _remember_array(arr, enc: Encoded):
    """Remember a decoded result array so passing it on costs O(1)
    (docs/design/identity-and-cache.md, "Passing a result on")."""
    key = id(arr)
    ref = weakref.ref(arr, lambda _r, key=key: _known.pop(key, None))
    _known[key] = (ref, enc)


def _known_array(value):
    entry = _known.get(id(value))
    if entry is None or entry[0]() is not value:
        return None
    return entry[1]
