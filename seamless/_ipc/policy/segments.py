"""Segment policy shared by seamless/_ipc/shm_array.pyx and its twin _pure/shm_array.py.

What both backends must agree on and that runs outside the copy loops: the chunk size given
to hashers, the argument checks and their messages, the memory check made before a new memfd
(``MemAvailable`` and the cgroup headroom, docs/worker-pool.md) and the ``SharedMemoryError``
text of a failed allocation, the validation of a received descriptor, and the trim hooks.

Data flow: pure functions of their arguments and of the files they read; the only state is a
``TrimHooks`` registry, which each backend module creates once and owns.  The paths read by
the memory check belong to seamless.machine (the one reader of machine facts), looked up on
every call, so tests point both backends at a fake tree by patching that module.
"""

from __future__ import annotations

import errno
import operator
import os
import stat
import threading

from seamless import machine
from seamless.errors import SharedMemoryError

# Granularity of hasher.update() calls (and of the compiled copy thread's memcpy).  Part of
# the contract: both backends feed the same chunks.
CHUNK_BYTES = 1 << 20

# Bytes kept free beyond the segment's size when checking available memory.
SAFETY_MARGIN = 64 << 20


# --- argument checks -------------------------------------------------------------------------

def check_size(size, what: str) -> int:
    """``size`` as an int >= 0; TypeError/ValueError naming ``what`` otherwise."""
    if isinstance(size, bool):
        raise TypeError(f"{what} must be an int >= 0, got bool {size!r}")
    try:
        size = operator.index(size)
    except TypeError:
        raise TypeError(f"{what} must be an int >= 0, got {type(size).__name__} "
                        f"{size!r}") from None
    if size < 0:
        raise ValueError(f"{what} must be >= 0, got {size}")
    return size


def check_fd(fd) -> None:
    """Refuse what is not a descriptor at all (not an int, or negative)."""
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int, got {type(fd).__name__} {fd!r}")
    if fd < 0:
        raise ValueError(f"fd must be a descriptor >= 0, got {fd}")


def checked_count(n, function: str) -> int:
    """A byte count given to ``function`` (add_copied, add_hashed): an int >= 0."""
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{function}() needs a byte count >= 0, got {n}")
    return n


def check_on_release(on_release) -> None:
    """``Segment.from_fd``'s callback, called with the descriptor when the segment goes."""
    if on_release is not None and not callable(on_release):
        raise TypeError(f"on_release must be callable, got {type(on_release).__name__}")


def check_received(fd: int, mode: int, file_size: int, size: int, offset: int) -> None:
    """A received descriptor must be a regular file holding ``[offset, offset + size)``."""
    if not stat.S_ISREG(mode):
        raise ValueError(f"descriptor {fd} is not a shared-memory segment (not a "
                         f"regular file, mode {mode:o})")
    if file_size < offset + size:
        what = f"offset {offset} + logical size {size}" if offset else f"logical size {size}"
        raise ValueError(f"descriptor {fd} refers to a segment of {file_size} bytes, "
                         f"smaller than the {what}")


def closed_segment(segment_id) -> ValueError:
    return ValueError(f"segment {segment_id[0]}:{segment_id[1]} is closed: its descriptor "
                      f"was released by close()")


def fill_size_mismatch(nbytes: int, size: int) -> ValueError:
    return ValueError(f"src has {nbytes} bytes but the segment's size is {size} "
                      f"(fill needs exactly the segment's size)")


def array_count(dtype, shape, size: int) -> tuple:
    """``(shape, count)`` of an array of ``dtype`` (a numpy dtype) over ``size`` bytes;
    ValueError when they do not cover exactly ``size``."""
    shape = (operator.index(shape),) if not isinstance(shape, tuple) else \
        tuple(operator.index(n) for n in shape)
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != size:
        raise ValueError(f"an array of dtype {dtype} and shape {shape} needs "
                         f"{count * dtype.itemsize} bytes but the segment's size is {size}")
    return shape, count


def injection(error, count) -> tuple[int, int]:
    """``(errno, count)`` of the ``_fail_next_create`` test hook (default ``ENOSPC``)."""
    if error is None:
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if not isinstance(error, OSError) or error.errno is None:
        raise TypeError(f"_fail_next_create() needs an OSError with an errno, got {error!r}")
    count = operator.index(count)
    if count < 0:
        raise ValueError(f"_fail_next_create() needs count >= 0, got {count}")
    return error.errno, count


# --- buffers ---------------------------------------------------------------------------------

def type_name(obj) -> str:
    t = type(obj)
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def not_a_buffer(name: str, obj) -> TypeError:
    return TypeError(f"{name} must support the buffer protocol (bytes, bytearray, memoryview, "
                     f"numpy array, mmap), got {type_name(obj)}")


def not_contiguous(name: str, obj, shape, strides) -> ValueError:
    return ValueError(
        f"{name} must be C-contiguous, got a non-contiguous {type_name(obj)} with shape "
        f"{tuple(shape)} and strides {tuple(strides)} "
        f"(copy it first, e.g. numpy.ascontiguousarray({name}))")


def check_copy(dst, dst_readonly: bool, dst_nbytes: int, src_nbytes: int) -> None:
    """copy_and_hash(): ``dst`` must be writable and exactly as large as ``src``."""
    if dst_readonly:
        raise ValueError(f"dst must be writable, got a read-only {type_name(dst)} "
                         f"(pass a bytearray, a writable numpy array or a writable mmap)")
    if dst_nbytes != src_nbytes:
        raise ValueError(f"dst has {dst_nbytes} bytes but src has {src_nbytes} "
                         f"(dst must have exactly src's nbytes)")


OVERLAP = "src and dst overlap in memory (copy into a separate buffer)"


# --- memory check ----------------------------------------------------------------------------

def available_memory(cgroup_root: str | None = None, meminfo: str | None = None,
                     proc_cgroup: str | None = None) -> tuple[int | None, str]:
    """Bytes that can still be allocated, and a phrase naming the binding limit.

    ``machine.available_memory()`` (the smallest of ``MemAvailable`` and each cgroup's
    headroom) put in words; ``(None, "")`` when nothing could be read.  The paths default to
    seamless.machine's, read afresh on every call.
    """
    found = machine.available_memory(cgroup_root, meminfo, proc_cgroup)
    if found is None:
        return None, ""
    available, limit_name, limit = found
    if limit is None:
        return available, f"(MemAvailable in {machine.MEMINFO if meminfo is None else meminfo})"
    return available, f"under the cgroup limit {limit_name} = {human(limit)}"


def human(n: int) -> str:
    """Binary units with one decimal: 419430400 -> '400.0 MiB'."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def allocation_error(size: int, what: str, reason: str, name: str | None) -> SharedMemoryError:
    """The error of a segment that could not be made: the size, the reason and the fixes."""
    target = f" for {what}" if what else ""
    fixes = ("drop arrays and handles you no longer need, call seamless.close() to release "
             "cached segments")
    fixes += f", raise the limit, or set {name}.local = True" if name else ", or raise the limit"
    return SharedMemoryError(
        f"could not allocate {human(size)} ({size} bytes) of shared memory{target}: "
        f"{reason} ({fixes})", size=size)


def os_reason(call: str, exc: OSError) -> str:
    """Why system call ``call`` failed, naming RLIMIT_FSIZE when that is the cause."""
    reason = f"{call} failed with [Errno {exc.errno}] {exc.strerror or os.strerror(exc.errno)}"
    if exc.errno == errno.EFBIG:
        soft = machine.file_size_limit()[0]
        if soft != machine.RLIM_INFINITY:
            reason += f": the file size limit RLIMIT_FSIZE (ulimit -f) is {human(soft)}"
    return reason


def check_memory(size: int, margin: int, what: str, name: str | None) -> None:
    """SharedMemoryError when ``size`` plus ``margin`` exceeds what can still be allocated."""
    available, where = available_memory()
    if available is not None and size + margin > available:
        reason = f"{human(available)} available {where}"
        if size <= available:
            reason += f", of which {human(margin)} is kept as a safety margin"
        raise allocation_error(size, what, reason, name)


# --- trim hooks ------------------------------------------------------------------------------

class TrimHooks:
    """The callables ``trim()`` runs after emptying the free list (one registry per backend)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._hooks: list = []

    def register(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"register_trim_hook() needs a callable, got {type(fn).__name__}")
        with self._lock:
            if fn not in self._hooks:
                self._hooks.append(fn)

    def unregister(self, fn) -> None:
        with self._lock:
            if fn in self._hooks:
                self._hooks.remove(fn)

    def run(self) -> None:
        """Run every hook even if an earlier one raises; re-raise the first exception after."""
        with self._lock:
            hooks = list(self._hooks)
        first_error = None
        for hook in hooks:
            try:
                hook()
            except Exception as exc:  # the rest still run; the first failure is reported below
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error
