"""The command line of ``seamless-run`` (docs/cli.md): ``RunOptions(argv)``.

argparse defines the options and is the judge of every unusual command line. A cache hit must
start in little more than a bare interpreter's time (docs/cli.md, "Start-up"), and building the
parser costs 2-3 ms, so the usual shapes (known options spelled out in full, then the command)
are read by ``scan``, which gives up (``None``) on anything else: ``-h``, ``--version``,
abbreviations, bundled flags, a value that looks like an option, unknown options. argparse
then parses the same argv and prints its help or its error. A test checks that ``scan`` and
argparse agree wherever ``scan`` answers.
"""

from __future__ import annotations

import os

__all__ = ["RunOptions", "build_parser", "scan", "PROG"]

PROG = "seamless-run"

_FLAGS = {"--no-sandbox": "no_sandbox", "--no-cache": "no_cache", "--qsubmit": "qsubmit",
          "-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}
_VALUED = {"-i": "input", "--input": "input", "-c": "capture", "--capture": "capture",
           "--var": "var"}


def build_parser():
    import argparse

    from seamless import __version__

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a bash command as a cached transformation: the second time, its "
                    "stdout and output files come from the cache without running anything.",
        epilog="One word is used verbatim as a bash command line (pipes, redirections); "
               "several words are quoted where needed and joined. Options come before the "
               "command; `--` ends them. Data piped into seamless-run is an input and the "
               "command's stdin (at most SEAMLESS_STDIN_MAX bytes, default 64 MiB).",
    )
    p.add_argument("-i", "--input", action="append", default=[], metavar="PATH",
                   help="declare an input file or directory the command does not name")
    p.add_argument("-c", "--capture", action="append", default=[], metavar="PATH",
                   help="declare a file or directory the command creates as a result")
    p.add_argument("--var", action="append", default=[], metavar="NAME[=VALUE]",
                   help="an environment variable that counts for identity")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run in the working directory itself (undeclared reads escape "
                        "identity; outputs are written in place)")
    p.add_argument("--no-cache", action="store_true",
                   help="run even on a cache hit, then replace the cache entry")
    p.add_argument("--qsubmit", action="store_true",
                   help="send the job to the seamless-queue server of this directory and "
                        "return at once (a cache hit completes here)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="report hit or miss, the checksum, the inputs (piped stdin "
                        "included) and what is not tracked")
    p.add_argument("-q", "--quiet", action="store_true", help="no informational lines")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    return p


def _defaults() -> dict:
    return {"input": [], "capture": [], "var": [], "no_sandbox": False, "no_cache": False,
            "qsubmit": False, "verbose": False, "quiet": False}


def scan(argv: list) -> dict | None:
    """The options and ``command`` of a usual command line, as argparse would give them;
    ``None`` when argparse must decide."""
    found = _defaults()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "--":
            break  # argparse keeps it as the command's first word; RunOptions drops it
        if arg in _FLAGS:
            found[_FLAGS[arg]] = True
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--") and name in _VALUED:
            found[_VALUED[name]].append(value)
            i += 1
            continue
        if arg in _VALUED and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found[_VALUED[arg]].append(argv[i + 1])
            i += 2
            continue
        return None
    found["command"] = argv[i:]
    return found


class RunOptions:
    """A validated ``seamless-run`` invocation. Usage errors exit 2 through argparse."""

    def __init__(self, argv=None):
        import sys

        from seamless.shell import words

        argv = sys.argv[1:] if argv is None else list(argv)
        self._parser = None
        args = scan(argv)
        if args is None:
            args = vars(self.parser.parse_args(argv))
        command = list(args["command"])
        if command and command[0] == "--":
            command.pop(0)
        if not command:
            looks_like_command = [c for c in args["capture"]
                                  if " " in c.strip() and not os.path.lexists(c)]
            if looks_like_command:
                self.usage_error(
                    f"no command given; -c takes an output path, not a command (-c "
                    f"{looks_like_command[0]!r}): put the command after the options, e.g. "
                    f"seamless-run {looks_like_command[0]!r}")
            self.usage_error("no command given (example: seamless-run paste a.txt b.txt)")
        self.text = command[0] if len(command) == 1 else words.join_words(command)
        if not self.text.strip():
            self.usage_error("the command is empty")
        self.sandbox = not args["no_sandbox"]
        self.use_cache = not args["no_cache"]
        self.qsubmit = args["qsubmit"]
        self.verbose = args["verbose"] and not args["quiet"]
        self.quiet = args["quiet"]
        self.explicit_inputs = args["input"]
        self.captures = args["capture"]
        self.vars = self._vars(args["var"])

    @property
    def parser(self):
        if self._parser is None:
            self._parser = build_parser()
        return self._parser

    def usage_error(self, message: str):
        """Print the usage and ``message``; exit 2."""
        self.parser.error(message)

    def _vars(self, specs) -> dict:
        found = {}
        for spec in specs:
            name, has_value, value = spec.partition("=")
            if not (name and (name[0].isalpha() or name[0] == "_") and name.isascii()
                    and name.replace("_", "a").isalnum()):
                self.usage_error(f"--var {spec!r}: {name!r} is not an environment variable "
                                 "name (letters, digits, _)")
            if not has_value:
                if name not in os.environ:
                    self.usage_error(f"--var {name}: the variable is not set; set it, or give "
                                     f"a value with --var {name}=VALUE")
                value = os.environ[name]
            found[name] = value
        return found
