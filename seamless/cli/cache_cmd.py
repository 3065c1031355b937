"""``seamless-cache``: inspect and maintain the persistent cache (docs/cli.md).

``seamless-cache [--cache DIR] stats | verify | list | size | rm CHECKSUM | clear [--yes] |
gc --max-size SIZE | trim``

``trim`` applies the directory's size cap (``config.command_cache_max``:
``SEAMLESS_CACHE_MAX``, else ``cache_max:`` of seamless.yaml, else 5 GiB for the default
directory and no cap for another one); the Python API applies the same cap by itself after
its writes (docs/caching.md).

Data flow and ownership:

- The directory is ``--cache``, else the commands' lookup (``common.cache_directory``). This
  command opens ONE ``PersistentCache`` on it (``common.open_cache``), which owns its SQLite
  connections; ``main`` closes it before returning, also on failure.
- The files under ``buffers/`` and the rows of ``seamless.db`` belong to the cache directory,
  shared with every other process that uses it. This command removes or registers them only
  through the ``PersistentCache`` primitives (``stats``, ``verify``, ``entries``, ``remove``,
  ``clear``, ``gc``, ``trim``), which are safe while other processes use the directory
  (docs/caching.md, "The persistent cache"). The read-only subcommands (``READ_ONLY``) open a
  directory only when it already holds a cache, so they create nothing.
- It creates no file, temp file, thread or process of its own. It reads stdin only for the
  ``clear`` question on a terminal. Results go to stdout; messages, including the
  ``CacheWarning``s the primitives raise (captured, never shown as Python warnings), go to
  stderr prefixed ``seamless-cache: ``.

Exit status: 0 success; 1 an unusable or missing cache, a failed operation, ``verify`` dropped
something, ``rm`` found no such result, or ``clear`` was declined; 2 a usage error (a bad
``--max-size`` or ``rm`` checksum, ``clear`` without ``--yes`` when stdin is not a terminal, or
``trim`` on a directory without a cap).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from seamless.cli.common import (
    USAGE,
    CommandError,
    cache_directory,
    error,
    exit_now,
    info,
    open_cache,
    run_main,
    warnings_as_messages,
)

__all__ = ["entry", "human_age", "human_size", "main", "parse_size"]

PROG = "seamless-cache"

_UNITS = "KMGTP"
_SIZE = re.compile(r"(\d+)(?:\.(\d+))?\s*(?:([kmgtp])(i?b)?|(b))?", re.IGNORECASE | re.ASCII)
_SIZE_HELP = ("bytes (12345) or a number with K, M, G or T, powers of 1024 "
              "(100K, 500M, 1.5G, 10GiB, 2T)")


def parse_size(text: str) -> int:
    """Bytes meant by ``text`` (``500M``, ``1.5G``, ``10GiB``, ``12345``); ``ValueError`` if
    it is not a size. Units are powers of 1024 whether written ``G``, ``GB`` or ``GiB``
    (docs/cli.md); the arithmetic is exact integers, so ``1.5G`` is 1610612736."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(text)
    whole, fraction, unit = m.group(1), m.group(2) or "", m.group(3)
    if unit is None and fraction:
        raise ValueError(text)  # a fraction of a byte
    factor = 1 if unit is None else 1024 ** (_UNITS.index(unit.upper()) + 1)
    return int(whole) * factor + int(fraction or "0") * factor // 10 ** len(fraction)


def human_size(n: int) -> str:
    """``1048576`` -> ``1.0 MiB``: a size a person reads at a glance, beside the exact count."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in _UNITS[:-1]:
        if value < 1023.95:  # else it would print as 1024.0
            return f"{value:.1f} {unit}iB"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}iB"


def human_age(seconds: float) -> str:
    """``200`` -> ``3m``: how long ago, in the largest whole unit (``s``, ``m``, ``h``, ``d``);
    a time in the future (another host's clock) counts as ``0s``."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _size_and_human(n: int) -> str:
    return f"{n} ({human_size(n)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _local_time(timestamp) -> str:
    """ISO 8601 local time with its UTC offset, or ``-`` for an empty cache."""
    if timestamp is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


# -- argument parsing ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors of every subcommand carry the command's own prefix, ``seamless-cache: ``."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{PROG}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    from seamless import __version__

    # --cache is also accepted after the subcommand; SUPPRESS keeps an earlier one.
    cache_option = _Parser(add_help=False)
    cache_option.add_argument(
        "--cache", metavar="DIR", default=argparse.SUPPRESS,
        help="cache directory (default: SEAMLESS_CACHE, else cache: of seamless.yaml, else "
             "$XDG_CACHE_HOME/seamless or ~/.cache/seamless)")
    parser = _Parser(
        prog=PROG, parents=[cache_option],
        description="Inspect and maintain the persistent cache of seamless-run and the "
                    "Python API.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command",
                                metavar="{stats,verify,list,size,rm,clear,gc,trim}", required=True)
    sub.add_parser("stats", parents=[cache_option],
                   help="directory, number of results and buffers, bytes, oldest and newest use",
                   description="Print the directory, the number of results and buffers, their "
                               "total size and the oldest and newest use.")
    sub.add_parser("verify", parents=[cache_option],
                   help="re-hash every buffer; drop corrupt ones (exit 1 if any was dropped)",
                   description="Re-hash every buffer file: drop corrupt ones with the results "
                               "that point to them, drop rows whose file is missing, register "
                               "valid files without a row. Exit 1 if anything was dropped.")
    sub.add_parser("list", parents=[cache_option],
                   help="every result, newest first: checksum, size, age, kind, name",
                   description="Print one line per result, newest first: the transformation "
                               "checksum (what rm takes), the result's size, its age, its "
                               "kind (tree: a seamless-run command; otherwise the encoding of "
                               "a Python result) and its name: the function's name or the "
                               "command ('-' for results stored before names were recorded).")
    sub.add_parser("size", parents=[cache_option], help="total bytes of the stored buffers",
                   description="Print the total bytes of the stored buffers, then the number "
                               "of buffers.")
    rm = sub.add_parser("rm", parents=[cache_option], help="remove one result",
                        description="Remove the result of a transformation (a checksum from "
                                    "list, or a unique prefix of at least 6 hex digits), and "
                                    "its buffer when no other result uses it.")
    rm.add_argument("checksum", metavar="CHECKSUM", nargs="+",
                    help="transformation checksum (or unique prefix) as list prints it")
    clear = sub.add_parser("clear", parents=[cache_option], help="remove every entry",
                           description="Remove every result and buffer (asks first on a "
                                       "terminal; elsewhere --yes is required).")
    clear.add_argument("--yes", "-y", action="store_true",
                       help="remove without asking (required when stdin is not a terminal)")
    gc = sub.add_parser("gc", parents=[cache_option],
                        help="drop least recently used entries down to --max-size",
                        description="Drop least recently used buffers, with the results that "
                                    "point to them, until the total is at most SIZE; remove "
                                    "temp files older than one hour.")
    gc.add_argument("--max-size", metavar="SIZE", required=True,
                    help="largest total to keep: " + _SIZE_HELP)
    sub.add_parser("trim", parents=[cache_option],
                   help="apply the size cap now (least recently used entries go)",
                   description="When the total is above the directory's size cap "
                               "(SEAMLESS_CACHE_MAX, else cache_max: of seamless.yaml, else "
                               "5 GiB for the default directory), drop least recently "
                               "used buffers until it is at most 90%% of the cap, as the "
                               "Python API does after its writes.")
    return parser


def _max_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise CommandError(f"--max-size {text!r} is not a size; write {_SIZE_HELP}",
                           USAGE) from None


# -- subcommands ---------------------------------------------------------------------------------


def _cap(directory: str):
    """The size cap of ``directory`` (bytes, or ``None``), as ``CommandError`` on bad settings."""
    from seamless.config import command_cache_max
    from seamless.errors import ConfigurationError

    try:
        return command_cache_max(directory)
    except ConfigurationError as e:
        raise CommandError(str(e)) from None


def _stats(cache, args) -> int:
    s = cache.stats()
    lines = [
        ("directory", s["directory"]),
        ("results", s["results"]),
        ("buffers", s["buffers"]),
        ("bytes", _size_and_human(s["bytes"])),
        ("oldest use", _local_time(s["oldest_use"])),
        ("newest use", _local_time(s["newest_use"])),
    ]
    for name, value in lines:
        print(f"{name + ':':<12}{value}")
    return 0


def _verify(cache, args) -> int:
    report = cache.verify()
    print(f"checked {_plural(report['checked'], 'buffer')}")
    for cs in report["dropped"]:
        print(f"dropped {cs} (corrupt)")
    for cs in report["missing"]:
        print(f"dropped row {cs} (file missing)")
    for cs in report["registered"]:
        print(f"registered {cs}")
    return 1 if report["dropped"] or report["missing"] else 0


def _list(cache, args) -> int:
    now = time.time()
    print(f"{'TRANSFORMATION':<64}  {'SIZE':>10}  {'AGE':>5}  {'KIND':<6}  NAME")
    for e in cache.entries():
        size = "-" if e["size"] is None else human_size(e["size"])
        label = "-" if not e["label"] else " ".join(e["label"].split())  # one line each
        print(f"{e['transformation']:<64}  {size:>10}  {human_age(now - e['created']):>5}  "
              f"{e['kind']:<6}  {label}")
    return 0


def _size(cache, args) -> int:
    s = cache.stats()
    print(f"{_size_and_human(s['bytes'])} in {_plural(s['buffers'], 'buffer')}")
    return 0


_HEX = re.compile(r"[0-9a-f]{6,64}")


def _checksum_argument(text: str) -> str:
    """A transformation checksum or prefix as ``rm`` takes it; else a usage error."""
    prefix = text.strip().lower()
    if _HEX.fullmatch(prefix) is None:
        raise CommandError(f"rm: {text!r} is not a checksum; give a transformation checksum "
                           "from 'seamless-cache list' (64 hex digits, or a unique prefix of "
                           "at least 6)", USAGE)
    return prefix


def _rm(cache, args) -> int:
    failed = 0
    for text, prefix in zip(args.checksum, args.prefixes):
        found = cache.transformations_starting(prefix)
        if len(found) > 1:
            error(PROG, f"rm: {text} is the prefix of more than one result ({found[0]}, "
                        f"{found[1]}, ...); give more digits")
            failed = 1
            continue
        done = cache.remove(found[0]) if found else None
        if done is None:
            error(PROG, f"rm: no result for {text} in {cache.directory} (seamless-cache list "
                        "shows the checksums)")
            failed = 1
            continue
        if done["buffer_removed"]:
            freed = f"freed {_size_and_human(done['bytes'])}"
        else:
            freed = "its buffer is kept: another result uses it"
        print(f"removed {found[0]} ({freed})")
    return failed


def _confirmed(directory: str) -> bool:
    """Ask on the terminal; only ``y`` or ``yes`` goes ahead (EOF and Ctrl-D do not)."""
    sys.stderr.write(f"{PROG}: remove every entry of {directory}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _clear(cache, args) -> int:
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise CommandError(f"clear removes every entry of {cache.directory} and there is "
                               "no terminal to ask; pass --yes to confirm", USAGE)
        if not _confirmed(cache.directory):
            info(PROG, "nothing removed")
            return 1
    removed = cache.clear()
    print(f"removed {_plural(removed, 'buffer')}")
    return 0


def _gc(cache, args) -> int:
    done = cache.gc(args.max_bytes)
    left = cache.stats()["bytes"]
    print(f"freed {_size_and_human(done['bytes'])} in {_plural(done['buffers'], 'buffer')}; "
          f"removed {_plural(done['temp_files'], 'stale temp file')}; "
          f"{_size_and_human(left)} left")
    return 0


def _trim(cache, args) -> int:
    cap = _cap(cache.directory)
    if cap is None:
        raise CommandError(f"trim: {cache.directory} has no size cap; set one with "
                           "SEAMLESS_CACHE_MAX=SIZE (or '- cache_max: SIZE' in seamless.yaml), "
                           "or use gc --max-size SIZE", USAGE)
    done = cache.trim(cap)
    print(f"freed {_size_and_human(done['bytes'])} in {_plural(done['buffers'], 'buffer')}; "
          f"{_size_and_human(done['total'])} left (cap {_size_and_human(cap)})")
    return 0


_SUBCOMMANDS = {"stats": _stats, "verify": _verify, "list": _list, "size": _size, "rm": _rm,
                "clear": _clear, "gc": _gc, "trim": _trim}
READ_ONLY = frozenset({"stats", "verify", "list", "size"})


# -- running -------------------------------------------------------------------------------------


def _directory(args) -> str:
    from seamless.errors import ConfigurationError

    try:
        return cache_directory(getattr(args, "cache", None))
    except ConfigurationError as e:
        raise CommandError(f"{e} (or pass --cache DIR)") from None


def _check_exists(directory: str) -> None:
    """A read-only subcommand opens only an existing cache: opening creates the directory and
    its database, and an empty cache made by a typo in ``--cache`` would only mislead."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        return  # open_cache names what is wrong with it
    if not os.path.exists(os.path.join(directory, "seamless.db")):
        raise CommandError(f"no seamless cache at {directory} (nothing was cached there; check "
                           "--cache or SEAMLESS_CACHE)")


def _run(args) -> int:
    """Open the cache, run the subcommand, close the cache; operational failures become
    ``CommandError``s naming the database or file."""
    import sqlite3

    from seamless.errors import CacheError

    directory = _directory(args)
    if args.command in READ_ONLY or args.command == "trim":  # trim has nothing to create
        _check_exists(directory)
    cache = open_cache(directory)
    try:
        return _SUBCOMMANDS[args.command](cache, args)
    except CacheError as e:
        raise CommandError(str(e)) from None
    except sqlite3.Error as e:
        raise CommandError(
            f"{args.command} failed on the cache database {cache.db_path} ({e}); retry when "
            "the processes using the cache are done, or move the directory away to start an "
            "empty cache") from None
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        where = e.filename or cache.directory
        raise CommandError(
            f"{args.command} could not change {where} ([Errno {e.errno}] {e.strerror}); make "
            "the cache directory writable by you, or run as its owner") from None
    finally:
        cache.close()


def main(argv=None) -> int:
    """Run ``seamless-cache`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "gc":
        args.max_bytes = _max_size(args.max_size)
    if args.command == "rm":
        args.prefixes = [_checksum_argument(text) for text in args.checksum]
    with warnings_as_messages(PROG):
        return _run(args)


def entry() -> None:
    """The console script ``seamless-cache``."""
    exit_now(run_main(PROG, main))


if __name__ == "__main__":
    entry()
