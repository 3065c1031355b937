"""seamless._ipc.shm_array segments: memfds, their lifetime, allocation failures, counters, trim.

Each test runs once per backend of shm_array (the compiled module when it is built and
SEAMLESS_PUREPYTHON is unset, and the pure twin), imported by its own module name.  An
autouse fixture empties the free list around each test (so a new segment is a fresh one) and
fails any test that leaves a descriptor open.  Processes are started only where a descriptor
must cross one (``pass_fds``) or a process-wide limit is changed (RLIMIT_FSIZE).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from leaks import fd_links

import seamless._ipc
from seamless import machine
from seamless.errors import SharedMemoryError

MiB = 1 << 20
PROJECT_ROOT = pathlib.Path(importlib.import_module("seamless.errors").__file__).parents[1]


def _backends():
    params = [pytest.param("python", id="python")]
    if seamless._ipc.backends()["shm_array"] == "cython":
        params.append(pytest.param("cython", id="cython"))
    return params


def _module(backend: str):
    if backend == "python":
        return importlib.import_module("seamless._ipc._pure.shm_array")
    chosen = seamless._ipc.shm_array
    try:
        return importlib.import_module("seamless._ipc.shm_array")
    finally:
        seamless._ipc.shm_array = chosen  # importing the submodule rebinds the attribute


@pytest.fixture(params=_backends())
def segments(request):
    """The shm_array module of one backend, by its own module name; its free list is emptied
    before and after the test."""
    module = _module(request.param)
    module.trim()
    yield module
    gc.collect()
    module.trim()


def _segment_fds() -> set:
    return {fd for fd, link in fd_links().items() if link.startswith("/memfd:seamless-segment")}


pytestmark = pytest.mark.usefixtures("no_leaks")  # tests/conftest.py


@pytest.fixture
def roomy(segments, tmp_path, monkeypatch):
    """Point the memory check at a fake system with 64 GiB available and no cgroup limit."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       67108864 kB\nMemAvailable:   67108864 kB\n")
    monkeypatch.setattr(machine, "MEMINFO", str(meminfo))
    monkeypatch.setattr(machine, "PROC_CGROUP", str(tmp_path / "no-cgroup"))
    monkeypatch.setattr(machine, "CGROUP_ROOT", str(tmp_path / "no-cgroup-root"))
    return segments


def _pattern(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _run_child(code: str, pass_fds=()) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=120, pass_fds=pass_fds)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- create, fill, map ------------------------------------------------------------------------

def test_create_is_zero_filled_and_fill_copies(segments):
    data = _pattern(3 * MiB + 17)
    seg = segments.Segment.create(data.nbytes)
    assert seg.size == data.nbytes and not seg.closed and seg.fd >= 0
    assert bytes(seg.readonly()) == bytes(data.nbytes)
    seg.fill(data)
    assert bytes(seg.readonly()) == data.tobytes()
    seg.close()


def test_writable_mapping_writes_are_seen_by_readonly_mappings(segments):
    seg = segments.Segment.create(10_000)
    reader = seg.readonly()
    writer = seg.writable()
    assert not writer.readonly and reader.readonly
    writer[100:105] = b"hello"
    assert bytes(reader[100:105]) == b"hello"
    writer.release()
    assert bytes(seg.readonly()[100:105]) == b"hello"
    seg.close()


def test_fill_with_hasher_hashes_exactly_the_bytes(segments):
    data = _pattern(5 * MiB + 3, seed=1)
    seg = segments.Segment.create(data.nbytes)
    hasher = hashlib.sha256()
    seg.fill(data, hasher)
    assert hasher.hexdigest() == hashlib.sha256(data.tobytes()).hexdigest()
    assert bytes(seg.readonly()) == data.tobytes()
    seg.close()


@pytest.mark.parametrize("make", [
    lambda n: bytes(_pattern(n)),
    lambda n: bytearray(_pattern(n)),
    lambda n: memoryview(_pattern(n)),
    lambda n: _pattern(n).view("<f8").reshape(-1, 8) if n % 64 == 0 else _pattern(n),
    lambda n: _pattern(n).view("datetime64[s]"),
])
def test_fill_accepts_any_c_contiguous_buffer(segments, make):
    src = make(64 * 1024)
    raw = bytes(memoryview(np.ascontiguousarray(src).reshape(-1).view(np.uint8)))
    seg = segments.Segment.create(len(raw))
    seg.fill(src, hashlib.sha256())
    assert bytes(seg.readonly()) == raw
    seg.close()


def test_fill_rejects_wrong_size_and_non_contiguous(segments):
    seg = segments.Segment.create(100)
    with pytest.raises(ValueError, match=r"src has 99 bytes but the segment's size is 100"):
        seg.fill(b"x" * 99)
    with pytest.raises(ValueError, match=r"must be C-contiguous"):
        seg.fill(np.zeros((10, 20), np.uint8)[:, ::2])
    with pytest.raises(TypeError, match=r"buffer protocol"):
        seg.fill(object())
    seg.close()


def test_fill_drops_its_writable_mapping(segments):
    seg = segments.Segment.create(MiB)
    maps_before = pathlib.Path("/proc/self/maps").read_text().count("memfd:seamless-segment")
    seg.fill(_pattern(MiB))
    maps_after = pathlib.Path("/proc/self/maps").read_text().count("memfd:seamless-segment")
    assert maps_after == maps_before
    seg.close()


def test_readonly_array_cannot_be_made_writeable(segments):
    seg = segments.Segment.create(4096)
    seg.fill(_pattern(4096))
    view = seg.readonly()
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    arr = np.frombuffer(view, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="WRITEABLE"):
        arr.setflags(write=True)
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1
    with pytest.raises(TypeError):
        view.obj[0] = 1  # the mapping itself is PROT_READ
    seg.close()


def test_zero_size_segment_has_no_mapping(segments):
    seg = segments.Segment.create(0)
    assert seg.size == 0
    assert seg.readonly().nbytes == 0 and seg.readonly().readonly
    assert seg.writable().nbytes == 0
    seg.fill(b"", hashlib.sha256())
    assert segments.segment_id(seg.readonly()) is None
    seg.close()


def test_segment_is_not_built_directly_and_validates_size(segments):
    with pytest.raises(TypeError, match=r"Segment.create\(size\)"):
        segments.Segment()
    with pytest.raises(ValueError, match=r"size must be >= 0, got -1"):
        segments.Segment.create(-1)
    with pytest.raises(TypeError, match=r"size must be an int"):
        segments.Segment.create("3")
    with pytest.raises(TypeError, match=r"size must be an int"):
        segments.Segment.create(True)


# --- lifetime ---------------------------------------------------------------------------------

def test_descriptor_closes_when_the_last_array_goes(segments):
    base = segments.live_segments()
    seg = segments.Segment.create(MiB, recycle=False)
    seg.fill(_pattern(MiB))
    assert segments.live_segments() == base + 1
    arr = np.frombuffer(seg.readonly(), dtype=np.uint8)[10:20]
    del seg
    gc.collect()
    assert segments.live_segments() == base + 1, "the array must keep the segment alive"
    assert _segment_fds(), "the segment's descriptor must still be open"
    assert arr[0] == _pattern(MiB)[10]
    del arr
    gc.collect()
    assert segments.live_segments() == base
    assert _segment_fds() == set()


def test_segment_without_mappings_closes_when_dropped(segments):
    base = segments.live_segments()
    seg = segments.Segment.create(1000, recycle=False)
    del seg
    gc.collect()
    assert segments.live_segments() == base
    assert _segment_fds() == set()


def test_close_keeps_existing_mappings_valid(segments):
    base = segments.live_segments()
    seg = segments.Segment.create(8192)
    seg.fill(_pattern(8192, seed=3))
    sid = seg.segment_id()
    view = seg.readonly()
    seg.close()
    seg.close()  # idempotent
    assert seg.closed
    assert segments.live_segments() == base
    assert bytes(view) == _pattern(8192, seed=3).tobytes()
    assert seg.segment_id() == sid
    assert segments.segment_id(view) == sid
    with pytest.raises(ValueError, match=r"is closed"):
        seg.readonly()
    with pytest.raises(ValueError, match=r"is closed"):
        seg.fd
    assert "closed" in repr(seg)
    del view
    gc.collect()
    assert _segment_fds() == set()


def test_from_fd_takes_ownership_and_sees_the_same_segment(segments):
    seg = segments.Segment.create(5000)
    seg.fill(_pattern(5000, seed=4))
    other = segments.Segment.from_fd(os.dup(seg.fd), 3000)
    assert other.size == 3000
    assert other.segment_id() == seg.segment_id()
    assert bytes(other.readonly()) == _pattern(5000, seed=4).tobytes()[:3000]
    other.close()
    seg.close()


def test_from_fd_closes_the_descriptor_when_it_refuses_it(segments):
    seg = segments.Segment.create(100)
    dup = os.dup(seg.fd)
    cap = seg.capacity
    assert cap == segments.size_class(100) == 4096
    with pytest.raises(ValueError, match=rf"refers to a segment of {cap} bytes, smaller than the "
                                         rf"logical size {cap + 1}"):
        segments.Segment.from_fd(dup, cap + 1)
    with pytest.raises(OSError) as info:
        os.fstat(dup)
    assert info.value.errno == errno.EBADF
    read_end, write_end = os.pipe()
    with pytest.raises(ValueError, match=r"not a regular file"):
        segments.Segment.from_fd(read_end, 0)
    os.close(write_end)
    with pytest.raises(TypeError, match=r"fd must be an int"):
        segments.Segment.from_fd("3", 0)
    with pytest.raises(ValueError, match=r"fd must be a descriptor >= 0, got -1"):
        segments.Segment.from_fd(-1, 0)
    seg.close()


def test_segment_passed_to_a_child_process_reads_the_same_bytes(segments):
    data = _pattern(2 * MiB + 5, seed=5)
    seg = segments.Segment.create(data.nbytes)
    seg.fill(data)
    out = _run_child(f"""
        import hashlib, json
        from seamless._ipc import shm_array as segments
        seg = segments.Segment.from_fd({seg.fd}, {data.nbytes})
        view = seg.readonly()
        seg.close()
        print(json.dumps({{"sha": hashlib.sha256(view).hexdigest(),
                          "id": list(segments.segment_id(view)),
                          "live": segments.live_segments()}}))
    """, pass_fds=[seg.fd])
    assert out["sha"] == hashlib.sha256(data.tobytes()).hexdigest()
    assert tuple(out["id"]) == seg.segment_id()
    assert out["live"] == 0
    seg.close()


# --- segment_id ---------------------------------------------------------------------------------

def test_segment_id_of_mappings_arrays_and_other_objects(segments):
    seg = segments.Segment.create(4096)
    other = segments.Segment.create(4096)
    a, b = seg.readonly(), seg.readonly()
    assert a.obj is not b.obj
    assert segments.segment_id(a) == segments.segment_id(b) == seg.segment_id()
    arr = np.frombuffer(a, dtype=np.float64).reshape(16, 32)
    assert segments.segment_id(arr) == seg.segment_id()
    assert segments.segment_id(arr[3:, ::2].T) == seg.segment_id()
    assert segments.segment_of(arr) is seg
    assert segments.segment_id(seg.writable()) == seg.segment_id()
    assert segments.segment_id(other.readonly()) == other.segment_id() != seg.segment_id()
    assert segments.segment_id(np.zeros(10)) is None
    assert segments.segment_id(memoryview(b"abc")) is None
    assert segments.segment_id(b"abc") is None
    assert segments.segment_of(np.arange(3)) is None
    c = seg.readonly()
    c.release()
    assert segments.segment_id(c) is None
    st = os.fstat(seg.fd)
    assert seg.segment_id() == (st.st_dev, st.st_ino)
    seg.close()
    other.close()


# --- allocation failures ----------------------------------------------------------------------

SPEC_TEXT = (
    "could not allocate 400.0 MiB (419430400 bytes) of shared memory for argument 'arr' of "
    "transformation f: 310.5 MiB available under the cgroup limit memory.max = 2.0 GiB (drop "
    "arrays and handles you no longer need, call seamless.close() to release cached segments, "
    "raise the limit, or set f.local = True)")


def _fake_v2(tmp_path, limits: dict, meminfo_kb: int = 64 * 1024 * 1024):
    """A fake cgroup v2 tree: limits maps a cgroup path to (memory.max, memory.current)."""
    root = tmp_path / "cgroup"
    for path, (maximum, current) in limits.items():
        d = root / path.strip("/") if path.strip("/") else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(f"{maximum}\n")
        (d / "memory.current").write_text(f"{current}\n")
    deepest = max(limits, key=len)
    (tmp_path / "self-cgroup").write_text(f"0::{deepest}\n")
    (tmp_path / "meminfo").write_text(f"MemTotal: {meminfo_kb} kB\nMemAvailable: {meminfo_kb} kB\n")
    return str(root), str(tmp_path / "meminfo"), str(tmp_path / "self-cgroup")


def test_cgroup_shortage_gives_the_spec_message(segments, tmp_path, monkeypatch):
    limit = 2 << 30
    current = limit - int(310.5 * MiB)
    root, meminfo, proc = _fake_v2(tmp_path, {"/": ("max", 5 << 30),
                                              "/user.slice/job": (limit, current)})
    monkeypatch.setattr(machine, "CGROUP_ROOT", root)
    monkeypatch.setattr(machine, "MEMINFO", meminfo)
    monkeypatch.setattr(machine, "PROC_CGROUP", proc)
    base = segments.live_segments()
    with pytest.raises(SharedMemoryError) as info:
        segments.Segment.create(400 * MiB, "argument 'arr' of transformation f", name="f")
    assert str(info.value) == SPEC_TEXT
    assert info.value.size == 400 * MiB
    assert isinstance(info.value, MemoryError)
    assert segments.live_segments() == base


def test_available_memory_takes_the_lowest_limit(segments, tmp_path):
    root, meminfo, proc = _fake_v2(tmp_path, {"/": (8 << 30, 1 << 30),
                                              "/a": (4 << 30, 3 << 30),
                                              "/a/b": (3 << 30, 1 << 30)}, meminfo_kb=2 << 20)
    # /a has 1 GiB headroom, /a/b 2 GiB, / 7 GiB, MemAvailable 2 GiB: /a wins
    available, where = segments.available_memory(root, meminfo, proc)
    assert available == 1 << 30
    assert where == "under the cgroup limit memory.max = 4.0 GiB"
    available, where = segments.available_memory(str(tmp_path / "none"), meminfo, proc)
    assert (available, where) == (2 << 30, f"(MemAvailable in {meminfo})")
    assert segments.available_memory(str(tmp_path / "none"), str(tmp_path / "none"),
                                     str(tmp_path / "none")) == (None, "")


def test_available_memory_reads_cgroup_v1(segments, tmp_path):
    d = tmp_path / "cgroup" / "memory" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (d / "memory.usage_in_bytes").write_text(f"{256 * MiB}\n")
    top = tmp_path / "cgroup" / "memory"
    (top / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (top / "memory.usage_in_bytes").write_text(f"{5 << 30}\n")
    (tmp_path / "self").write_text("4:memory:/docker/abc\n3:cpu:/\n")
    (tmp_path / "meminfo").write_text("MemAvailable: 8388608 kB\n")
    available, where = segments.available_memory(str(tmp_path / "cgroup"),
                                                 str(tmp_path / "meminfo"), str(tmp_path / "self"))
    assert available == 768 * MiB
    assert where == "under the cgroup limit memory.limit_in_bytes = 1.0 GiB"


def test_the_safety_margin_is_named_when_it_is_what_fails(segments, tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {100 * 1024} kB\n")  # 100 MiB
    monkeypatch.setattr(machine, "MEMINFO", str(meminfo))
    monkeypatch.setattr(machine, "PROC_CGROUP", str(tmp_path / "none"))
    with pytest.raises(SharedMemoryError) as info:
        segments.Segment.create(50 * MiB)
    assert str(info.value) == (
        f"could not allocate 50.0 MiB (52428800 bytes) of shared memory: 100.0 MiB available "
        f"(MemAvailable in {meminfo}), of which 64.0 MiB is kept as a safety margin (drop "
        f"arrays and handles you no longer need, call seamless.close() to release cached "
        f"segments, or raise the limit)")
    seg = segments.Segment.create(50 * MiB, margin=0)
    assert seg.size == 50 * MiB
    seg.close()


def test_injected_failure_raises_and_leaks_nothing(roomy):
    segments = roomy
    base = segments.live_segments()
    segments._fail_next_create()
    with pytest.raises(SharedMemoryError) as info:
        segments.Segment.create(400 * MiB, "argument 'arr' of transformation f", name="f")
    assert str(info.value) == (
        "could not allocate 400.0 MiB (419430400 bytes) of shared memory for argument 'arr' of "
        "transformation f: ftruncate failed with [Errno 28] No space left on device (drop "
        "arrays and handles you no longer need, call seamless.close() to release cached "
        "segments, raise the limit, or set f.local = True)")
    assert info.value.size == 400 * MiB
    assert isinstance(info.value.__cause__, OSError)
    assert segments.live_segments() == base
    seg = segments.Segment.create(MiB)  # the hook fired once
    seg.close()


def test_injected_failure_count_and_errno(roomy):
    segments = roomy
    segments._fail_next_create(OSError(errno.ENOMEM, "Cannot allocate memory"), count=2)
    for _ in range(2):
        with pytest.raises(SharedMemoryError, match=r"\[Errno 12\] Cannot allocate memory"):
            segments.Segment.create(10)
    segments._fail_next_create(count=3)
    segments._fail_next_create(count=0)  # clears
    segments.Segment.create(10).close()
    with pytest.raises(TypeError, match="OSError"):
        segments._fail_next_create(RuntimeError("no"))


def test_file_size_limit_in_a_child_raises_shared_memory_error():
    out = _run_child("""
        import json, os, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        from seamless._ipc import shm_array as segments
        from seamless.errors import SharedMemoryError
        before = sorted(os.listdir("/proc/self/fd"))
        try:
            segments.Segment.create(8 << 20, "the result of transformation g", name="g")
        except SharedMemoryError as exc:
            result = {"message": str(exc), "size": exc.size}
        result["leaked"] = sorted(set(os.listdir("/proc/self/fd")) - set(before))
        result["live"] = segments.live_segments()
        small = segments.Segment.create(4096)
        small.fill(b"x" * 4096)
        result["small"] = bytes(small.readonly()[:3]).decode()
        print(json.dumps(result))
    """)
    assert out["size"] == 8 * MiB
    assert out["message"] == (
        "could not allocate 8.0 MiB (8388608 bytes) of shared memory for the result of "
        "transformation g: ftruncate failed with [Errno 27] File too large: the file size limit "
        "RLIMIT_FSIZE (ulimit -f) is 1.0 MiB (drop arrays and handles you no longer need, call "
        "seamless.close() to release cached segments, raise the limit, or set g.local = True)")
    assert out["leaked"] == [] and out["live"] == 0
    assert out["small"] == "xxx"


# --- counters -----------------------------------------------------------------------------------

def test_counters_count_a_fill(segments):
    segments.reset_counters()
    assert segments.bytes_copied() == 0 and segments.bytes_hashed() == 0
    seg = segments.Segment.create(3 * MiB)
    seg.fill(_pattern(3 * MiB), hashlib.sha256())
    assert segments.bytes_copied() == 3 * MiB
    assert segments.bytes_hashed() == 3 * MiB
    seg.fill(_pattern(3 * MiB))
    assert segments.bytes_copied() == 6 * MiB
    assert segments.bytes_hashed() == 3 * MiB
    segments.add_copied(5)
    segments.add_hashed(7)
    assert (segments.bytes_copied(), segments.bytes_hashed()) == (6 * MiB + 5, 3 * MiB + 7)
    with pytest.raises(ValueError, match=">= 0"):
        segments.add_copied(-1)
    segments.reset_counters()
    assert (segments.bytes_copied(), segments.bytes_hashed()) == (0, 0)
    seg.close()


def test_failed_fill_counts_nothing(segments):
    class Boom:
        def update(self, chunk):
            raise RuntimeError("hasher failed")

    segments.reset_counters()
    seg = segments.Segment.create(MiB)
    with pytest.raises(RuntimeError, match="hasher failed"):
        seg.fill(_pattern(MiB), Boom())
    assert (segments.bytes_copied(), segments.bytes_hashed()) == (0, 0)
    seg.close()


def test_counters_are_thread_safe(segments):
    segments.reset_counters()

    def add():
        for _ in range(20_000):
            segments.add_copied(1)
            segments.add_hashed(2)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert segments.bytes_copied() == 80_000
    assert segments.bytes_hashed() == 160_000
    segments.reset_counters()


def test_package_level_functions_delegate_to_the_chosen_module():
    chosen = seamless._ipc.shm_array
    chosen.reset_counters()
    seg = chosen.Segment.create(MiB)
    live = chosen.live_segments()
    assert seamless._ipc.live_segments() == live >= 1
    seg.fill(_pattern(MiB), hashlib.sha256())
    assert seamless._ipc.bytes_copied() == MiB == chosen.bytes_copied()
    assert seamless._ipc.bytes_hashed() == MiB
    seamless._ipc.reset_counters()
    assert chosen.bytes_copied() == 0 and chosen.bytes_hashed() == 0
    seg.close()
    assert seamless._ipc.live_segments() == live - 1


# --- trim ---------------------------------------------------------------------------------------

def test_trim_runs_registered_hooks(segments):
    calls = []

    def first():
        calls.append("first")

    def second():
        calls.append("second")

    segments.register_trim_hook(first)
    segments.register_trim_hook(second)
    segments.register_trim_hook(first)  # once per registration
    try:
        assert segments.trim() is None
        assert calls == ["first", "second"]
        segments.unregister_trim_hook(first)
        segments.trim()
        assert calls == ["first", "second", "second"]
    finally:
        segments.unregister_trim_hook(first)
        segments.unregister_trim_hook(second)
    segments.trim()
    assert calls == ["first", "second", "second"]
    with pytest.raises(TypeError, match="callable"):
        segments.register_trim_hook(42)


def test_a_failing_hook_does_not_stop_the_others(segments):
    calls = []

    def bad():
        raise RuntimeError("hook failed")

    def good():
        calls.append("good")

    segments.register_trim_hook(bad)
    segments.register_trim_hook(good)
    try:
        with pytest.raises(RuntimeError, match="hook failed"):
            segments.trim()
        assert calls == ["good"]
    finally:
        segments.unregister_trim_hook(bad)
        segments.unregister_trim_hook(good)


def test_package_trim_runs_the_hooks():
    calls = []
    hook = lambda: calls.append(1)  # noqa: E731
    seamless._ipc.shm_array.register_trim_hook(hook)
    try:
        seamless._ipc.trim()
    finally:
        seamless._ipc.shm_array.unregister_trim_hook(hook)
    assert calls == [1]


# --- backend choice -------------------------------------------------------------------------------

def test_segments_is_an_alias_of_the_chosen_shm_array():
    backends = seamless._ipc.backends()
    assert set(backends) == {"shm_array", "flags", "window"}
    pure = os.environ.get("SEAMLESS_PUREPYTHON", "").strip().lower() in ("1", "true", "yes")
    for name in backends:
        expected = "cython" if seamless._ipc._has_compiled(name) and not pure else "python"
        assert backends[name] == expected
    assert seamless._ipc.BACKEND == ("python" if pure else "cython")
    assert not hasattr(seamless._ipc, "segments"), "segments live in shm_array"
    assert not os.path.exists(os.path.join(os.path.dirname(seamless._ipc.__file__), "_pure",
                                           "segments.py"))


# --- size classes and the free list ---------------------------------------------------------------

def _default_budget() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


@pytest.mark.parametrize("size, expected", [
    (0, 0), (1, 4096), (100, 4096), (4096, 4096), (MiB - 1, MiB), (MiB, MiB), (MiB + 1, 2 * MiB),
    (64 * MiB - 1, 64 * MiB), (64 * MiB, 64 * MiB), (64 * MiB + 1, 72 * MiB),
    (400_000_000, 384 * MiB), (400 * MiB, 416 * MiB), (1 << 30, 1 << 30),
    ((1 << 30) + 1, 1152 * MiB),
])
def test_size_classes_waste_at_most_an_eighth(segments, size, expected):
    assert segments.size_class(size) == expected
    if size >= MiB:
        assert expected - size < max(size // 8, MiB)  # < 1 MiB below 64 MiB, then <= 12.5 %


def test_a_dropped_segment_is_reused_by_the_next_create(segments):
    seg = segments.Segment.create(3 * MiB)
    sid = seg.segment_id()
    assert seg.capacity == 3 * MiB
    base = segments.live_segments()
    del seg
    gc.collect()
    assert segments.live_segments() == base - 1
    assert [cap for cap, _ in segments.free_list()] == [3 * MiB]
    assert len(_segment_fds()) == 1, "the free list owns the descriptor"
    again = segments.Segment.create(3 * MiB)
    assert again.segment_id() == sid
    assert again.reused and not segments.Segment.create(MiB, recycle=False).reused
    assert segments.free_list() == []
    again.close()  # close() never recycles
    assert segments.free_list() == [] and _segment_fds() == set()


@pytest.mark.parametrize("request_size, reused", [
    (MiB, False),            # 3 MiB > 2 * 1 MiB: a small value never pins a big segment
    (MiB + MiB // 2, True),  # 3 MiB <= 2 * 1.5 MiB
    (3 * MiB, True),
    (3 * MiB + 1, False),    # too small
])
def test_free_list_capacity_rule(segments, request_size, reused):
    segments.Segment.create(3 * MiB).fill(_pattern(3 * MiB))  # dropped at once: recycled
    gc.collect()
    seg = segments.Segment.create(request_size)
    assert (seg.capacity == 3 * MiB) is reused
    assert seg.size == request_size
    assert len(bytes(seg.readonly())) == request_size, "only the logical size is exposed"
    assert len(segments.free_list()) == (0 if reused else 1)
    seg.close()


def test_the_smallest_fitting_entry_is_taken(segments):
    big, small = segments.Segment.create(4 * MiB), segments.Segment.create(3 * MiB)
    small_id = small.segment_id()
    del big, small
    gc.collect()
    assert sorted(cap for cap, _ in segments.free_list()) == [3 * MiB, 4 * MiB]
    seg = segments.Segment.create(2 * MiB + 1)
    assert seg.segment_id() == small_id
    seg.close()


def test_create_without_recycle_neither_takes_nor_returns(segments):
    segments.Segment.create(2 * MiB)
    gc.collect()
    assert len(segments.free_list()) == 1
    seg = segments.Segment.create(2 * MiB, recycle=False)
    assert len(segments.free_list()) == 1
    del seg
    gc.collect()
    assert len(segments.free_list()) == 1


def test_free_list_budget(segments):
    try:
        segments.set_free_list_budget(5 * MiB)
        a, b = segments.Segment.create(3 * MiB), segments.Segment.create(3 * MiB)
        del a, b
        gc.collect()
        assert [cap for cap, _ in segments.free_list()] == [3 * MiB], "the second is over budget"
        assert len(_segment_fds()) == 1
        segments.set_free_list_budget(2 * MiB)  # a lower budget evicts
        assert segments.free_list() == [] and _segment_fds() == set()
        with pytest.raises(ValueError, match=r"nbytes must be >= 0"):
            segments.set_free_list_budget(-1)
    finally:
        segments.set_free_list_budget(_default_budget())


def test_trim_and_trim_idle_close_entries(segments):
    for size in (MiB, 2 * MiB):
        segments.Segment.create(size)
    gc.collect()
    assert len(segments.free_list()) == 2
    assert segments.trim_idle(3600.0) == 0
    ages = [age for _, age in segments.free_list()]
    assert ages == sorted(ages, reverse=True) and all(age >= 0 for age in ages)
    time.sleep(0.01)  # make every entry's age > 0
    assert segments.trim_idle(0.0) == 2
    assert segments.free_list() == [] and _segment_fds() == set()
    segments.Segment.create(MiB)
    gc.collect()
    segments.trim()
    assert segments.free_list() == [] and _segment_fds() == set()


def test_prewarm_fills_the_free_list(segments):
    base = segments.live_segments()
    segments.prewarm(5 * MiB)
    assert [cap for cap, _ in segments.free_list()] == [5 * MiB]
    assert segments.live_segments() == base
    seg = segments.Segment.create(5 * MiB)
    assert seg.capacity == 5 * MiB and segments.free_list() == []
    assert bytes(seg.readonly()) == bytes(5 * MiB)
    seg.close()


def test_prewarm_reports_a_shortage(roomy):
    roomy._fail_next_create()
    with pytest.raises(SharedMemoryError, match=r"5\.0 MiB .* for a prewarmed segment"):
        roomy.prewarm(5 * MiB)
    assert roomy.free_list() == []


def test_package_prewarm_and_trim_use_the_chosen_module():
    chosen = seamless._ipc.shm_array
    seamless._ipc.prewarm(MiB)
    assert [cap for cap, _ in chosen.free_list()] == [MiB]
    seamless._ipc.trim()
    assert chosen.free_list() == []


def test_recycle_adopts_a_memfd_and_refuses_others(segments):
    seg = segments.Segment.create(2 * MiB, recycle=False)
    assert segments.recycle(os.dup(seg.fd)) is True
    assert [cap for cap, _ in segments.free_list()] == [2 * MiB]
    again = segments.Segment.create(2 * MiB)
    assert again.segment_id() == seg.segment_id()
    again.close()
    seg.close()
    read_end, write_end = os.pipe()
    assert segments.recycle(read_end) is False  # not a memfd: closed
    with pytest.raises(OSError):
        os.fstat(read_end)
    os.close(write_end)
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 4096)
        f.flush()
        assert segments.recycle(os.dup(f.fileno())) is False
    with pytest.raises(TypeError, match="fd must be an int"):
        segments.recycle("3")
    try:
        segments.set_free_list_budget(MiB)
        seg = segments.Segment.create(2 * MiB, recycle=False)
        assert segments.recycle(os.dup(seg.fd)) is False  # over budget: closed
        seg.close()
    finally:
        segments.set_free_list_budget(_default_budget())
    assert segments.free_list() == [] and _segment_fds() == set()


# --- on_release ----------------------------------------------------------------------------------

class _Released:
    """An on_release callback: records the segment id of each fd it gets, then closes it."""

    def __init__(self):
        self.ids = []

    def __call__(self, fd):
        st = os.fstat(fd)  # usable
        self.ids.append((st.st_dev, st.st_ino))
        os.close(fd)


def test_on_release_is_called_once_when_the_segment_is_dropped(segments):
    seg = segments.Segment.create(MiB, recycle=False)
    released = _Released()
    other = segments.Segment.from_fd(os.dup(seg.fd), MiB, on_release=released)
    base = segments.live_segments()
    del other
    gc.collect()
    assert released.ids == [seg.segment_id()]
    assert segments.live_segments() == base - 1
    assert segments.free_list() == []
    gc.collect()
    assert released.ids == [seg.segment_id()]
    seg.close()


def test_on_release_waits_for_the_last_mapping(segments):
    seg = segments.Segment.create(MiB, recycle=False)
    seg.fill(_pattern(MiB, seed=8))
    released = _Released()
    other = segments.Segment.from_fd(os.dup(seg.fd), MiB, on_release=released)
    arr = np.frombuffer(other.readonly(), np.uint8)[5:]
    del other
    gc.collect()
    assert released.ids == []
    assert arr[0] == _pattern(MiB, seed=8)[5]
    del arr
    gc.collect()
    assert released.ids == [seg.segment_id()]
    seg.close()


def test_on_release_from_cyclic_garbage(segments):
    seg = segments.Segment.create(MiB, recycle=False)
    released = _Released()
    cycle = [segments.Segment.from_fd(os.dup(seg.fd), MiB, on_release=released)]
    cycle.append(cycle)
    del cycle
    gc.collect()
    assert released.ids == [seg.segment_id()]
    seg.close()


def test_close_does_not_call_on_release(segments):
    seg = segments.Segment.create(MiB, recycle=False)
    released = _Released()
    other = segments.Segment.from_fd(os.dup(seg.fd), MiB, on_release=released)
    other.close()
    del other
    gc.collect()
    assert released.ids == []
    with pytest.raises(TypeError, match="on_release must be callable"):
        segments.Segment.from_fd(os.dup(seg.fd), MiB, on_release=42)
    seg.close()


# --- offsets, populate, as_array -------------------------------------------------------------

@pytest.mark.parametrize("offset", [0, 10, 4096, 4096 * 3 + 100])
def test_offset_mappings_expose_exactly_the_logical_bytes(segments, offset):
    data = _pattern(64 * 1024, seed=9)
    seg = segments.Segment.create(data.nbytes, recycle=False)
    seg.fill(data)
    size = 20_000
    part = segments.Segment.from_fd(os.dup(seg.fd), size, offset=offset)
    assert (part.offset, part.size, part.capacity) == (offset, size, seg.capacity)
    expected = data.tobytes()[offset:offset + size]
    assert bytes(part.readonly()) == expected
    assert bytes(part.readonly(populate=True)) == expected
    view = part.writable(populate=True)
    assert view.nbytes == size
    view[:5] = b"hello"
    view.release()
    assert bytes(seg.readonly()[offset:offset + 5]) == b"hello"
    part.fill(bytes(reversed(expected)), hashlib.sha256())
    assert bytes(seg.readonly())[offset:offset + size] == bytes(reversed(expected))
    assert bytes(seg.readonly())[:offset] == data.tobytes()[:offset]
    assert segments.segment_of(part.readonly()) is part
    part.close()
    seg.close()


def test_offset_beyond_the_file_is_refused(segments):
    seg = segments.Segment.create(4096, recycle=False)
    with pytest.raises(ValueError, match=r"refers to a segment of 4096 bytes, smaller than the "
                                         r"offset 100 \+ logical size 4000"):
        segments.Segment.from_fd(os.dup(seg.fd), 4000, offset=100)
    seg.close()


def test_as_array_is_read_only_and_keeps_the_segment(segments):
    data = np.arange(32, dtype=np.float64)
    seg = segments.Segment.create(data.nbytes, recycle=False)
    seg.fill(data)
    arr = segments.as_array(seg, np.float64, (4, 8))
    assert arr.shape == (4, 8) and arr.dtype == np.float64
    assert np.array_equal(arr.reshape(-1), data)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr.setflags(write=True)
    assert segments.segment_of(arr) is seg
    assert segments.segment_of(arr[1:, ::2].T) is seg
    base = segments.live_segments()
    del seg
    gc.collect()
    assert segments.live_segments() == base, "the array keeps the segment"
    assert arr[3, 7] == 31.0
    assert segments.as_array(segments.segment_of(arr), "u1", 256).shape == (256,)
    with pytest.raises(ValueError, match=r"needs 248 bytes but the segment's size is 256"):
        segments.as_array(segments.segment_of(arr), np.float64, (31,))
    del arr
    gc.collect()
    assert segments.live_segments() == base - 1


@pytest.mark.parametrize("backend", [p.values[0] for p in _backends()])
def test_a_forked_child_never_reuses_its_parents_segments(backend):
    # Run in a child interpreter: forking the test process itself is not safe (threads).
    module = {"python": "seamless._ipc._pure.shm_array", "cython": "seamless._ipc.shm_array"}
    out = _run_child(f"""
        import gc, json, os
        import {module[backend]} as shm
        kept = shm.Segment.create(2 << 20)
        dropped = shm.Segment.create(2 << 20)
        dropped_id = dropped.segment_id()
        del dropped
        gc.collect()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            report = {{"free": len(shm.free_list())}}
            del kept  # the parent's: closed here, never put on the child's free list
            gc.collect()
            report["after_drop"] = len(shm.free_list())
            fresh = shm.Segment.create(2 << 20)
            report["fresh_is_new"] = fresh.segment_id() != dropped_id
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
        os.close(write_end)
        child = json.loads(os.read(read_end, 4096))
        os.waitpid(pid, 0)
        child["parent_free"] = len(shm.free_list())
        print(json.dumps(child))
    """)
    assert out == {"free": 0, "after_drop": 0, "fresh_is_new": True, "parent_free": 1}


def test_an_odd_sized_descriptor_counts_only_its_whole_pages(segments):
    fd = os.memfd_create("seamless-segment", os.MFD_CLOEXEC)
    os.ftruncate(fd, 3 * 4096 + 100)
    assert segments.recycle(fd) is True
    assert [cap for cap, _ in segments.free_list()] == [3 * 4096]
    seg = segments.Segment.create(3 * 4096)
    assert seg.capacity == 3 * 4096 + 100
    seg.fill(_pattern(3 * 4096))
    seg.close()
