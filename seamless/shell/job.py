"""One shell job as plain data: what ``seamless-run`` and the queue server both run.

``ShellJob`` carries everything the pipeline (``pipeline.run_job``) needs besides the process
state it runs in: the command text, the declared inputs and captures, the identity variables,
sandbox and cache switches, where stdout goes, the sidecars someone else holds for it, and for a
queued job the file holding its piped stdin.

The process state is the job's working directory and environment: ``seamless-run`` runs a job
in its own; the queue server starts the job's runner process (``seamless.shell.runner``) with
the submitter's ``cwd`` and ``env`` and hands it the job as a file holding ``to_wire()``'s dict
(``marshal`` form, which the runner reads without importing anything). On the queue's wire the
same fields travel as JSON (``from_wire`` checks them). Strings that came from non-UTF-8 bytes
carry surrogate escapes (``\\udcff``), which JSON keeps as ``\\u`` escapes and marshal as they are,
so they round-trip exactly.
"""

from __future__ import annotations

__all__ = ["ShellJob", "JobFormatError"]


class JobFormatError(ValueError):
    """A job description that is not a valid ``ShellJob`` (wrong field or type)."""


# field -> (type check, default); order is the wire order.
_STR_LIST = "list of strings"
_FIELDS = {
    "command": ("str", None),
    "inputs": (_STR_LIST, ()),
    "captures": (_STR_LIST, ()),
    "vars": ("str dict", None),
    "sandbox": ("bool", True),
    "use_cache": ("bool", True),
    "stdout_path": ("str or None", None),
    "held_futures": (_STR_LIST, ()),
    "verbose": ("bool", False),
    "quiet": ("bool", False),
    "stdin_path": ("str or None", None),
}


def _valid(kind: str, value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str or None":
        return value is None or isinstance(value, str)
    if kind == _STR_LIST:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if kind == "str dict":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    raise AssertionError(kind)


class ShellJob:
    """A bash command as a transformation, described by data (docs/cli.md).

    - ``command``: the command text, run as ``/bin/bash -c command``.
    - ``inputs``: ``-i`` paths; ``captures``: ``-c`` paths (relative to the working directory,
      or absolute where the sandbox allows).
    - ``vars``: environment variables that count for identity, name -> value.
    - ``sandbox``, ``use_cache``: ``--no-sandbox`` / ``--no-cache`` switched off.
    - ``stdout_path``: ``None`` writes stdout to fd 1 (``seamless-run``); a path writes it there
      atomically, like an output (a queued job whose submitter's stdout was a file).
    - ``held_futures``: targets whose ``.FUTURE`` sidecars another process (the queue server)
      created and keeps for this job: the pipeline neither waits on them nor creates or removes
      them.
    - ``stdin_path``: a queued job's piped stdin, a file the queue server owns and removes when
      the job ends; its runner reads it (an input of the job) and feeds it to the command.
      ``None``: no piped stdin (``seamless-run`` hands its piped bytes to ``run_job`` itself).
    """

    __slots__ = tuple(_FIELDS)

    def __init__(self, command: str, *, inputs=(), captures=(), vars=None, sandbox=True,
                 use_cache=True, stdout_path=None, held_futures=(), verbose=False,
                 quiet=False, stdin_path=None):
        self.command = command
        self.inputs = list(inputs)
        self.captures = list(captures)
        self.vars = dict(vars or {})
        self.sandbox = sandbox
        self.use_cache = use_cache
        self.stdout_path = stdout_path
        self.held_futures = list(held_futures)
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.stdin_path = stdin_path

    def to_wire(self) -> dict:
        """The job as a JSON-ready dict (every field, in a fixed order)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_wire(cls, data) -> ShellJob:
        """Rebuild a job from ``to_wire``'s dict; ``JobFormatError`` names a bad field."""
        if not isinstance(data, dict):
            raise JobFormatError(f"a job is a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise JobFormatError(f"unknown job field(s) {', '.join(unknown)}")
        values = {}
        for name, (kind, default) in _FIELDS.items():
            if name not in data:
                if name in ("command", "vars"):
                    raise JobFormatError(f"job field {name!r} is missing")
                values[name] = default
                continue
            if not _valid(kind, data[name]):
                raise JobFormatError(f"job field {name!r} must be a {kind}, "
                                     f"not {type(data[name]).__name__}")
            values[name] = data[name]
        if not values["command"].strip():
            raise JobFormatError("job field 'command' is empty")
        command = values.pop("command")
        return cls(command, **values)

    def __eq__(self, other):
        if not isinstance(other, ShellJob):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    __hash__ = None

    def __repr__(self):
        return f"ShellJob({self.command!r})"
