"""Pure-Python twin of the shared-memory segments of seamless._ipc: memfd buffers, counters, trim.

A ``Segment`` is one anonymous memfd (``memfd_create(MFD_CLOEXEC)``) holding one buffer of a
known logical size.  Values of 1 MiB and more travel between the parent and the workers in
segments: the creator fills it, the descriptor crosses the channel as ``SCM_RIGHTS`` data
(seamless/pool/protocol.py), and the receiver maps it read-only (worker-pool.md, sections 5, 6).

Ownership
- **Descriptor.** ``Segment.create`` makes one; ``Segment.from_fd`` takes over a received one
  (also when it raises: the descriptor is then closed).  From then on the ``Segment`` object owns
  it: ``close()`` closes it at once; otherwise it is closed when the ``Segment`` is garbage and no
  mapping made from it is alive (a ``weakref.finalize`` on the ``Segment``; each mapping holds a
  strong reference to its ``Segment``).  Sending a descriptor never transfers it: the kernel
  gives the receiver its own copy, so the sender still closes (or keeps) its own.
- **Mappings.** ``readonly()`` / ``writable()`` each make a new ``MAP_SHARED`` mapping of the
  logical size, owned by the returned memoryview and by whatever is built on it (a numpy array
  over it keeps it through ``.base``).  The mapping is unmapped when the last such object goes;
  ``close()`` on the ``Segment`` does not unmap anything.  On Python < 3.13 each mapping also
  holds its own duplicate of the descriptor (``mmap`` duplicates it; ``trackfd=False`` is only
  available from 3.13); the compiled core does not.
- **Immutability** comes from the mappings, never from seals (a sealed memfd could not be
  recycled): the creator fills through ``writable()`` (or ``fill``, which drops its writable
  mapping before returning) and drops every writable mapping before the segment is shared;
  everyone else maps it with ``readonly()`` (``PROT_READ``), so arrays over it report
  ``writeable=False`` and cannot be made writeable.
- **Counters** (``bytes_copied``, ``bytes_hashed``, ``live_segments``) are process-wide and
  guarded by one lock; ``live_segments()`` counts ``Segment`` objects whose descriptor is still
  open in this process.
- **trim()** empties this process's free lists and then runs the hooks registered with
  ``register_trim_hook`` (the pool registers one that sends trimming ``recycle`` frames).  Free
  lists come with the compiled core; this twin has none yet, so ``trim()`` only runs the hooks.

Allocation checks the size against ``MemAvailable`` and the cgroup's headroom (v2
``memory.max - memory.current``, v1 ``memory.limit_in_bytes - memory.usage_in_bytes``, in the
process's cgroup and each ancestor) minus a safety margin before creating anything, then
``ftruncate`` + ``posix_fallocate``; too little memory or a failing call is a
``SharedMemoryError`` naming the size (errors.md), and nothing is left open.
"""

from __future__ import annotations

import errno
import mmap
import operator
import os
import resource
import stat
import sys
import threading
import weakref

from seamless._ipc import shm_array
from seamless.cgroup import cgroup_paths, dirs_upwards, read_int, read_text
from seamless.errors import SharedMemoryError

__all__ = [
    "SAFETY_MARGIN", "Segment", "segment_id", "segment_of", "available_memory",
    "bytes_copied", "bytes_hashed", "add_copied", "add_hashed", "live_segments",
    "reset_counters", "trim", "register_trim_hook", "unregister_trim_hook",
]

# Bytes kept free beyond the segment's size when checking available memory.
SAFETY_MARGIN = 64 << 20

# Where the memory check reads; module attributes so tests can point them at a fake tree.
_MEMINFO = "/proc/meminfo"
_CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"

# cgroup v1 reports "no limit" as a huge page-rounded number; anything above this is no limit.
_UNLIMITED = 1 << 60

_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# posix_fallocate errors that mean "not supported here", not "no memory": allocation then
# happens on first touch, as without fallocate.
_FALLOCATE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

_lock = threading.Lock()
_copied = 0
_hashed = 0
_live = 0
_injected: list = []          # OSErrors that the next create() calls raise instead of ftruncate's
_trim_hooks: list = []


# --- counters --------------------------------------------------------------------------------

def bytes_copied() -> int:
    """Bytes copied into or out of segments for this process's transformations so far."""
    return _copied


def bytes_hashed() -> int:
    """Bytes hashed while filling segments (and reported by workers) so far."""
    return _hashed


def _checked_count(n, function: str) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{function}() needs a byte count >= 0, got {n}")
    return n


def add_copied(n: int) -> None:
    """Add ``n`` bytes to ``bytes_copied()`` (the pool reports worker-side copies with it)."""
    global _copied
    n = _checked_count(n, "add_copied")
    with _lock:
        _copied += n


def add_hashed(n: int) -> None:
    """Add ``n`` bytes to ``bytes_hashed()``."""
    global _hashed
    n = _checked_count(n, "add_hashed")
    with _lock:
        _hashed += n


def live_segments() -> int:
    """How many ``Segment`` objects of this process still hold an open descriptor."""
    return _live


def reset_counters() -> None:
    """Set ``bytes_copied()`` and ``bytes_hashed()`` back to 0 (``live_segments()`` is a state)."""
    global _copied, _hashed
    with _lock:
        _copied = 0
        _hashed = 0


def _fd_opened() -> None:
    global _live
    with _lock:
        _live += 1


def _close_fd(fd: int) -> None:
    """Finalizer of a Segment: runs once, from close() or when the Segment is garbage."""
    global _live
    with _lock:
        _live -= 1
    os.close(fd)


# --- trim ------------------------------------------------------------------------------------

def register_trim_hook(fn) -> None:
    """Have ``trim()`` call ``fn()`` (once per registration; registering again is a no-op)."""
    if not callable(fn):
        raise TypeError(f"register_trim_hook() needs a callable, got {type(fn).__name__}")
    with _lock:
        if fn not in _trim_hooks:
            _trim_hooks.append(fn)


def unregister_trim_hook(fn) -> None:
    """Stop calling ``fn`` from ``trim()``; a hook that is not registered is ignored."""
    with _lock:
        if fn in _trim_hooks:
            _trim_hooks.remove(fn)


def trim() -> None:
    """Empty this process's free lists (none in this twin), then run every registered hook.

    Every hook runs even if an earlier one raises; the first exception is re-raised afterwards.
    """
    with _lock:
        hooks = list(_trim_hooks)
    first_error = None
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # the rest still run; the first failure is reported below
            if first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error


# --- memory check ----------------------------------------------------------------------------

def _mem_available(meminfo: str) -> int | None:
    text = read_text(meminfo)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def available_memory(cgroup_root: str | None = None, meminfo: str | None = None,
                     proc_cgroup: str | None = None) -> tuple[int | None, str]:
    """Bytes that can still be allocated, and a phrase naming the binding limit.

    The smallest of ``MemAvailable`` and, in the process's cgroup and each ancestor, the cgroup
    headroom (v2 ``memory.max - memory.current``, v1 ``memory.limit_in_bytes -
    memory.usage_in_bytes``).  ``(None, "")`` when nothing could be read.  Read afresh on every
    call; the paths default to the live system.
    """
    cgroup_root = _CGROUP_ROOT if cgroup_root is None else cgroup_root
    meminfo = _MEMINFO if meminfo is None else meminfo
    proc_cgroup = _PROC_CGROUP if proc_cgroup is None else proc_cgroup
    best: tuple[int, str] | None = None
    avail = _mem_available(meminfo)
    if avail is not None:
        best = (avail, f"(MemAvailable in {meminfo})")
    v2, v1_paths = cgroup_paths(proc_cgroup)
    v1 = v1_paths.get("memory")
    candidates = []
    for root in (cgroup_root, os.path.join(cgroup_root, "unified")):
        for d in dirs_upwards(root, v2):
            candidates.append((d, "memory.max", "memory.current"))
    for d in dirs_upwards(os.path.join(cgroup_root, "memory"), v1):
        candidates.append((d, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    for d, limit_name, usage_name in candidates:
        limit = read_int(os.path.join(d, limit_name))
        if limit is None or limit >= _UNLIMITED:
            continue
        usage = read_int(os.path.join(d, usage_name)) or 0
        headroom = max(0, limit - usage)
        if best is None or headroom < best[0]:
            best = (headroom, f"under the cgroup limit {limit_name} = {_human(limit)}")
    if best is None:
        return None, ""
    return best


def _human(n: int) -> str:
    """Binary units with one decimal: 419430400 -> '400.0 MiB'."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _allocation_error(size: int, what: str, reason: str, name: str | None) -> SharedMemoryError:
    target = f" for {what}" if what else ""
    fixes = ("drop arrays and handles you no longer need, call seamless.close() to release "
             "cached segments")
    fixes += f", raise the limit, or set {name}.local = True" if name else ", or raise the limit"
    return SharedMemoryError(
        f"could not allocate {_human(size)} ({size} bytes) of shared memory{target}: "
        f"{reason} ({fixes})", size=size)


def _os_reason(call: str, exc: OSError) -> str:
    reason = f"{call} failed with [Errno {exc.errno}] {exc.strerror or os.strerror(exc.errno)}"
    if exc.errno == errno.EFBIG:
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            reason += f": the file size limit RLIMIT_FSIZE (ulimit -f) is {_human(soft)}"
    return reason


def _fail_next_create(error: OSError | None = None, *, count: int = 1) -> None:
    """Test hook: the next ``count`` calls of ``Segment.create`` fail as if ``ftruncate`` raised
    ``error`` (default ``ENOSPC``), through the real error path.  ``count=0`` clears the hook.
    """
    if error is None:
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if not isinstance(error, OSError) or error.errno is None:
        raise TypeError(f"_fail_next_create() needs an OSError with an errno, got {error!r}")
    count = operator.index(count)
    if count < 0:
        raise ValueError(f"_fail_next_create() needs count >= 0, got {count}")
    with _lock:
        _injected[:] = [error] * count


def _take_injected() -> OSError | None:
    with _lock:
        return _injected.pop(0) if _injected else None


# --- segments --------------------------------------------------------------------------------

class _Mapping(mmap.mmap):
    """A mapping of a segment; holds the Segment so its descriptor outlives no mapping early."""

    __slots__ = ("segment",)


def _check_size(size, what: str) -> int:
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


def _byte_view(src) -> memoryview:
    """A flat read-only byte view of a C-contiguous buffer (numpy datetimes included)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(src, numpy.ndarray):
        if not src.flags.c_contiguous:
            raise ValueError(
                f"src must be C-contiguous, got a non-contiguous numpy array with shape "
                f"{src.shape} and strides {src.strides} (copy it first, e.g. "
                f"numpy.ascontiguousarray(src))")
        return memoryview(src.reshape(-1).view(numpy.uint8)).toreadonly()
    try:
        view = memoryview(src)
    except TypeError:
        raise TypeError(f"src must support the buffer protocol (bytes, bytearray, memoryview, "
                        f"numpy array, mmap), got {type(src).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"src must be C-contiguous, got a non-contiguous buffer with shape "
                         f"{view.shape} and strides {view.strides} (copy it first)")
    if view.nbytes == 0:
        return memoryview(b"")
    return view.cast("B").toreadonly()


class Segment:
    """One anonymous memfd holding one buffer of ``size`` logical bytes.

    Build with ``Segment.create(size)`` or ``Segment.from_fd(fd, size)``.  Only the first
    ``size`` bytes are ever mapped, whatever the file's size (a recycled segment may be larger).
    """

    __slots__ = ("_fd", "_size", "_id", "_finalizer", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("build a Segment with Segment.create(size) or Segment.from_fd(fd, size)")

    @classmethod
    def _adopt(cls, fd: int, size: int, st: os.stat_result) -> Segment:
        self = object.__new__(cls)
        self._fd = fd
        self._size = size
        self._id = (st.st_dev, st.st_ino)
        _fd_opened()
        self._finalizer = weakref.finalize(self, _close_fd, fd)
        return self

    @classmethod
    def create(cls, size: int, what: str = "", *, name: str | None = None,
               margin: int = SAFETY_MARGIN) -> Segment:
        """A new zero-filled segment of ``size`` bytes, its pages allocated up front.

        ``what`` names the value in the error message ("argument 'arr' of transformation f");
        ``name``, the transformer's name, adds the hint ``{name}.local = True``.  Raises
        ``SharedMemoryError`` when ``size`` plus ``margin`` exceeds the available memory or
        the cgroup's headroom, or when ``memfd_create``/``ftruncate``/``fallocate`` fail; no
        descriptor is left open then.
        """
        size = _check_size(size, "size")
        margin = _check_size(margin, "margin")
        if size:
            available, where = available_memory()
            if available is not None and size + margin > available:
                reason = f"{_human(available)} available {where}"
                if size <= available:
                    reason += f", of which {_human(margin)} is kept as a safety margin"
                raise _allocation_error(size, what, reason, name)
        try:
            fd = os.memfd_create("seamless-segment", os.MFD_CLOEXEC)
        except OSError as exc:
            raise _allocation_error(size, what, _os_reason("memfd_create", exc), name) from exc
        try:
            call = "ftruncate"
            injected = _take_injected()
            if injected is not None:
                raise injected
            os.ftruncate(fd, size)
            if size:
                call = "fallocate"
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in _FALLOCATE_UNSUPPORTED:
                        raise
            call = "fstat"
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise _allocation_error(size, what, _os_reason(call, exc), name) from exc
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(fd, size, st)

    @classmethod
    def from_fd(cls, fd: int, size: int) -> Segment:
        """Take ownership of a received descriptor of a segment with ``size`` logical bytes.

        Ownership passes even when this raises (the descriptor is then closed): ValueError when
        it is not a regular file or is smaller than ``size``.  Only a ``fd`` that is not a
        descriptor at all (not an int, or negative) is refused without closing anything.
        """
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, got {type(fd).__name__} {fd!r}")
        if fd < 0:
            raise ValueError(f"fd must be a descriptor >= 0, got {fd}")
        try:
            size = _check_size(size, "size")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"descriptor {fd} is not a shared-memory segment (not a "
                                 f"regular file, mode {st.st_mode:o})")
            if st.st_size < size:
                raise ValueError(f"descriptor {fd} refers to a segment of {st.st_size} bytes, "
                                 f"smaller than the logical size {size}")
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(fd, size, st)

    @property
    def fd(self) -> int:
        """The owned descriptor (ValueError once closed); send it, never close it yourself."""
        if not self._finalizer.alive:
            raise ValueError(f"segment {self._id[0]}:{self._id[1]} is closed: its descriptor "
                             f"was released by close()")
        return self._fd

    @property
    def size(self) -> int:
        """The logical size in bytes: what mappings expose."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether this Segment's descriptor is closed (mappings made before stay valid)."""
        return not self._finalizer.alive

    def segment_id(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the memfd: equal for every descriptor and mapping of it."""
        return self._id

    def close(self) -> None:
        """Close the descriptor now; mappings already made stay valid.  Idempotent."""
        self._finalizer()

    def _map(self, prot: int) -> memoryview:
        fd = self.fd
        mapping = _Mapping(fd, self._size, flags=mmap.MAP_SHARED, prot=prot, **_MMAP_KW)
        mapping.segment = self
        return memoryview(mapping)

    def readonly(self) -> memoryview:
        """A new ``PROT_READ``/``MAP_SHARED`` mapping of the logical size, as a read-only view.

        Arrays built on it are ``writeable=False`` and cannot be made writeable; it keeps this
        Segment alive.  Size 0: an empty view, no mapping.
        """
        if self._size == 0:
            return memoryview(b"")
        return self._map(mmap.PROT_READ)

    def writable(self) -> memoryview:
        """A new read-write ``MAP_SHARED`` mapping of the logical size, for filling.

        The caller drops it (and anything built on it) before the segment is shared: that is
        what makes a shared segment immutable.  Size 0: an empty writable view, no mapping.
        """
        if self._size == 0:
            return memoryview(bytearray())
        return self._map(mmap.PROT_READ | mmap.PROT_WRITE)

    def fill(self, src, hasher=None) -> None:
        """Copy the C-contiguous buffer ``src`` (exactly ``size`` bytes) into the segment.

        One pass; with ``hasher`` each chunk is hashed as it is copied (``shm_array.
        copy_and_hash``).  Counts ``bytes_copied`` (and ``bytes_hashed``); the writable mapping
        used is unmapped before returning.
        """
        view = _byte_view(src)
        n = view.nbytes
        if n != self._size:
            raise ValueError(f"src has {n} bytes but the segment's size is {self._size} "
                             f"(fill needs exactly the segment's size)")
        if n:
            dst = self.writable()
            mapping = dst.obj
            try:
                if hasher is None:
                    dst[:] = view
                else:
                    shm_array.copy_and_hash(view, dst, hasher)
            finally:
                dst.release()
                mapping.close()
        add_copied(n)
        if hasher is not None:
            add_hashed(n)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Segment {self._id[0]}:{self._id[1]} size={self._size} {state}>"


def _mapping_of(obj) -> _Mapping | None:
    """The segment mapping under a memoryview / numpy array (following .obj / .base), or None."""
    numpy = sys.modules.get("numpy")
    for _ in range(256):
        if isinstance(obj, _Mapping):
            return None if obj.closed else obj
        if isinstance(obj, memoryview):
            try:
                obj = obj.obj
            except ValueError:  # a released view refers to nothing any more
                return None
        elif numpy is not None and isinstance(obj, numpy.ndarray):
            obj = obj.base
        else:
            return None
    return None


def segment_of(obj) -> Segment | None:
    """The ``Segment`` whose mapping holds the memory of a numpy array / memoryview, or None."""
    mapping = _mapping_of(obj)
    return None if mapping is None else mapping.segment


def segment_id(obj) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the segment holding obj's memory, or None (not a segment)."""
    mapping = _mapping_of(obj)
    return None if mapping is None else mapping.segment.segment_id()
