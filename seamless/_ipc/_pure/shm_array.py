"""Pure-Python twin of seamless/_ipc/shm_array.pyx: segments, free list, copy-and-hash, arrays.

This module is the executable specification of the compiled core (same names, same errors,
same counters); only speed and the numpy data-memory handler differ (see ``install_allocator``).

Fused copy-and-hash
    ``copy_and_hash(src, dst, hasher)`` views both buffers as flat byte memoryviews; for each
    consecutive ``CHUNK_BYTES`` slice of ``src`` the slice is copied into ``dst`` and then given
    to ``hasher.update``, sequentially on the calling thread (the compiled module overlaps the
    two with a helper thread; no caller can tell except through ``dst`` after an exception).
    The caller owns ``src``, ``dst`` and ``hasher``; views taken here are released before
    returning.

Segments
    A ``Segment`` is one anonymous memfd (``memfd_create(MFD_CLOEXEC)``) whose logical buffer is
    the bytes ``[offset, offset + size)`` of the file; the file (``capacity`` bytes) may be
    larger (size classes, recycling; ``offset`` > 0 for results born by the numpy allocator,
    which have a header in front).  Values of 1 MiB and more travel between the parent and the
    workers in segments: the creator fills one, the descriptor crosses the channel as
    ``SCM_RIGHTS`` data and the receiver maps it read-only (docs/worker-pool.md).

Ownership
- **Descriptor.** ``Segment.create`` makes one (or takes one from the free list);
  ``Segment.from_fd`` takes over a received one (also when it raises: it is then closed).  The
  ``Segment`` owns it: ``close()`` closes it at once; otherwise, when the ``Segment`` is garbage
  and no mapping made from it is alive (a ``weakref.finalize``; each mapping holds the
  ``Segment``), the descriptor is *released*: handed to ``on_release(fd)`` for a ``from_fd``
  segment that has one (the callback owns it from then on), put on this process's free list for
  a ``create``d segment with ``recycle=True`` (closed instead when over budget), else closed.
  A process that inherited a ``Segment`` through ``fork`` only ever closes it.
- **Mappings.** ``readonly()`` / ``writable()`` each make a new ``MAP_SHARED`` mapping from the
  page boundary at or below ``offset``, exposed as a memoryview of exactly the logical bytes
  and owned by it and whatever is built on it (a numpy array keeps it through ``.base``).  It
  is unmapped when the last such object goes; ``close()`` does not unmap anything.  On Python
  < 3.13 each mapping also holds its own duplicate of the descriptor (``mmap`` duplicates it);
  the compiled core does not.
- **Free list** (one per process, one lock): entries ``(fd, capacity, last_used)`` own their
  descriptors; ``create`` takes the smallest fitting entry, ``trim()`` / ``trim_idle()`` close
  entries, ``recycle(fd)`` and ``prewarm(nbytes)`` add them.  A child made by ``fork`` closes
  the entries it inherited (they are its parent's memory).
- **Immutability** comes from the mappings, never from seals (a sealed memfd could not be
  recycled): the creator fills through ``writable()`` or ``fill`` and drops every writable
  mapping before the segment is shared; everyone else maps it with ``readonly()``
  (``PROT_READ``), so arrays over it are ``writeable=False`` and cannot be made writeable.
- **Counters** (``bytes_copied``, ``bytes_hashed``, ``live_segments``) are process-wide and
  guarded by the lock; ``live_segments()`` counts ``Segment`` objects whose descriptor is still
  open (free-list entries are not counted: see ``free_list()``).

Allocation takes a free-list entry when one fits, else checks the size against ``MemAvailable``
and the cgroup's headroom (v2 ``memory.max - memory.current``, v1 ``memory.limit_in_bytes -
memory.usage_in_bytes``, in the process's cgroup and each ancestor) minus a safety margin, then
``memfd_create`` + ``ftruncate`` to the size class + ``posix_fallocate`` of the size; too little
memory or a failing call is a ``SharedMemoryError`` naming the size (docs/worker-pool.md), and
nothing is left open.

What both backends share (chunk size, argument checks, the memory check and the error texts,
trim hooks) lives in seamless/_ipc/policy/segments.py.

The numpy data-memory handler exists only in the compiled core: here ``install_allocator``
returns False, ``allocator_installed()`` is False and ``claim()`` returns None.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import sys
import threading
import time
import weakref

from seamless import machine
from seamless._ipc.policy import segments as policy
from seamless._ipc.policy.segments import CHUNK_BYTES, SAFETY_MARGIN, available_memory

__all__ = [
    "CHUNK_BYTES", "copy_and_hash", "hash_into",
    "SAFETY_MARGIN", "Segment", "segment_id", "segment_of", "available_memory", "as_array",
    "bytes_copied", "bytes_hashed", "add_copied", "add_hashed", "live_segments",
    "reset_counters", "trim", "trim_idle", "register_trim_hook", "unregister_trim_hook",
    "recycle", "prewarm", "free_list", "set_free_list_budget", "size_class",
    "install_allocator", "uninstall_allocator", "allocator_installed", "claim",
]

_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_PAGE = machine.snapshot().page_size

# posix_fallocate errors that mean "not supported here", not "no memory": allocation then
# happens on first touch, as without fallocate.
_FALLOCATE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

_lock = threading.Lock()
_copied = 0
_hashed = 0
_live = 0
_injected: list = []          # OSErrors that the next create() calls raise instead of ftruncate's
_trim_hooks = policy.TrimHooks()
_free: list = []              # free-list entries [fd, capacity, last_used (time.monotonic())]
_free_bytes = 0
_budget = machine.snapshot().total_memory // 4   # a quarter of RAM, as the compiled twin


# --- copy and hash ---------------------------------------------------------------------------

def _byte_view(obj, name: str) -> memoryview:
    """A flat memoryview (format "B") of obj's bytes; TypeError for a non-buffer,
    ValueError for a non-C-contiguous buffer."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise policy.not_a_buffer(name, obj) from None
    except ValueError:
        # numpy refuses an item format for datetime64/timedelta64; their bytes are plain.
        numpy = sys.modules.get("numpy")
        if numpy is None or not isinstance(obj, numpy.ndarray):
            raise
        if not obj.flags.c_contiguous:
            raise policy.not_contiguous(name, obj, obj.shape, obj.strides) from None
        return memoryview(obj.reshape(-1).view(numpy.uint8))
    if not view.c_contiguous:
        raise policy.not_contiguous(name, obj, view.shape, view.strides)
    if view.nbytes == 0:
        # cast() refuses shapes containing 0; an empty view with the same writability.
        return memoryview(b"") if view.readonly else memoryview(bytearray())
    return view.cast("B")


def _overlap(a: memoryview, b: memoryview) -> bool:
    """Whether two non-empty flat byte views share memory (exact for contiguous ranges)."""
    import numpy

    return bool(numpy.may_share_memory(numpy.frombuffer(a, numpy.uint8),
                                       numpy.frombuffer(b, numpy.uint8)))


def copy_and_hash(src, dst, hasher) -> None:
    """Copy ``src`` into ``dst`` and feed exactly src's bytes to ``hasher.update``.

    Fused so each chunk is hashed right after it is copied.  ``src``: C-contiguous
    buffer; ``dst``: writable C-contiguous buffer of the same nbytes, not overlapping
    ``src``; ``hasher``: anything with ``update(bytes_like)``, called with
    consecutive read-only 1 MiB memoryviews of ``src`` in order.  Raises
    TypeError/ValueError for bad buffers before any byte is copied; after an
    exception from ``hasher.update`` ``dst`` holds unspecified bytes.
    """
    with _byte_view(src, "src") as s, _byte_view(dst, "dst") as d:
        policy.check_copy(dst, d.readonly, d.nbytes, s.nbytes)
        if s.nbytes and _overlap(s, d):
            raise ValueError(policy.OVERLAP)
        update = hasher.update
        chunks = s.toreadonly()
        for off in range(0, s.nbytes, CHUNK_BYTES):
            chunk = chunks[off:off + CHUNK_BYTES]
            d[off:off + CHUNK_BYTES] = chunk
            update(chunk)


def hash_into(src, hasher) -> None:
    """Feed the bytes of the C-contiguous buffer ``src`` to ``hasher.update`` in 1 MiB chunks.

    Chunked like copy_and_hash so both give a hasher the same calls.
    """
    with _byte_view(src, "src") as s:
        update = hasher.update
        chunks = s.toreadonly()
        for off in range(0, s.nbytes, CHUNK_BYTES):
            update(chunks[off:off + CHUNK_BYTES])


# --- counters --------------------------------------------------------------------------------

def bytes_copied() -> int:
    """Bytes copied into or out of segments for this process's transformations so far."""
    return _copied


def bytes_hashed() -> int:
    """Bytes hashed while filling segments (and reported by workers) so far."""
    return _hashed


def add_copied(n: int) -> None:
    """Add ``n`` bytes to ``bytes_copied()`` (the pool reports worker-side copies with it)."""
    global _copied
    n = policy.checked_count(n, "add_copied")
    with _lock:
        _copied += n


def add_hashed(n: int) -> None:
    """Add ``n`` bytes to ``bytes_hashed()``."""
    global _hashed
    n = policy.checked_count(n, "add_hashed")
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


# --- free list -------------------------------------------------------------------------------

def size_class(size: int) -> int:
    """The file size given to a new segment of ``size`` bytes: a page multiple below 1 MiB, a
    MiB multiple below 64 MiB, then a multiple of 1/8 of the power of two at or below
    ``size`` (so at most 12.5 % is wasted and freed segments fit later values of similar size).
    """
    size = policy.check_size(size, "size")
    if size < (1 << 20):
        step = _PAGE
    elif size < (64 << 20):
        step = 1 << 20
    else:
        step = 1 << (size.bit_length() - 1 - 3)
    return -(-size // step) * step


def _fits(capacity: int, size: int) -> bool:
    """Whether a free entry of ``capacity`` bytes may serve ``size`` bytes: big enough, and not
    more than twice the size (or exactly the size's class), so a small value never pins a
    huge segment."""
    return size <= capacity and (capacity <= 2 * size or capacity == size_class(size))


def _free_take(size: int):
    """Remove and return the smallest fitting entry as (fd, capacity), or None."""
    global _free_bytes
    if size == 0:
        return None
    with _lock:
        best = None
        for i, (fd, capacity, _) in enumerate(_free):
            if _fits(capacity, size) and (best is None or capacity < _free[best][1]):
                best = i
        if best is None:
            return None
        fd, capacity, _ = _free.pop(best)
        _free_bytes -= capacity
        return fd, capacity


def _free_put(fd: int, capacity: int) -> bool:
    """Give ``fd`` to the free list; closed instead (False) when the budget does not allow.

    Only whole pages count: a mapping never reaches past the end of the file (SIGBUS), even
    for a descriptor of odd size handed to recycle()."""
    global _free_bytes
    capacity -= capacity % _PAGE
    with _lock:
        if 0 < capacity and _free_bytes + capacity <= _budget:
            _free.append([fd, capacity, time.monotonic()])
            _free_bytes += capacity
            return True
    os.close(fd)
    return False


def _free_close(keep) -> int:
    """Close every entry for which ``keep(entry)`` is false; return how many were closed."""
    global _free_bytes
    with _lock:
        gone = [entry for entry in _free if not keep(entry)]
        _free[:] = [entry for entry in _free if keep(entry)]
        _free_bytes -= sum(entry[1] for entry in gone)
    for fd, _, _ in gone:
        os.close(fd)
    return len(gone)


def set_free_list_budget(nbytes: int) -> None:
    """Bound the free list to ``nbytes`` (default: 25 % of physical RAM).  Entries beyond a
    lowered budget are closed, least recently used first."""
    global _budget, _free_bytes
    nbytes = policy.check_size(nbytes, "nbytes")
    with _lock:
        _budget = nbytes
        _free.sort(key=lambda entry: entry[2])
        gone = []
        while _free and _free_bytes > _budget:
            entry = _free.pop(0)
            _free_bytes -= entry[1]
            gone.append(entry)
    for fd, _, _ in gone:
        os.close(fd)


def free_list() -> list[tuple[int, float]]:
    """``(capacity, age in seconds)`` of each free-list entry, oldest first (for tests)."""
    now = time.monotonic()
    with _lock:
        return sorted(((capacity, now - used) for _, capacity, used in _free),
                      key=lambda item: -item[1])


def trim_idle(max_age_s: float) -> int:
    """Close the free-list entries unused for more than ``max_age_s`` seconds; return how many."""
    limit = time.monotonic() - float(max_age_s)
    return _free_close(lambda entry: entry[2] >= limit)


def recycle(fd: int) -> bool:
    """Adopt a descriptor handed back (a result segment returned by the parent) into the free
    list.  Takes ownership: it is closed instead (False) when over budget or not a memfd."""
    policy.check_fd(fd)
    try:
        st = os.fstat(fd)
        fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # EINVAL unless a memfd (shmem file)
    except OSError:
        os.close(fd)
        return False
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return False
    return _free_put(fd, st.st_size)


def prewarm(nbytes: int) -> None:
    """Create one segment of ``nbytes``, touch every page, and put it on the free list, so the
    first value of that size gets memory already faulted in.  SharedMemoryError when short."""
    seg = Segment.create(nbytes, "a prewarmed segment", recycle=False)
    if seg.size:
        view = seg.writable()
        try:
            view[:] = bytes(seg.size)
        finally:
            mapping = view.obj
            view.release()
            mapping.close()
    fd, capacity = seg._detach()
    _free_put(fd, capacity)


def _after_fork_in_child() -> None:
    """A forked child must not reuse its parent's memory: close the inherited entries."""
    global _free_bytes, _lock
    _lock = threading.Lock()
    entries = list(_free)
    _free.clear()
    _free_bytes = 0
    for fd, _, _ in entries:
        try:
            os.close(fd)
        except OSError:
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- trim ------------------------------------------------------------------------------------

def register_trim_hook(fn) -> None:
    """Have ``trim()`` call ``fn()`` (once per registration; registering again is a no-op)."""
    _trim_hooks.register(fn)


def unregister_trim_hook(fn) -> None:
    """Stop calling ``fn`` from ``trim()``; a hook that is not registered is ignored."""
    _trim_hooks.unregister(fn)


def trim() -> None:
    """Close every free-list entry, then run every registered hook.

    Every hook runs even if an earlier one raises; the first exception is re-raised afterwards.
    """
    _free_close(lambda entry: False)
    _trim_hooks.run()


def _fail_next_create(error: OSError | None = None, *, count: int = 1) -> None:
    """Test hook: the next ``count`` creations of a new memfd (``Segment.create``, ``prewarm``;
    in the compiled core also the numpy allocator) fail as if ``ftruncate`` raised ``error``
    (default ``ENOSPC``), through the real error path.  ``count=0`` clears the hook.
    """
    code, count = policy.injection(error, count)
    with _lock:
        _injected[:] = [OSError(code, os.strerror(code))] * count


def _take_injected() -> OSError | None:
    with _lock:
        return _injected.pop(0) if _injected else None


# --- segments --------------------------------------------------------------------------------

class _Mapping(mmap.mmap):
    """A mapping of a segment; holds the Segment so its descriptor outlives no mapping early."""

    __slots__ = ("segment",)


def _close_fd(fd: int) -> None:
    global _live
    with _lock:
        _live -= 1
    os.close(fd)


def _release(fd: int, capacity: int, recycle: bool, on_release, pid: int) -> None:
    """Finalizer of a Segment that was not closed: hand the descriptor on (see Ownership)."""
    if pid != os.getpid() or (on_release is None and not recycle):
        _close_fd(fd)
        return
    global _live
    with _lock:
        _live -= 1
    if on_release is not None:
        on_release(fd)
    else:
        _free_put(fd, capacity)


def _new_memfd(size: int, capacity: int) -> int:
    """memfd_create + ftruncate(capacity) + fallocate(size); OSError (nothing left open) with
    the failing call's name in ``exc.call``."""
    call = "memfd_create"
    fd = -1
    try:
        fd = os.memfd_create("seamless-segment", os.MFD_CLOEXEC)
        call = "ftruncate"
        injected = _take_injected()
        if injected is not None:
            raise injected
        os.ftruncate(fd, capacity)
        if size:
            call = "fallocate"
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in _FALLOCATE_UNSUPPORTED:
                    raise
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        exc.call = call
        raise
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


class Segment:
    """One anonymous memfd whose bytes ``[offset, offset + size)`` hold one buffer.

    Build with ``Segment.create(size)`` or ``Segment.from_fd(fd, size)``.  Only the logical
    bytes are ever exposed, whatever the file's size (``capacity``).
    """

    __slots__ = ("_fd", "_size", "_capacity", "_offset", "_id", "_reused", "_finalizer",
                 "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("build a Segment with Segment.create(size) or Segment.from_fd(fd, size)")

    @classmethod
    def _adopt(cls, fd: int, size: int, st: os.stat_result, offset: int = 0,
               recycle: bool = False, on_release=None) -> Segment:
        global _live
        self = object.__new__(cls)
        self._fd = fd
        self._size = size
        self._capacity = st.st_size
        self._offset = offset
        self._id = (st.st_dev, st.st_ino)
        self._reused = False
        with _lock:
            _live += 1
        self._finalizer = weakref.finalize(self, _release, fd, st.st_size, recycle, on_release,
                                           os.getpid())
        return self

    @classmethod
    def create(cls, size: int, what: str = "", *, name: str | None = None,
               margin: int = SAFETY_MARGIN, recycle: bool = True) -> Segment:
        """A segment of ``size`` bytes, its pages allocated up front.

        With ``recycle`` a free-list entry is taken when one fits (the smallest with
        ``size <= capacity <= 2 * size``, or of exactly ``size_class(size)``): its contents are
        then unspecified (callers fill the whole size), and the segment returns to the free
        list when it is garbage.  Otherwise a new memfd of ``size_class(size)`` bytes, zero
        filled.  ``what`` names the value in the error message ("argument 'arr' of
        transformation f"); ``name``, the transformer's name, adds the hint ``{name}.local =
        True``.  Raises ``SharedMemoryError`` when ``size`` plus ``margin`` exceeds the
        available memory or the cgroup's headroom, or when ``memfd_create``/``ftruncate``/
        ``fallocate`` fail; no descriptor is left open then.
        """
        size = policy.check_size(size, "size")
        margin = policy.check_size(margin, "margin")
        if recycle:
            taken = _free_take(size)
            if taken is not None:
                seg = cls._adopt(taken[0], size, os.fstat(taken[0]), recycle=True)
                seg._reused = True
                return seg
        if size:
            policy.check_memory(size, margin, what, name)
        try:
            fd = _new_memfd(size, size_class(size))
        except OSError as exc:
            raise policy.allocation_error(size, what, policy.os_reason(exc.call, exc),
                                          name) from exc
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(fd, size, st, recycle=recycle)

    @classmethod
    def from_fd(cls, fd: int, size: int, *, offset: int = 0, on_release=None) -> Segment:
        """Take ownership of a received descriptor whose bytes ``[offset, offset + size)`` are
        the logical buffer.

        ``on_release(fd)``, if given, is called instead of closing when this Segment and its
        last mapping are garbage (from any thread; it takes the descriptor over and must be
        cheap); ``close()`` still closes.  Ownership passes even when this raises (the
        descriptor is then closed): ValueError when it is not a regular file or is too small.
        Only a ``fd`` that is not a descriptor at all (not an int, or negative) is refused
        without closing anything.
        """
        policy.check_fd(fd)
        try:
            size = policy.check_size(size, "size")
            offset = policy.check_size(offset, "offset")
            policy.check_on_release(on_release)
            st = os.fstat(fd)
            policy.check_received(fd, st.st_mode, st.st_size, size, offset)
        except BaseException:
            os.close(fd)
            raise
        return cls._adopt(fd, size, st, offset=offset, on_release=on_release)

    @property
    def fd(self) -> int:
        """The owned descriptor (ValueError once closed); send it, never close it yourself."""
        if not self._finalizer.alive:
            raise policy.closed_segment(self._id)
        return self._fd

    @property
    def size(self) -> int:
        """The logical size in bytes: what mappings expose."""
        return self._size

    @property
    def reused(self) -> bool:
        """Whether ``create`` took this segment from the free list: its pages are touched
        already, so mapping it with ``populate=True`` is cheap."""
        return self._reused

    @property
    def capacity(self) -> int:
        """The file's size in bytes when this Segment took it (>= offset + size)."""
        return self._capacity

    @property
    def offset(self) -> int:
        """Where the logical bytes start in the file (a header may sit in front)."""
        return self._offset

    @property
    def closed(self) -> bool:
        """Whether this Segment's descriptor is closed (mappings made before stay valid)."""
        return not self._finalizer.alive

    def segment_id(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the memfd: equal for every descriptor and mapping of it."""
        return self._id

    def close(self) -> None:
        """Close the descriptor now (never recycled, no ``on_release``); mappings already made
        stay valid.  Idempotent."""
        if self._finalizer.detach() is not None:
            _close_fd(self._fd)

    def _detach(self) -> tuple[int, int]:
        """Hand the descriptor to the caller as (fd, capacity); this Segment counts as closed."""
        global _live
        if self._finalizer.detach() is None:
            raise ValueError(f"segment {self._id[0]}:{self._id[1]} is closed")
        with _lock:
            _live -= 1
        return self._fd, self._capacity

    def _map(self, prot: int, populate: bool) -> memoryview:
        fd = self.fd
        start = self._offset - self._offset % _PAGE
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        mapping = _Mapping(fd, self._offset - start + self._size, flags=flags, prot=prot,
                           offset=start, **_MMAP_KW)
        mapping.segment = self
        view = memoryview(mapping)
        return view[self._offset - start:] if self._offset != start else view

    def readonly(self, populate: bool = False) -> memoryview:
        """A new ``PROT_READ``/``MAP_SHARED`` mapping of the logical bytes, as a read-only view.

        Arrays built on it are ``writeable=False`` and cannot be made writeable; it keeps this
        Segment alive.  ``populate`` faults every page in up front (``MAP_POPULATE``: much
        cheaper than faulting page by page for a large segment read whole).  Size 0: an empty
        view, no mapping.
        """
        if self._size == 0:
            return memoryview(b"")
        return self._map(mmap.PROT_READ, populate)

    def writable(self, populate: bool = False) -> memoryview:
        """A new read-write ``MAP_SHARED`` mapping of the logical bytes, for filling.

        The caller drops it (and anything built on it) before the segment is shared: that is
        what makes a shared segment immutable.  Size 0: an empty writable view, no mapping.
        """
        if self._size == 0:
            return memoryview(bytearray())
        return self._map(mmap.PROT_READ | mmap.PROT_WRITE, populate)

    def fill(self, src, hasher=None) -> None:
        """Copy the C-contiguous buffer ``src`` (exactly ``size`` bytes) into the segment.

        One pass; with ``hasher`` each chunk is hashed as it is copied (``copy_and_hash``).
        Counts ``bytes_copied`` (and ``bytes_hashed``); the writable mapping used is unmapped
        before returning.
        """
        with _byte_view(src, "src") as view:
            self._fill(view, hasher)

    def _fill(self, view: memoryview, hasher) -> None:
        n = view.nbytes
        if n != self._size:
            raise policy.fill_size_mismatch(n, self._size)
        if n:
            dst = self.writable(populate=True)
            mapping = dst.obj
            try:
                if hasher is None:
                    dst[:] = view
                else:
                    copy_and_hash(view, dst, hasher)
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


def as_array(segment: Segment, dtype, shape):
    """A read-only numpy array of ``dtype`` and ``shape`` over ``segment.readonly()``.

    ``writeable=False`` and cannot be made writeable; its ``.base`` chain ends at the mapping,
    which keeps the Segment alive, so ``segment_of`` finds it from the array and any view.
    ValueError when dtype and shape do not cover exactly the segment's size.
    """
    import numpy

    dtype = numpy.dtype(dtype)
    shape, count = policy.array_count(dtype, shape, segment.size)
    return numpy.frombuffer(segment.readonly(), dtype=dtype, count=count).reshape(shape)


# --- numpy data-memory handler (compiled core only) ------------------------------------------

def install_allocator(threshold: int = 1 << 20, headroom: int = 4096) -> bool:
    """No data-memory handler in the pure-Python core: returns False (numpy's own handler
    stays, so results are copied once into a segment)."""
    policy.check_size(threshold, "threshold")
    policy.check_size(headroom, "headroom")
    return False


def uninstall_allocator() -> None:
    """Nothing to restore in the pure-Python core."""


def allocator_installed() -> bool:
    """Always False in the pure-Python core."""
    return False


def claim(array, prefix: bytes) -> Segment | None:
    """Always None in the pure-Python core: no array is born in a segment here."""
    return None
