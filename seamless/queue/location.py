"""Where a queue server lives, and whether that place is safe (docs/cli.md, "Queue").

One server per working directory. Its files share one stem in the user's private runtime
directory: ``queue-<h>.sock`` (the socket), ``queue-<h>.lock`` (an exclusive ``flock`` held for the
server's life) and ``queue-<h>.json`` (pid, host, dir, workers, started, socket). ``<h>`` is the
first 16 hex digits of the SHA-256 of the directory's real path (bytes). The runtime directory
is ``$XDG_RUNTIME_DIR/seamless/``, else ``${TMPDIR:-/tmp}/seamless-<uid>/``; it must be a real
directory owned by the user with no group or other permission bits, else nothing is trusted
there. ``SEAMLESS_QUEUE_SOCKET`` replaces the socket path; the lock and info files then lie beside
it (``<socket>.lock``, ``<socket>.json``) and its parent must be the user's and not writable by
others.

AF_UNIX paths are limited to 107 bytes. ``bind`` and ``connect`` here reach a longer path
through ``/proc/self/fd/<dirfd>/<name>``, with ``dirfd`` an ``O_PATH`` descriptor of its
directory, so a deep ``XDG_RUNTIME_DIR`` works; a name alone that is still too long is an error.

This module opens nothing it keeps: callers own the sockets and descriptors it returns.
"""

from __future__ import annotations

import _socket  # not socket: its enum and selectors imports cost --qsubmit about 2.5 ms
import os
import stat

from seamless.checksum import sha256_hex

__all__ = [
    "QueueLocationError", "ServerFiles", "runtime_dir", "server_files", "check_private_dir",
    "bind", "connect", "lock_is_held", "read_info", "find_server",
]

_SUN_PATH_MAX = 107
_FIX = "remove it, or set SEAMLESS_QUEUE_SOCKET to a path in a private directory"


class QueueLocationError(Exception):
    """No usable server location: the text names the path, what is wrong and the fix."""


class ServerFiles:
    """The three files of the server for one directory."""

    __slots__ = ("directory", "socket", "lock", "info")

    def __init__(self, directory: str, socket_path: str, lock: str, info: str):
        self.directory = directory
        self.socket = socket_path
        self.lock = lock
        self.info = info

    def __repr__(self):
        return f"ServerFiles({self.socket!r})"


def runtime_dir() -> str:
    """The per-user directory of server files (not created here)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "seamless")
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"seamless-{os.getuid()}")


def _stem(directory: str) -> str:
    real = os.path.realpath(directory)
    return "queue-" + str(sha256_hex(os.fsencode(real)))[:16]


def server_files(directory: str) -> ServerFiles:
    """The files of the server for ``directory`` (honours ``SEAMLESS_QUEUE_SOCKET``)."""
    real = os.path.realpath(directory)
    override = os.environ.get("SEAMLESS_QUEUE_SOCKET")
    if override:
        path = os.path.abspath(override)
        return ServerFiles(real, path, path + ".lock", path + ".json")
    base = os.path.join(runtime_dir(), _stem(real))
    return ServerFiles(real, base + ".sock", base + ".lock", base + ".json")


def _describe_mode(st) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def check_private_dir(path: str, create: bool) -> None:
    """Make sure ``path`` is a real directory of this user without group/other permissions,
    creating it 0700 when ``create``; ``QueueLocationError`` otherwise."""
    if create:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise QueueLocationError(f"cannot create the socket directory {path} "
                                     f"({e.strerror or e}); set SEAMLESS_QUEUE_SOCKET to a path "
                                     "in a private directory") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise QueueLocationError(f"the socket directory {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise QueueLocationError(f"the socket directory {path} is {kind}; {_FIX}")
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise QueueLocationError(f"the socket directory {path} is not private "
                                 f"({_describe_mode(st)}; it must be yours with mode 0700); "
                                 f"{_FIX}")


def check_socket_parent(files: ServerFiles, create: bool) -> None:
    """The directory of ``files.socket`` is safe: the private runtime directory, or the user's own
    directory not writable by others when ``SEAMLESS_QUEUE_SOCKET`` chose it."""
    parent = os.path.dirname(files.socket)
    if not os.environ.get("SEAMLESS_QUEUE_SOCKET"):
        check_private_dir(parent, create)
        return
    try:
        st = os.stat(parent)
    except OSError as e:
        raise QueueLocationError(f"SEAMLESS_QUEUE_SOCKET={files.socket}: its directory "
                                 f"cannot be used ({e.strerror or e})") from None
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022:
        raise QueueLocationError(f"SEAMLESS_QUEUE_SOCKET={files.socket}: its directory {parent} "
                                 f"is not safe ({_describe_mode(st)}; it must be yours and not "
                                 "writable by group or others); choose a private directory")


def _short_address(path: str):
    """``(address, dirfd)``: ``path`` itself when short enough, else a ``/proc/self/fd`` path
    through an ``O_PATH`` descriptor of its directory (the caller closes ``dirfd``)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path, None
    directory, name = os.path.split(path)
    dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    address = f"/proc/self/fd/{dirfd}/{name}"
    if len(os.fsencode(address)) > _SUN_PATH_MAX:
        os.close(dirfd)
        raise QueueLocationError(f"the socket name {name!r} is too long for a Unix socket "
                                 f"({len(os.fsencode(name))} bytes); use a shorter "
                                 "SEAMLESS_QUEUE_SOCKET")
    return address, dirfd


def _through_short_address(sock, path: str, operation) -> None:
    address, dirfd = _short_address(path)
    try:
        operation(sock, address)
    finally:
        if dirfd is not None:
            os.close(dirfd)


def bind(sock, path: str) -> None:
    """``sock.bind(path)`` for a path of any length."""
    _through_short_address(sock, path, _socket.socket.bind)


class ClientSocket(_socket.socket):
    """A Unix stream socket of the ``_socket`` module that closes at the end of a ``with``."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(path: str, timeout: float | None = None) -> ClientSocket:
    """A blocking Unix stream socket connected to ``path`` (``OSError`` when nobody listens)."""
    sock = ClientSocket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        _through_short_address(sock, path, _socket.socket.connect)
    except BaseException:
        sock.close()
        raise
    return sock


def lock_is_held(lock_path: str) -> bool:
    """True when some process holds the exclusive ``flock`` of ``lock_path`` (a live server,
    perhaps still starting)."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def read_info(info_path: str) -> dict | None:
    """The server's info record, or ``None`` when absent or unreadable."""
    import json

    try:
        with open(info_path, "rb") as f:
            record = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _live(files: ServerFiles) -> bool:
    return lock_is_held(files.lock)


def find_server(cwd: str | None = None) -> ServerFiles:
    """The server a client should talk to (docs/cli.md): ``SEAMLESS_QUEUE_SOCKET``; else the live
    server of ``cwd`` or its nearest parent; else the user's only live server.

    ``QueueLocationError`` when there is none (naming where it looked and how to start one) or
    several (listing them). A server whose lock is held but whose socket is not yet listening
    is returned: the caller waits for it.
    """
    cwd = os.path.realpath(cwd or os.getcwd())
    if os.environ.get("SEAMLESS_QUEUE_SOCKET"):
        return server_files(cwd)
    directory = cwd
    while True:
        files = server_files(directory)
        if _live(files):
            return files
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    live = []
    run_dir = runtime_dir()
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        names = []
    for name in names:
        if name.startswith("queue-") and name.endswith(".json"):
            stem = os.path.join(run_dir, name[:-len(".json")])
            record = read_info(stem + ".json") or {}
            files = ServerFiles(str(record.get("dir", "?")), stem + ".sock", stem + ".lock",
                                stem + ".json")
            if _live(files):
                live.append(files)
    if len(live) == 1:
        return live[0]
    own = server_files(cwd)
    if not live:
        raise QueueLocationError(f"no seamless-queue server for {cwd} (socket {own.socket}); "
                                 "start one with `seamless-queue &`")
    listed = "; ".join(f"{f.directory} ({f.socket})" for f in live)
    raise QueueLocationError(f"no seamless-queue server for {cwd}, and {len(live)} others run: "
                             f"{listed}; cd into one's directory or set SEAMLESS_QUEUE_SOCKET")
