"""The YAML files (``seamless.yaml``, ``seamless.profile.yaml``): read, checked, line by line.

Data flow: ``_read_files(lookup_dir)`` opens the files of the lookup directory (and, with
``inherit_from_parent``, of its parents, parents first), and returns a new list of
``(key, _Entry)`` in the order they apply; the caller owns it.  Each item keeps its file and
line, so every error (``ConfigurationError``) and warning (``SeamlessWarning``) says
``<file>, line N``.  PyYAML is imported only when a file exists.  The one piece of state is
``_warned``, the warnings already given (so a re-read does not repeat them), under
``_warned_lock``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from types import FrameType

from seamless.errors import ConfigurationError, SeamlessWarning

from .keys import KEYS, _BadValue, _Entry, _file_value, _unknown_key

logger = logging.getLogger("seamless")

PROJECT_FILE = "seamless.yaml"
PROFILE_FILE = "seamless.profile.yaml"
_IGNORED_UPSTREAM = ("project", "subproject", "node", "record")
_UPSTREAM_SERVICES = {
    "cluster": "an upstream Seamless cluster",
    "clusters": "upstream Seamless clusters",
    "queue": "an upstream Seamless job queue",
}
_DASK_HINT = "for a Dask cluster use '- execution: remote' and '- scheduler: tcp://host:8786'"
_STAGE_KEY = re.compile(r"stage\s+\S.*")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}

_warned_lock = threading.Lock()
_warned: set = set()                    # (file path, key, line) already warned about

# .../seamless/: frames in here are ours, the first one outside is the user's
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _forget_warnings() -> None:
    """As in a fresh process: the next read warns again."""
    with _warned_lock:
        _warned.clear()


def _read_files(lookup_dir: str) -> list[tuple[str, _Entry]]:
    """The file items in the order they apply (later wins), parents first when inherited."""
    return _collect(lookup_dir, lookup_dir)


def _collect(directory: str, lookup_dir: str) -> list[tuple[str, _Entry]]:
    parsed = []
    inherit = False
    for name in (PROJECT_FILE, PROFILE_FILE):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            entries, file_inherits = _parse_file(path, _display_name(path, lookup_dir))
            parsed.append(entries)
            inherit = inherit or file_inherits
    result: list[tuple[str, _Entry]] = []
    if inherit:
        parent = os.path.dirname(directory)
        if parent != directory:
            result.extend(_collect(parent, lookup_dir))
    for entries in parsed:
        result.extend(entries)
    return result


def _display_name(path: str, lookup_dir: str) -> str:
    """Relative to the lookup directory when inside it, otherwise absolute."""
    prefix = lookup_dir.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        return path[len(prefix):]
    return path


def _parse_file(path: str, display: str) -> tuple[list[tuple[str, _Entry]], bool]:
    """Check one file and return its items in order, and whether it says inherit_from_parent."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None else str(exc)
        raise ConfigurationError(f"{display}: cannot read the file ({reason})",
                                 source=path, line=None, key=None, value=None) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{display}: cannot read the file as UTF-8 ({exc}); save it "
                                 f"as UTF-8", source=path, line=None, key=None,
                                 value=None) from None
    import yaml  # only here: no YAML file, no yaml import

    loader = yaml.SafeLoader(text)
    try:
        return _FileParser(loader, path, display).parse()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, display) from None
    finally:
        loader.dispose()


def _yaml_error(exc, path: str, display: str) -> ConfigurationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        text = problem
        if context:
            context_mark = getattr(exc, "context_mark", None)
            where = (f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
                     if context_mark is not None and context_mark is not mark else "")
            text = f"{problem} ({context}{where})"
    else:
        text = context or str(exc)
    if mark is not None:
        line = mark.line + 1
        message = f"{display}, line {line}, column {mark.column + 1}: not valid YAML: {text}"
    else:
        line = None
        message = f"{display}: not valid YAML: {text}"
    return ConfigurationError(message, source=path, line=line, key=None, value=None)


class _FileParser:
    """Walks the composed nodes of one file, so every item knows its line."""

    def __init__(self, loader, path: str, display: str):
        self.loader = loader
        self.path = path
        self.display = display
        self.directory = os.path.dirname(path)
        self.entries: list[tuple[str, _Entry]] = []
        self.inherit = False
        self.warned_keys: set[str] = set()

    def construct(self, node):
        return self.loader.construct_object(node, deep=True)

    def error(self, line, text, key=None, value=None) -> ConfigurationError:
        where = self.display if line is None else f"{self.display}, line {line}"
        return ConfigurationError(f"{where}: {text}", source=self.path, line=line, key=key,
                                  value=value)

    def parse(self):
        import yaml

        root = self.loader.get_single_node()
        if root is None:
            return self.entries, self.inherit
        if isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null":
            return self.entries, self.inherit
        if not isinstance(root, yaml.SequenceNode):
            if isinstance(root, yaml.MappingNode):
                got = "a mapping"
            else:
                got = f"a single value {self.construct(root)!r}"
            raise self.error(None, "the file must be a YAML list of single-key items such as "
                                   f"'- nparallel: 4', got {got}")
        for item in root.value:
            line = item.start_mark.line + 1
            if isinstance(item, yaml.ScalarNode):
                word = self.construct(item)
                if word == "inherit_from_parent":
                    self.inherit = True
                elif isinstance(word, str):
                    self.item(word, None, line, bare=True)
                else:
                    raise self.error(line, "each item must be a single-key mapping such as "
                                           f"'- nparallel: 4', got {word!r}", value=word)
            elif isinstance(item, yaml.SequenceNode):
                raise self.error(line, "each item must be a single-key mapping such as "
                                       "'- nparallel: 4', got a list", value=self.construct(item))
            else:
                if len(item.value) != 1:
                    keys = [str(self.construct(k)) for k, _ in item.value]
                    n = len(keys)
                    if n == 0:
                        text = "each item must have exactly one key, got 0 (an empty mapping)"
                    else:
                        text = (f"each item must have exactly one key, got {n} "
                                f"({', '.join(keys)}); write them as "
                                f"{_NUMBER_WORDS.get(n, n)} items")
                    raise self.error(line, text, value=self.construct(item))
                key_node, value_node = item.value[0]
                self.item(self.construct(key_node), value_node, key_node.start_mark.line + 1)
        return self.entries, self.inherit

    def item(self, key, value_node, line, bare=False):
        """Check one ``key: value`` item (``value_node`` None for a bare word)."""
        if not isinstance(key, str):
            raise self.error(line, _unknown_key(key), key=key)
        if _STAGE_KEY.fullmatch(key):
            self.warn(line, key, f"{key!r} block is an upstream Seamless stage and is skipped; "
                                 f"there are no stages here")
            return
        value = None if value_node is None else self.construct(value_node)
        if key in KEYS:
            if bare:
                raise self.error(line, f"key {key!r} needs a value: write '- {key}: VALUE' "
                                       f"('- {key}: null' for the default)", key=key)
            try:
                parsed = _file_value(key, value, self.directory)
            except _BadValue as exc:
                raise self.error(line, exc.args[0], key=key, value=value) from None
            self.entries.append((key, _Entry(parsed, f"{self.display}:{line}", self.path, line,
                                             f"{self.display}, line {line}")))
        elif key == "inherit_from_parent":
            if value is None or value is True:
                self.inherit = True
            elif value is not False:
                raise self.error(line, f"inherit_from_parent must be true or false when given "
                                       f"a value, got {value!r} (or write the bare word "
                                       f"'- inherit_from_parent')", key=key, value=value)
        elif key in _IGNORED_UPSTREAM:
            self.warn(line, key, f"key {key!r} is an upstream Seamless setting and is ignored "
                                 f"here")
        elif key == "persistent":
            self.warn(line, key, "key 'persistent' is an upstream Seamless setting and is "
                                 "ignored here; the persistent cache is on by default "
                                 "('- cache: DIR' chooses its directory, '- cache: off' "
                                 "turns it off)")
        elif key == "remote" and value == "daskserver":
            self.warn(line, key, "'remote: daskserver' is an upstream Seamless setting and is "
                                 "ignored here; Dask is the only remote backend (use "
                                 "'- execution: remote' and '- scheduler: tcp://host:8786')")
        elif key == "remote":
            raise self.error(line, f"key 'remote' with value {value!r} names an upstream "
                                   f"Seamless remote service, which this version does not have "
                                   f"({_DASK_HINT})", key=key, value=value)
        elif key in _UPSTREAM_SERVICES:
            raise self.error(line, f"key {key!r} names {_UPSTREAM_SERVICES[key]}, which this "
                                   f"version does not have ({_DASK_HINT})", key=key, value=value)
        else:
            raise self.error(line, _unknown_key(key, bare), key=key, value=value)

    def warn(self, line, key, text):
        """One SeamlessWarning per file and key; repeats (also on re-reads) go to DEBUG."""
        if key in self.warned_keys:
            return
        self.warned_keys.add(key)
        message = f"{self.display}, line {line}: {text}"
        with _warned_lock:
            cause = (self.path, key, line)
            if cause in _warned:
                logger.debug("%s", message)
                return
            _warned.add(cause)
        warnings.warn(message, SeamlessWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The stacklevel (for a warnings.warn in our caller) of the first frame outside seamless."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
