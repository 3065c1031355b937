"""seamless._ipc: both shm_array backends (compiled and pure twin) and the backend choice.

Every behaviour test runs once per backend through the ``shm`` fixture, which
imports each implementation by its own module name, whatever seamless._ipc
chose for this process.  Import-time behaviour (SEAMLESS_PUREPYTHON, a broken
compiled module) is tested in child interpreters started with sys.executable
and waited for.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import mmap
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from seamless.errors import BackendWarning, ConfigurationError

MiB = 1 << 20
SIZES = [0, 1, MiB - 1, MiB, MiB + 1, 9 * MiB + 123]
PROJECT_ROOT = pathlib.Path(importlib.import_module("seamless.errors").__file__).parents[1]


def _import_ipc():
    # A missing compiled module is the subject of a subprocess test, not an error here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendWarning)
        return importlib.import_module("seamless._ipc")


def _compiled_module():
    ipc = _import_ipc()
    chosen = ipc.shm_array
    try:
        return importlib.import_module("seamless._ipc.shm_array")
    finally:
        # Importing a submodule rebinds the package attribute; keep the process's choice.
        ipc.shm_array = chosen


@pytest.fixture(params=["cython", "python"])
def shm(request):
    """The shm_array module of one backend."""
    if request.param == "python":
        return importlib.import_module("seamless._ipc._pure.shm_array")
    try:
        return _compiled_module()
    except ImportError as exc:
        pytest.skip(f"compiled seamless._ipc.shm_array is not built ({exc}); "
                    f"build it with: pip install -e . --no-build-isolation")


def _random_bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _os_threads() -> set:
    # threading.enumerate() does not see the compiled module's pthread; the kernel does.
    return set(os.listdir("/proc/self/task"))


def _threads_left_since(before: set, timeout: float = 10.0) -> set:
    """OS threads that exist now and did not before (threads of others may have ended)."""
    # A joined thread can linger in /proc for a moment after pthread_join() returns.
    deadline = time.monotonic() + timeout
    left = _os_threads() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = _os_threads() - before
    return left


class RecordingHasher:
    """Keeps every chunk it is given (to check chunking, order and lifetime)."""

    def __init__(self):
        self.chunks = []

    def update(self, chunk):
        self.chunks.append(chunk)


class FailingHasher:
    """A sha256 whose update() raises on the call numbered ``fail_at`` (0-based)."""

    def __init__(self, fail_at: int):
        self.fail_at = fail_at
        self.calls = 0
        self.error = RuntimeError(f"hasher failed on update {fail_at}")
        self._sha = hashlib.sha256()

    def update(self, chunk):
        if self.calls == self.fail_at:
            raise self.error
        self.calls += 1
        self._sha.update(chunk)


# --- results -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_copy_and_hash_matches_hashlib_and_copies(shm, size):
    src = _random_bytes(size, seed=size)
    dst = np.zeros(size, dtype=np.uint8)
    hasher = hashlib.sha256()
    shm.copy_and_hash(src, dst, hasher)
    assert hasher.hexdigest() == hashlib.sha256(src.tobytes()).hexdigest()
    assert np.array_equal(dst, src)


@pytest.mark.parametrize("size", SIZES)
def test_hash_into_matches_hashlib(shm, size):
    src = _random_bytes(size, seed=size + 1)
    hasher = hashlib.sha256()
    shm.hash_into(src, hasher)
    assert hasher.hexdigest() == hashlib.sha256(src.tobytes()).hexdigest()


def test_large_sizes_cross_the_compiled_thread_threshold(shm):
    # The largest size must run the compiled module's helper-thread path, the smaller ones not.
    threshold = getattr(shm, "_THREAD_MIN_BYTES", None)
    if threshold is None:
        assert shm.__name__ == "seamless._ipc._pure.shm_array"
    else:
        assert MiB + 1 < threshold <= 9 * MiB + 123


def test_update_gets_read_only_1mib_chunks_in_order(shm):
    size = 3 * MiB + 5
    src = bytearray(_random_bytes(size, seed=7).tobytes())
    for call in ("copy_and_hash", "hash_into"):
        hasher = RecordingHasher()
        if call == "copy_and_hash":
            shm.copy_and_hash(src, bytearray(size), hasher)
        else:
            shm.hash_into(src, hasher)
        assert [len(c) for c in hasher.chunks] == [MiB, MiB, MiB, 5], call
        assert all(isinstance(c, memoryview) and c.readonly for c in hasher.chunks), call
        assert b"".join(bytes(c) for c in hasher.chunks) == bytes(src), call


def test_empty_buffer_makes_no_update_call(shm):
    hasher = RecordingHasher()
    shm.copy_and_hash(b"", bytearray(), hasher)
    shm.hash_into(b"", hasher)
    assert hasher.chunks == []


def test_kept_chunks_stay_valid_after_src_is_dropped(shm):
    data = _random_bytes(9 * MiB + 123, seed=3)
    expected = data.tobytes()
    hasher = RecordingHasher()
    shm.copy_and_hash(data, np.empty_like(data), hasher)
    del data
    gc.collect()
    assert b"".join(bytes(c) for c in hasher.chunks) == expected


@pytest.mark.parametrize("make", [
    pytest.param(lambda: np.arange(12, dtype=np.float64).reshape(3, 4), id="float64-2d"),
    pytest.param(lambda: np.arange(6, dtype=np.complex128), id="complex128"),
    pytest.param(lambda: np.arange(6).astype("datetime64[s]"), id="datetime64"),
    pytest.param(lambda: np.arange(6).astype("timedelta64[ms]"), id="timedelta64"),
    pytest.param(lambda: np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
                 id="structured"),
    pytest.param(lambda: np.array([True, False, True]), id="bool"),
    pytest.param(lambda: np.array(2.5), id="0-d"),
    pytest.param(lambda: np.zeros((3, 0)), id="empty-2d"),
    pytest.param(lambda: np.array(["ab", "cde"]), id="unicode"),
])
def test_numpy_arrays_of_any_dtype(shm, make):
    src = make()
    dst = np.zeros_like(src)
    hasher = hashlib.sha256()
    shm.copy_and_hash(src, dst, hasher)
    assert dst.tobytes() == src.tobytes()
    assert hasher.hexdigest() == hashlib.sha256(src.tobytes()).hexdigest()
    again = hashlib.sha256()
    shm.hash_into(src, again)
    assert again.digest() == hasher.digest()


def test_bytes_bytearray_memoryview_and_mmap(shm):
    payload = _random_bytes(MiB + 17, seed=5).tobytes()
    expected = hashlib.sha256(payload).hexdigest()
    with mmap.mmap(-1, len(payload)) as target:
        dsts = [bytearray(len(payload)), memoryview(bytearray(len(payload))), target]
        for src in (payload, bytearray(payload), memoryview(payload)):
            for dst in dsts:
                hasher = hashlib.sha256()
                shm.copy_and_hash(src, dst, hasher)
                assert hasher.hexdigest() == expected
                assert bytes(dst) == payload
                dst[:] = bytes(len(payload))


def test_dst_bytearray_is_released_after_the_call(shm):
    # A held export would make the bytearray refuse to resize (BufferError).
    dst = bytearray(9 * MiB + 123)
    shm.copy_and_hash(bytes(len(dst)), dst, hashlib.sha256())
    dst.extend(b"x")
    with pytest.raises(RuntimeError):
        shm.copy_and_hash(bytes(len(dst)), dst, FailingHasher(fail_at=1))
    dst.extend(b"y")
    assert len(dst) == 9 * MiB + 125


# --- bad inputs ---------------------------------------------------------------------------------

def _non_contiguous():
    return np.zeros((4, 4))[:, :2]


BAD_COPIES = [
    pytest.param(lambda: (b"abc", bytearray(4)), ValueError,
                 r"^dst has 4 bytes but src has 3 \(dst must have exactly src's nbytes\)$",
                 id="size-mismatch"),
    pytest.param(lambda: (b"abc", b"xyz"), ValueError,
                 r"^dst must be writable, got a read-only bytes \(pass a bytearray",
                 id="read-only-bytes"),
    pytest.param(lambda: (b"abc", _readonly_array(3)), ValueError,
                 r"^dst must be writable, got a read-only numpy\.ndarray", id="read-only-array"),
    pytest.param(lambda: (_non_contiguous(), np.zeros(8)), ValueError,
                 r"^src must be C-contiguous, got a non-contiguous numpy\.ndarray with shape "
                 r"\(4, 2\) and strides \(32, 8\) \(copy it first, e\.g\. "
                 r"numpy\.ascontiguousarray\(src\)\)$",
                 id="src-non-contiguous"),
    pytest.param(lambda: (np.zeros(8), _non_contiguous()), ValueError,
                 r"^dst must be C-contiguous, got a non-contiguous numpy\.ndarray",
                 id="dst-non-contiguous"),
    pytest.param(lambda: (np.arange(8).astype("datetime64[s]")[::2], np.zeros(4)), ValueError,
                 r"^src must be C-contiguous, got a non-contiguous numpy\.ndarray with shape "
                 r"\(4,\) and strides \(16,\)",
                 id="datetime-non-contiguous"),
    pytest.param(lambda: (3, bytearray(3)), TypeError,
                 r"^src must support the buffer protocol \(bytes, bytearray, memoryview, "
                 r"numpy array, mmap\), got int$",
                 id="src-not-a-buffer"),
    pytest.param(lambda: (b"abc", [0, 0, 0]), TypeError,
                 r"^dst must support the buffer protocol .*, got list$",
                 id="dst-not-a-buffer"),
    pytest.param(lambda: _overlapping(), ValueError,
                 r"^src and dst overlap in memory \(copy into a separate buffer\)$",
                 id="overlap"),
]


def _readonly_array(n):
    arr = np.zeros(n, dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def _overlapping():
    backing = bytearray(10)
    return memoryview(backing)[:6], memoryview(backing)[4:]


@pytest.mark.parametrize("make, exc_type, pattern", BAD_COPIES)
def test_copy_and_hash_rejects_bad_buffers_before_copying(shm, make, exc_type, pattern):
    src, dst = make()
    hasher = RecordingHasher()
    with pytest.raises(exc_type, match=pattern):
        shm.copy_and_hash(src, dst, hasher)
    assert hasher.chunks == []


def test_hash_into_rejects_bad_buffers(shm):
    with pytest.raises(ValueError, match=r"^src must be C-contiguous"):
        shm.hash_into(_non_contiguous(), hashlib.sha256())
    with pytest.raises(TypeError, match=r"^src must support the buffer protocol .*got str$"):
        shm.hash_into("text", hashlib.sha256())


def test_hasher_without_update_raises_before_copying(shm):
    dst = bytearray(16)
    with pytest.raises(AttributeError, match="update"):
        shm.copy_and_hash(b"x" * 16, dst, object())
    assert dst == bytearray(16)


# --- failures inside the call ---------------------------------------------------------------------

@pytest.mark.parametrize("size, fail_at", [(MiB + 1, 1), (9 * MiB + 123, 0), (9 * MiB + 123, 3),
                                           (9 * MiB + 123, 9)])
def test_hasher_exception_propagates_and_leaves_no_thread(shm, size, fail_at):
    src = _random_bytes(size, seed=11)
    before = _os_threads()
    hasher = FailingHasher(fail_at)
    with pytest.raises(RuntimeError) as info:
        shm.copy_and_hash(src, np.empty_like(src), hasher)
    assert info.value is hasher.error
    assert hasher.calls == fail_at
    assert _threads_left_since(before) == set()
    # Nothing is left half-done: the next call works and matches hashlib.
    ok = hashlib.sha256()
    dst = np.empty_like(src)
    shm.copy_and_hash(src, dst, ok)
    assert ok.hexdigest() == hashlib.sha256(src.tobytes()).hexdigest()
    assert np.array_equal(dst, src)


def test_signal_handler_exception_stops_the_call(shm):
    # A Python signal handler (Ctrl-C's KeyboardInterrupt, here SIGUSR1's) runs between
    # chunks; its exception propagates after the copy thread is joined.
    class Interrupted(Exception):
        pass

    def on_signal(signum, frame):
        raise Interrupted()

    calls = []

    class SignallingHasher:
        def update(self, chunk):
            calls.append(len(chunk))
            if len(calls) == 2:
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    src = _random_bytes(9 * MiB + 123, seed=17)
    before = _os_threads()
    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with pytest.raises(Interrupted):
            shm.copy_and_hash(src, np.empty_like(src), SignallingHasher())
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert 2 <= len(calls) <= 3
    assert _threads_left_since(before) == set()


def test_many_large_calls_leave_no_thread(shm):
    src = _random_bytes(5 * MiB, seed=13)
    dst = np.empty_like(src)
    before = _os_threads()
    for _ in range(20):
        shm.copy_and_hash(src, dst, hashlib.sha256())
    assert _threads_left_since(before) == set()


# --- backend choice ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, pure", [
    ("1", True), ("true", True), ("YES", True), (" yes ", True),
    ("0", False), ("false", False), ("No", False), ("", False),
])
def test_purepython_switch_values(value, pure):
    ipc = _import_ipc()
    assert ipc._purepython_requested({"SEAMLESS_PUREPYTHON": value}) is pure
    assert ipc._purepython_requested({}) is False


def test_purepython_switch_bad_value():
    ipc = _import_ipc()
    with pytest.raises(ConfigurationError, match=r"^SEAMLESS_PUREPYTHON must be one of .*, "
                                                 r"got 'maybe'") as info:
        ipc._purepython_requested({"SEAMLESS_PUREPYTHON": "maybe"})
    assert info.value.source == "SEAMLESS_PUREPYTHON"
    assert info.value.value == "maybe"


def test_backend_attributes_agree():
    ipc = _import_ipc()
    assert set(ipc.backends()) == {"shm_array", "flags", "window"}
    assert ipc.BACKEND == ("cython" if set(ipc.backends().values()) == {"cython"} else "python")
    expected = {"cython": "seamless._ipc.shm_array",
                "python": "seamless._ipc._pure.shm_array"}[ipc.backends()["shm_array"]]
    assert ipc.shm_array.__name__ == expected


def _run_child(code: str, **env_changes) -> dict:
    env = dict(os.environ)
    env.pop("SEAMLESS_PUREPYTHON", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(env_changes)
    # Run outside the source tree: with -c, the cwd comes first on sys.path, and the checkout's
    # seamless/ (without a built extension) would shadow the installed package.
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CHILD_REPORT = """
    import hashlib, json, logging, warnings
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.name, record.levelname, record.getMessage()))
    logging.getLogger("seamless").addHandler(Keep())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import seamless._ipc as ipc
        backends = ipc.backends()  # modules load on first use
    h = hashlib.sha256()
    dst = bytearray(5)
    ipc.shm_array.copy_and_hash(b"hello", dst, h)
    print(json.dumps({
        "backend": ipc.BACKEND, "backends": backends, "module": ipc.shm_array.__name__,
        "records": records, "ok": h.hexdigest() == hashlib.sha256(b"hello").hexdigest()
                                  and dst == b"hello",
        "warnings": [(w.category.__name__, str(w.message)) for w in caught],
    }))
"""


def test_purepython_env_selects_twin_and_logs_once():
    out = _run_child(_CHILD_REPORT, SEAMLESS_PUREPYTHON="1")
    assert out["backend"] == "python"
    assert out["backends"] == {"shm_array": "python", "flags": "python", "window": "python"}
    assert out["module"] == "seamless._ipc._pure.shm_array"
    assert out["ok"]
    assert out["warnings"] == []
    assert len(out["records"]) == 1
    name, level, message = out["records"][0]
    assert [name, level] == ["seamless", "WARNING"]
    assert "SEAMLESS_PUREPYTHON=1" in message and "pure-Python" in message


def test_broken_compiled_module_warns_once_and_uses_twin():
    out = _run_child(textwrap.dedent("""
        import sys
        class BrokenCompiled:
            def find_spec(self, name, path=None, target=None):
                if name == "seamless._ipc.shm_array":
                    raise ImportError("simulated: undefined symbol seamless_missing")
                return None
        sys.meta_path.insert(0, BrokenCompiled())
    """) + textwrap.dedent(_CHILD_REPORT))
    assert out["backend"] == "python"
    assert out["backends"] == {"shm_array": "python", "flags": "cython", "window": "cython"}
    assert out["module"] == "seamless._ipc._pure.shm_array"
    assert out["ok"]
    assert out["records"] == []
    assert out["warnings"] == [[
        "BackendWarning",
        "seamless._ipc.shm_array: compiled module not available (ImportError: simulated: "
        "undefined symbol seamless_missing); using the slower pure-Python twin (reinstall from "
        "source with Cython>=3.0,<4: pip install --force-reinstall .)"]]


def test_compiled_backend_is_chosen_by_default():
    try:
        _compiled_module()
    except ImportError as exc:
        pytest.skip(f"compiled seamless._ipc.shm_array is not built ({exc})")
    out = _run_child(_CHILD_REPORT, SEAMLESS_PUREPYTHON="0")
    # BACKEND is "cython" only when every module is compiled.
    assert out["backends"] == {"shm_array": "cython", "flags": "cython", "window": "cython"}
    assert out["backend"] == "cython"
    assert out["module"] == "seamless._ipc.shm_array"
    assert out["ok"]
    assert out["records"] == [] and out["warnings"] == []
