"""Content-addressed buffer files of the persistent cache (docs/caching.md, "The persistent cache").

Layout: ``<dir>/buffers/<first two hex>/<checksum>`` holds exactly the canonical bytes whose
SHA-256 is ``<checksum>``. A write in progress is ``<same dir>/.tmp-<checksum>-<pid>-<random>``.

Data flow and ownership:

- ``write_file`` (called on the persistent cache's writer thread, or synchronously by
  ``write_now``) writes the caller's buffer to a temp file in the final directory and
  ``os.replace``s it onto the final name. No ``fsync``: every read verifies size and SHA-256,
  so a file a crash left torn is a miss (discarded, recomputed), never a wrong result, and a
  cache of many small results does not pay a disk flush per result (ccache does the same). The temp
  file belongs to the writing call until the rename; on any error that call removes it. After
  the rename the file belongs to the cache directory: any process may read, replace (with
  identical content) or delete it.
- ``read_file`` reads a whole file into private memory and verifies its size and SHA-256 on
  every read; a mismatch raises ``BufferCorrupt`` (the caller discards the entry). It returns a
  read-only ``memoryview``: over one ``bytes`` object for files below ``LARGE_READ``, over an
  anonymous huge-page mapping filled while hashing for larger ones (``_read_large``). The view
  owns its memory: it is freed when the last reference to the view (or to a slice, or to a
  numpy array made from it) goes.

Nothing here touches the database; ``persistent.py`` pairs files with rows.
"""

from __future__ import annotations

import errno
import io
import mmap
import os

from seamless.checksum import new_sha256

__all__ = ["BufferStore", "BufferCorrupt", "BufferMissing", "check_checksum", "is_checksum",
           "makedirs_0700"]

_HEX = frozenset("0123456789abcdef")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# os.write of more than this may be partial on Linux anyway; writing in 1 GiB slices keeps
# every call well-defined.
_WRITE_CHUNK = 1 << 30
TEMP_PREFIX = ".tmp-"
# Files of at least this size are read into huge-page-advised private memory, hashed while
# being read (``_read_large``); smaller ones into one ``bytes`` object.
LARGE_READ = 4 << 20
_READ_CHUNK = 8 << 20
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def is_checksum(value) -> bool:
    """True for a str of 64 lowercase hex characters (no ``re``: the cache-hit path of
    seamless-run reads buffers through this module, and ``re`` costs milliseconds to import)."""
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def check_checksum(name: str, value) -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise (it becomes a path)."""
    if not is_checksum(value):
        raise ValueError(
            f"{name} must be a checksum (64 lowercase hex characters), got {value!r}"
        )
    return value


def makedirs_0700(path: str) -> None:
    """Create ``path`` and missing parents, each with mode 0700; existing ones are left alone."""
    path = os.path.abspath(path)
    missing = []
    head = path
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not os.path.isdir(d):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), d) from None


class BufferCorrupt(Exception):
    """A buffer file failed verification; ``reason`` is the text for the warning."""

    def __init__(self, path: str, reason: str, stat_result=None):
        super().__init__(reason)
        self.path = path
        self.reason = reason
        self.stat_result = stat_result


class BufferMissing(Exception):
    """The buffer file does not exist (a miss, not corruption)."""


def _advise_huge_pages(mm) -> bool:
    """Only an optimisation: a kernel without transparent huge pages refuses the advice."""
    try:
        mm.madvise(_MADV_HUGEPAGE)
    except OSError:
        return False
    return True


def _read_large(fd: int, size: int):
    """Read ``size`` bytes of ``fd`` into fresh private memory while hashing them.

    Why not ``bytes``: filling 100 MB of fresh ``malloc`` memory costs one page fault per
    4 KiB, about as long as the read itself. An anonymous mapping advised for transparent huge
    pages faults once per 2 MiB (numpy's ``fromfile`` gets its speed the same way). A helper
    thread reads chunk after chunk (``os.readv`` releases the GIL) while this thread hashes the
    chunks already read (``hashlib`` releases the GIL too), so the total is close to the hash
    alone. Returns ``(read-only memoryview of the bytes read, hex SHA-256 of them)``; the
    mapping is freed when the last view of it is released.
    """
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if _MADV_HUGEPAGE is not None:
        _advise_huge_pages(mm)
    import threading  # only large reads need it; a command-line hit never loads it

    view = memoryview(mm)
    cond = threading.Condition(threading.Lock())
    state = {"done": 0, "finished": False, "error": None}

    def reader():
        offset = 0
        try:
            while offset < size:
                n = os.readv(fd, [view[offset:offset + _READ_CHUNK]])
                if n == 0:
                    break
                offset += n
                with cond:
                    state["done"] = offset
                    cond.notify()
        except OSError as e:
            with cond:
                state["error"] = e
        finally:
            with cond:
                state["finished"] = True
                cond.notify()

    thread = threading.Thread(target=reader, name="seamless-cache-reader", daemon=True)
    thread.start()
    hasher = new_sha256(size)
    position = 0
    try:
        while True:
            with cond:
                while state["done"] <= position and not state["finished"]:
                    cond.wait()
                end, finished = state["done"], state["finished"]
            if end > position:
                hasher.update(view[position:end])
                position = end
            elif finished:
                break
    finally:
        thread.join()
    if state["error"] is not None:
        raise state["error"]
    return view[:position].toreadonly(), hasher.hexdigest()


class _temp_file:
    """``with _temp_file(directory, label) as (path, fd)``: a new temp file in ``directory``;
    ``fd`` is closed at the end and the file removed unless the block renamed it: it is ours
    until the rename. (A class, not ``contextlib``: its import costs a command-line hit ~3 ms.)
    """

    __slots__ = ("tmp", "fd")

    def __init__(self, directory: str, label: str):
        self.tmp = f"{directory}/{TEMP_PREFIX}{label}-{os.getpid()}-{os.urandom(4).hex()}"
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
        return self.tmp, self.fd

    def __exit__(self, exc_type, exc, tb):
        os.close(self.fd)
        if exc_type is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                return False  # the block renamed or removed it before failing
        return False


def _write_pieces(fd: int, pieces, hasher=None) -> int:
    """Write every bytes-like piece to ``fd`` (and into ``hasher``); returns the byte count."""
    total = 0
    for piece in pieces:
        if hasher is not None:
            hasher.update(piece)
        view = memoryview(piece)
        offset = 0
        while offset < view.nbytes:
            offset += os.write(fd, view[offset:offset + _WRITE_CHUNK])
        total += view.nbytes
    return total


def _size_at(path: str):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _write_new(directory: str, cs: str, view, final: str) -> None:
    with _temp_file(directory, cs) as (tmp, fd):
        _write_pieces(fd, [view])
        os.replace(tmp, final)


def iter_tree(root: str):
    """Yield ``(subdir name, subdir path, file name)`` for everything one level below the
    subdirectories of ``root`` (the ``<first two hex>/<name>`` layout), sorted."""
    try:
        subdirs = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for sub in subdirs:
        subdir = os.path.join(root, sub)
        try:
            names = sorted(os.listdir(subdir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            yield sub, subdir, name


class HexTree:
    """Files named by checksum under ``root``, in ``<first two hex>/<checksum>`` subfolders."""

    def __init__(self, root: str):
        self.root = root
        self._prefix = os.path.join(root, "")  # paths are built per buffer: no join per call

    def path(self, cs: str) -> str:
        return f"{self._prefix}{cs[:2]}/{cs}"

    def iter_files(self):
        """Yield ``(checksum, path)`` for every file named like an entry (for verify/gc)."""
        for sub, subdir, name in iter_tree(self.root):
            if is_checksum(name) and name[:2] == sub:
                yield name, os.path.join(subdir, name)

    def iter_temp_files(self):
        """Yield the paths of temp files (writes in progress or left by a dead writer)."""
        for _sub, subdir, name in iter_tree(self.root):
            if name.startswith(TEMP_PREFIX):
                yield os.path.join(subdir, name)


class BufferStore(HexTree):
    """The ``buffers/`` tree of one cache directory."""

    def __init__(self, directory: str):
        super().__init__(os.path.join(directory, "buffers"))

    def ensure_root(self) -> None:
        makedirs_0700(self.root)

    def size_on_disk(self, cs: str):
        """The file's size, or ``None`` when it does not exist."""
        return _size_at(self.path(cs))

    def write_file(self, cs: str, buffer) -> bool:
        """Store ``buffer`` as the file of ``cs`` atomically; ``False`` if it was already there.

        Raises ``OSError`` on failure, after removing the temp file.
        """
        view = memoryview(buffer)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        final = self.path(cs)
        if _size_at(final) == view.nbytes:
            return False
        directory = final[:-len(cs) - 1]
        try:
            _write_new(directory, cs, view, final)
        except FileNotFoundError:
            # The first buffer of its subfolder (or the subfolder was removed meanwhile): a
            # missing folder is found by the failed open, not looked for before every write.
            makedirs_0700(directory)
            _write_new(directory, cs, view, final)
        return True

    def write_stream(self, pieces, size_hint: int) -> tuple[str, int]:
        """Store the bytes of ``pieces`` (an iterable of bytes-like, about ``size_hint`` bytes
        in all) under their checksum, hashing them while they are written; returns
        ``(checksum, size)``.

        For content produced piece by piece and too large to hold (a shell command's stdout):
        the temp file lives in the ``buffers/`` root until its name is known. Raises ``OSError``
        (also one raised by ``pieces``) after removing the temp file.
        """
        self.ensure_root()
        hasher = new_sha256(size_hint)
        with _temp_file(self.root, "stream") as (tmp, fd):
            size = _write_pieces(fd, pieces, hasher)
            cs = hasher.hexdigest()
            final = self.path(cs)
            makedirs_0700(os.path.dirname(final))
            os.replace(tmp, final)
        return cs, size

    def read_file(self, cs: str, expected_size=None):
        """Return ``(data, stat_result)``: the whole file as a read-only ``memoryview``
        (1-D, format ``"B"``), its size and SHA-256 verified.

        Raises ``BufferMissing`` when there is no file, ``BufferCorrupt`` when it is short, too
        long, unreadable or hashes to another checksum.
        """
        path = self.path(cs)
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            raise BufferMissing(path) from None
        except OSError as e:
            raise BufferCorrupt(path, f"could not be read ([Errno {e.errno}] {e.strerror})") \
                from None
        try:
            st = os.fstat(fd)
            if expected_size is not None and st.st_size != expected_size:
                raise BufferCorrupt(
                    path,
                    f"failed verification (size {st.st_size}, expected {expected_size})", st,
                )
            if st.st_size >= LARGE_READ:
                data, digest = _read_large(fd, st.st_size)
            else:
                # FileIO.readall sizes one bytes object from fstat and reads into it: no copy.
                with io.FileIO(fd, "r", closefd=False) as f:
                    raw = f.readall()
                hasher = new_sha256(len(raw))
                hasher.update(raw)
                digest = hasher.hexdigest()
                data = memoryview(raw)
        except OSError as e:
            raise BufferCorrupt(
                path, f"could not be read ([Errno {e.errno}] {e.strerror})"
            ) from None
        finally:
            os.close(fd)
        if data.nbytes != st.st_size:
            raise BufferCorrupt(
                path, f"failed verification (read {data.nbytes} bytes of {st.st_size})", st
            )
        if digest != cs:
            raise BufferCorrupt(
                path,
                f"failed verification (its {data.nbytes} bytes hash to {digest[:12]}…)", st,
            )
        return data, st

    def remove_if_same(self, cs: str, stat_result) -> bool:
        """Delete the file of ``cs`` if it is still the inode that was read.

        Returns ``False`` when a concurrent writer replaced it meanwhile (that copy is new and
        stays), ``True`` when the file is gone. Raises ``OSError`` when it cannot be removed.
        """
        path = self.path(cs)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if stat_result is not None and (st.st_ino, st.st_dev) != (
            stat_result.st_ino, stat_result.st_dev
        ):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return True
        return True

