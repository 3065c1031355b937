"""The result value of a shell transformation: a canonical ``tree``
(docs/design/identity-and-cache.md, "Shell command identity")
``{"exit": 0, "modes": {path: int | {sub path: int}}, "outputs": {path: bytes |
{sub path: bytes}}, "stdout": bytes}``. ``modes`` holds the permission bits (``0o777``) the
command gave each output file, so a hit restores an executable script as executable; results
stored before modes were recorded have no ``modes`` and are still read.

Why a codec of its own: ``seamless.encoding`` needs numpy, which the command line never imports.
This one handles the only leaves a shell result has (bytes) and produces the same canonical bytes
(tested against ``seamless.encoding``). Its JSON header is written and read by the small
canonical JSON codec below, not by ``json``: with ``re`` and ``enum`` behind it, ``json`` costs
a cache hit about 7 ms of start-up (numbers with a fraction or exponent, which a shell result
never holds, are handed to ``json``).

Data flow. Encoding streams: ``ResultBytes`` yields the header, then each leaf read from its
file (the command's stdout spool, an output file) in 1 MiB pieces, then zero padding; the caller
(the persistent cache) writes and hashes them, so a result is never held in memory whole.
Decoding (``ShellResult``) indexes a buffer that the caller read and verified; leaves are
``memoryview`` slices of it, valid while the buffer lives.
"""

from __future__ import annotations

import os

from seamless.shell.paths import from_json_key, json_key

__all__ = ["Leaf", "ResultBytes", "ShellResult", "RESULT_KIND", "canonical_json",
           "parse_json"]

RESULT_KIND = "tree"
_MAGIC = b"SMLS"
_VERSION = 1
_CHUNK = 1 << 20
_MODE_BITS = 0o777

# -- canonical JSON: json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) ------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}
_ESCAPES.update({chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in _ESCAPES})
_SPECIAL = frozenset(_ESCAPES)


def _string(text: str) -> str:
    if _SPECIAL.isdisjoint(text):
        return f'"{text}"'
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def _encode(value, parts: list) -> None:
    if isinstance(value, str):
        parts.append(_string(value))
    elif value is None:
        parts.append("null")
    elif value is True or value is False:
        parts.append("true" if value else "false")
    elif type(value) is int:
        parts.append(repr(value))
    elif isinstance(value, dict):
        parts.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON keys are str, got {key!r}")
            parts.append(("," if i else "") + _string(key) + ":")
            _encode(value[key], parts)
        parts.append("}")
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _encode(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"no canonical JSON form here for {value!r}")


def canonical_json(value) -> str:
    """The canonical JSON text of ``value`` (dicts with str keys, lists, str, int, bool, None):
    exactly what ``json`` writes with sorted keys, no spaces and ``ensure_ascii=False``. Floats
    go to ``json`` itself."""
    parts = []
    try:
        _encode(value, parts)
    except TypeError:
        import json

        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=True)
    return "".join(parts)


class _Unsupported(Exception):
    """Valid JSON, maybe, but not the subset read here: ``json`` decides."""


_UNESCAPE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
             "t": "\t"}
_NUMBER_START = frozenset("-0123456789")
_DIGITS = frozenset("0123456789")
_WHITESPACE = " \t\n\r"


class _Reader:
    """A recursive-descent reader of JSON objects, arrays, strings, integers and literals."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def value(self):
        self.skip()
        text, pos = self.text, self.pos
        if pos >= len(text):
            raise ValueError("unexpected end of JSON")
        c = text[pos]
        if c == "{":
            return self.object()
        if c == "[":
            return self.array()
        if c == '"':
            return self.string()
        for word, value in (("null", None), ("true", True), ("false", False)):
            if text.startswith(word, pos):
                self.pos = pos + len(word)
                return value
        if c not in _NUMBER_START:
            raise ValueError(f"unexpected {c!r} in JSON at {pos}")
        end = pos + 1
        while end < len(text) and text[end] in _DIGITS:
            end += 1
        if end < len(text) and text[end] in ".eE":
            raise _Unsupported("a number with a fraction or exponent")
        token = text[pos:end]
        digits = token.lstrip("-")
        if not digits or len(token) - len(digits) > 1 or (len(digits) > 1 and digits[0] == "0"):
            raise ValueError(f"bad number {token!r} in JSON")
        self.pos = end
        return int(token)

    def expect(self, char: str) -> bool:
        self.skip()
        if self.text.startswith(char, self.pos):
            self.pos += 1
            return True
        return False

    def object(self) -> dict:
        self.pos += 1
        found = {}
        if self.expect("}"):
            return found
        while True:
            self.skip()
            if not self.text.startswith('"', self.pos):
                raise ValueError(f"expected a key in JSON at {self.pos}")
            key = self.string()
            if not self.expect(":"):
                raise ValueError(f"expected ':' in JSON at {self.pos}")
            found[key] = self.value()
            if self.expect("}"):
                return found
            if not self.expect(","):
                raise ValueError(f"expected ',' or '}}' in JSON at {self.pos}")

    def array(self) -> list:
        self.pos += 1
        found = []
        if self.expect("]"):
            return found
        while True:
            found.append(self.value())
            if self.expect("]"):
                return found
            if not self.expect(","):
                raise ValueError(f"expected ',' or ']' in JSON at {self.pos}")

    def string(self) -> str:
        text = self.text
        start = self.pos + 1
        end = text.find('"', start)
        if end < 0:
            raise ValueError("unterminated string in JSON")
        if "\\" not in text[start:end]:
            piece = text[start:end]
            if any(c < " " for c in piece):
                raise ValueError("a control character in a JSON string")
            self.pos = end + 1
            return piece
        parts = []
        pos = start
        while True:
            quote = text.find('"', pos)
            slash = text.find("\\", pos, quote if quote >= 0 else len(text))
            if quote < 0:
                raise ValueError("unterminated string in JSON")
            stop = quote if slash < 0 else slash
            piece = text[pos:stop]
            if any(c < " " for c in piece):
                raise ValueError("a control character in a JSON string")
            parts.append(piece)
            if slash < 0:
                self.pos = quote + 1
                return "".join(parts)
            code = text[slash + 1:slash + 2]
            if code in _UNESCAPE:
                parts.append(_UNESCAPE[code])
                pos = slash + 2
                continue
            if code != "u":
                raise ValueError(f"bad escape in JSON at {slash}")
            unit, pos = self.hex4(slash + 2), slash + 6
            if 0xD800 <= unit < 0xDC00 and text.startswith("\\u", pos):
                low = self.hex4(pos + 2)
                if 0xDC00 <= low < 0xE000:
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
            parts.append(chr(unit))

    def hex4(self, pos: int) -> int:
        digits = self.text[pos:pos + 4]
        if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(f"bad \\u escape in JSON at {pos}")
        return int(digits, 16)


def parse_json(data):
    """``json.loads(data)`` for UTF-8 ``data``, reading objects, arrays, strings, integers and
    literals itself; ``ValueError`` for what is not JSON."""
    text = bytes(data).decode("utf-8")
    try:
        reader = _Reader(text)
        value = reader.value()
        reader.skip()
        if reader.pos != len(text):
            raise ValueError(f"extra data in JSON at {reader.pos}")
        return value
    except (_Unsupported, RecursionError):
        import json

        return json.loads(text)


class Leaf:
    """A bytes leaf to encode from a file: ``path`` in the tree, ``source`` file, ``size``."""

    __slots__ = ("path", "source", "size")

    def __init__(self, path: tuple, source: str, size: int):
        self.path, self.source, self.size = path, source, size


def _padded(n: int) -> int:
    return -(-n // 64) * 64


def _tree_leaves(stdout_source: str, outputs: dict) -> tuple[dict, list]:
    """Skeleton and depth-first leaves for ``outputs`` ({path: file | {sub: file}}); the
    skeleton's ``modes`` are the files' permission bits."""
    leaves = []
    skeleton_outputs = {}
    modes = {}

    def leaf(tree_path: tuple, source: str) -> int:
        st = os.stat(source)
        leaves.append(Leaf(tree_path, source, st.st_size))
        return st.st_mode & _MODE_BITS

    for path in sorted(outputs, key=json_key):
        key = json_key(path)
        item = outputs[path]
        if isinstance(item, dict):
            skeleton_outputs[key] = {json_key(sub): None for sub in item}
            modes[key] = {json_key(sub): leaf(("outputs", key, json_key(sub)), item[sub])
                          for sub in sorted(item, key=json_key)}
        else:
            skeleton_outputs[key] = None
            modes[key] = leaf(("outputs", key), item)
    leaves.append(Leaf(("stdout",), stdout_source, os.stat(stdout_source).st_size))
    return {"exit": 0, "modes": modes, "outputs": skeleton_outputs, "stdout": None}, leaves


def _prefix(header: dict) -> bytes:
    text = canonical_json(header).encode("utf-8")
    h = _padded(10 + len(text)) - 10
    return (_MAGIC + bytes([_VERSION]) + b"T" + h.to_bytes(4, "little") + text
            + b" " * (h - len(text)))


class ResultBytes:
    """The canonical bytes of a successful run's result, read from files piece by piece.

    ``stdout_source``: the file holding the command's stdout; ``outputs``: output path ->
    file, or -> {sub path: file} for a directory output (their permission bits are recorded
    as they are now). ``size`` is the exact total; iterating yields the pieces and raises
    ``OSError`` if a file is unreadable or shrinks while being read.
    """

    def __init__(self, stdout_source: str, outputs: dict):
        skeleton, self._leaves = _tree_leaves(stdout_source, outputs)
        header = {"leaves": [[list(leaf.path), "bytes", leaf.size] for leaf in self._leaves],
                  "skeleton": skeleton}
        self._prefix = _prefix(header)
        self.size = len(self._prefix) + sum(_padded(leaf.size) for leaf in self._leaves)

    def __iter__(self):
        yield self._prefix
        for leaf in self._leaves:
            remaining = leaf.size
            with open(leaf.source, "rb") as f:
                while remaining:
                    piece = f.read(min(_CHUNK, remaining))
                    if not piece:
                        raise OSError(f"{leaf.source} shrank while its result was stored")
                    remaining -= len(piece)
                    yield piece
            pad = _padded(leaf.size) - leaf.size
            if pad:
                yield bytes(pad)


def _mode(value) -> int:
    if type(value) is not int or not 0 <= value <= _MODE_BITS:
        raise ValueError(f"bad file mode {value!r}")
    return value


class ShellResult:
    """A decoded shell result: ``stdout`` and ``outputs`` as ``memoryview`` slices of ``buffer``.

    ``outputs`` maps each output path to its bytes, or to ``{sub path: bytes}`` for a directory;
    ``modes`` maps each to its permission bits (an int, or ``{sub path: int}``), and is empty for
    a result stored before modes were recorded. Raises ``ValueError`` for a buffer that is not a
    shell result (then the cache entry belongs to something else and is treated as a miss).
    """

    def __init__(self, buffer):
        try:
            self._decode(memoryview(buffer))
        except (TypeError, KeyError, AttributeError, IndexError) as e:
            raise ValueError(f"malformed shell result ({type(e).__name__}: {e})") from None

    def _decode(self, view) -> None:
        if bytes(view[:4]) != _MAGIC or view[4] != _VERSION or bytes(view[5:6]) != b"T":
            raise ValueError("not a canonical seamless tree")
        h = int.from_bytes(view[6:10], "little")
        header = parse_json(view[10:10 + h])
        skeleton = header["skeleton"]
        if (not set(skeleton) - {"modes"} == {"exit", "outputs", "stdout"}
                or skeleton["exit"] != 0):
            raise ValueError("not the result of a shell command")
        pos = 10 + h
        found = {}
        for path, kind, size in header["leaves"]:
            if kind != "bytes" or pos + size > len(view):
                raise ValueError("malformed shell result")
            found[tuple(path)] = view[pos:pos + size]
            pos += _padded(size)
        self.stdout = found[("stdout",)]
        self.outputs = {}
        self.modes = {}
        modes = skeleton.get("modes", {})
        for key, item in skeleton["outputs"].items():
            path = from_json_key(key)
            if isinstance(item, dict):
                self.outputs[path] = {
                    from_json_key(sub): found[("outputs", key, sub)] for sub in item
                }
                if key in modes:
                    self.modes[path] = {from_json_key(sub): _mode(modes[key][sub])
                                        for sub in item}
            else:
                self.outputs[path] = found[("outputs", key)]
                if key in modes:
                    self.modes[path] = _mode(modes[key])
